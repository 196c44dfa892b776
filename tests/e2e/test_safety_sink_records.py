"""The records of published results (ops/sink_record.py) are signed, pruned, and guard appends.

* A record decides what an overwrite deletes, and the data root may be writable by others: a
  record not signed with the data root's key (planted, damaged, or of the earlier unsigned
  format) is no record, so the overwrite is refused, naming the record, and nothing is removed.
* A key others can read signs nothing: the job is refused before anything runs.
* ``smallpond clean`` prunes the records of results that are gone or were replaced, never the
  record of a result still there, and says how many it removed.
* ``mode="append"`` rewrites the destination's manifest, so beside a manifest smallpond cannot
  prove it wrote it is refused at plan time, like an overwrite, and the folder stays as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.errors import PlanError
from smallpond.execution import user_folder
from smallpond.execution.ops import sink_record
from smallpond.execution.runtime import sink_records_dir
from smallpond.io.filesystem import atomic_write_bytes, signed_bytes
from tests.conftest import REPO_ROOT
from tests.e2e.safety_helpers import ids, published_rows, snapshot
from tests.e2e.test_safety_publish_crash import command, versions


def users_result(folder) -> None:
    """A folder a user filled by hand, with a manifest in the very form smallpond writes."""
    os.makedirs(folder, exist_ok=True)
    for name in ("a.parquet", "b.parquet"):
        pq.write_table(pa.table({"id": [1, 2]}), os.path.join(folder, name))
    with open(os.path.join(folder, ".MANIFEST.txt"), "w") as f:
        f.write("".join(os.path.join(folder, n) + "\n" for n in ("a.parquet", "b.parquet")))


def claim_of(folder) -> dict:
    """What a record vouching for ``folder``'s manifest and files says (the payload a forger writes)."""
    files = {n: sink_record.identity(os.path.join(folder, n)) for n in ("a.parquet", "b.parquet")}
    manifest = sink_record.identity(os.path.join(folder, ".MANIFEST.txt"))
    return {"format": "smallpond-sink-record-2", "dest": os.path.realpath(folder), "manifest": manifest, "files": files}


def refused(sp, out, mode="overwrite") -> str:
    before = snapshot(str(out))
    with pytest.raises(PlanError) as info:
        sp.from_arrow(ids(4, 50)).write_parquet(str(out), mode=mode)
    assert snapshot(str(out)) == before, "the refused write changed the folder"
    message = str(info.value)
    assert message.startswith("DataSinkNode created at ") and "test_safety_sink_records.py" in message
    assert str(out) in message
    return message


@pytest.mark.parametrize("forgery", ["another key", "unsigned", "torn"])
def test_a_record_not_signed_with_the_data_roots_key_is_no_record(sp, root, tmp_path, forgery):
    """Someone who can write the data root (not read its key) plants a record vouching for a
    user's hand-filled folder: the overwrite must not take it as smallpond's."""
    sp.from_arrow(ids(3)).write_parquet(str(tmp_path / "warmup"))  # the data root's key exists
    out = tmp_path / "users"
    users_result(str(out))
    payload = json.dumps(claim_of(str(out)), sort_keys=True).encode()
    data = {
        "another key": signed_bytes(payload, os.urandom(32)),
        "unsigned": payload,
        "torn": signed_bytes(payload, sink_record.key(sink_records_dir(root)))[:-5],
    }[forgery]
    path = sink_record.record_path(sink_records_dir(root), str(out))
    atomic_write_bytes(path, data)
    message = refused(sp, out)
    assert path in message and "so it counts as no record" in message and "'a.parquet', 'b.parquet'" in message
    why = "not signed with this data root's key" if forgery == "another key" else "not an intact signed record"
    assert why in message and "by hand once" in message


def test_a_record_of_the_earlier_unsigned_format_is_no_record(sp, root, tmp_path):
    """A record as the previous version wrote it ({sha256}.json, plain JSON) cannot be told from a
    forged one: refused with how to proceed; once the user removed that result, it works."""
    out = tmp_path / "out"
    sp.from_arrow(ids(5)).write_parquet(str(out))
    path = sink_record.record_path(sink_records_dir(root), str(out))
    legacy = path[: -len(".record")] + ".json"
    record = sink_record.load(sink_records_dir(root), str(out))
    old = {"format": "smallpond-sink-record-1", "dest": os.path.realpath(out), "manifest": record.manifest}
    with open(legacy, "w") as f:
        json.dump(dict(old, files=record.files), f, sort_keys=True)
    os.unlink(path)
    message = refused(sp, out)
    assert legacy in message and "written by an earlier smallpond, unsigned" in message
    assert "remove it (the manifest and its files) by hand once and run again" in message
    shutil.rmtree(out)
    sp.from_arrow(ids(4, 50)).write_parquet(str(out))
    sp.from_arrow(ids(3, 70)).write_parquet(str(out))  # its record is signed: overwrites work again
    assert published_rows(str(out), "id") == list(range(70, 73))
    assert os.path.exists(path) and not os.path.exists(legacy)


def test_a_key_others_can_read_is_refused_before_anything_runs(sp, root, tmp_path):
    sp.from_arrow(ids(3)).write_parquet(str(tmp_path / "first"))
    key = sink_record.key_path(sink_records_dir(root))
    os.chmod(key, 0o644)
    out = tmp_path / "second"
    with pytest.raises(PlanError) as info:
        sp.from_arrow(ids(3)).write_parquet(str(out))
    message = str(info.value)
    assert message.startswith("DataSinkNode created at ") and key in message and "not private to this user" in message
    assert not out.exists()


def test_a_forged_record_does_not_let_a_driver_job_remove_a_users_files(tmp_path, data_root):
    """The same through a Driver job (scheduler mode, a subprocess): the user's files stay."""
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    files, _ = versions(tmp_path, 0)
    run = subprocess.run(command(str(uuid.uuid4()), data_root, files, a, b), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    shutil.rmtree(a)
    users_result(a)  # the user's own files, where a result was
    records = sink_records_dir(data_root)
    atomic_write_bytes(
        sink_record.record_path(records, a), signed_bytes(json.dumps(claim_of(a), sort_keys=True).encode(), os.urandom(32))
    )
    before = snapshot(a)
    again = subprocess.run(command(str(uuid.uuid4()), data_root, files, a, b), capture_output=True, text=True, timeout=180)
    assert again.returncode != 0 and "not signed with this data root's key" in again.stderr, again.stderr[-3000:]
    assert "DataSinkNode created at " in again.stderr
    assert snapshot(a) == before


# -- appends ----------------------------------------------------------------------------------------


def test_append_beside_a_hand_written_manifest_is_refused(sp, tmp_path):
    out = tmp_path / "users"
    users_result(str(out))
    message = refused(sp, out, mode="append")
    assert "mode='append' rewrites that .MANIFEST.txt (keeping its lines)" in message and "no record" in message


def test_append_beside_a_result_of_another_data_root_is_refused(tmp_path):
    out = tmp_path / "out"
    first = smallpond.init(data_root=str(tmp_path / "root1"), num_executors=1)
    try:
        first.from_arrow(ids(5)).write_parquet(str(out))
    finally:
        first.shutdown()
    sp = smallpond.init(data_root=str(tmp_path / "root2"), num_executors=1)
    try:
        assert "mode='append' rewrites" in refused(sp, out, mode="append")
    finally:
        sp.shutdown()


def test_append_beside_a_recorded_result_and_beside_unlisted_files_works(sp, tmp_path):
    out = tmp_path / "out"
    sp.from_arrow(ids(3)).write_parquet(str(out))
    sp.from_arrow(ids(2, 10)).write_parquet(str(out), mode="append")
    assert published_rows(str(out), "id") == [0, 1, 2, 10, 11]
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "notes.txt").write_text("mine")  # no manifest: the file is left alone, not listed
    sp.from_arrow(ids(2, 20)).write_parquet(str(loose), mode="append")
    assert published_rows(str(loose), "id") == [20, 21] and (loose / "notes.txt").read_text() == "mine"


# -- smallpond clean ----------------------------------------------------------------------------------


def cli(*args, data_root):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    argv = [sys.executable, "-m", "smallpond", *args, "--data_root", data_root]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def _records_in(records):
    """The files of the records folder, but the publication locks (ops/sink_lock.py)."""
    return [n for n in os.listdir(records) if not n.endswith(sink_record.LOCK_SUFFIX)]


def test_clean_prunes_the_records_of_results_that_are_gone_and_keeps_the_others(sp, root, tmp_path):
    records = sink_records_dir(root)
    outs = {k: tmp_path / k for k in ("removed", "replaced", "moved", "kept")}
    for out in outs.values():
        sp.from_arrow(ids(3)).write_parquet(str(out))
    shutil.rmtree(outs["removed"])
    users_result(str(outs["replaced"]) + ".mine")
    os.replace(str(outs["replaced"]) + ".mine/.MANIFEST.txt", outs["replaced"] / ".MANIFEST.txt")
    os.rename(outs["moved"], tmp_path / "elsewhere")
    legacy = os.path.join(records, "0" * 64 + ".json")  # the earlier format's, of a folder that is gone
    with open(legacy, "w") as f:
        json.dump({"format": "smallpond-sink-record-1", "dest": str(tmp_path / "gone"), "manifest": [1, 2, 3, 4]}, f)
    (tmp_path / "junk").write_bytes(b"")
    os.replace(tmp_path / "junk", os.path.join(records, "1" * 64 + ".record"))  # names nothing
    assert len(_records_in(records)) == 6

    dry = cli("clean", data_root=root)
    assert dry.returncode == 0, dry.stderr
    assert "would remove 5 record(s) of published results" in dry.stdout and "1 record(s) of results still there" in dry.stdout
    assert len(_records_in(records)) == 6
    done = cli("clean", "--yes", data_root=root)
    assert done.returncode == 0, done.stderr
    assert "removed 5 record(s) of published results" in done.stdout and "and 5 record(s)" in done.stdout
    # the kept result's record and publication lock stay; the other results' locks went with their records
    kept = [sink_record.record_path(records, str(outs["kept"])), sink_record.lock_path(records, str(outs["kept"]))]
    assert sorted(os.listdir(records)) == sorted(os.path.basename(p) for p in kept)
    # the record kept still vouches for its result: it is overwritten as usual
    sp.from_arrow(ids(2, 40)).write_parquet(str(outs["kept"]))
    assert published_rows(str(outs["kept"]), "id") == [40, 41]
    assert "nothing to remove" in cli("clean", "--yes", data_root=root).stdout


def test_prune_keeps_a_record_written_while_it_ran(sp, root, tmp_path):
    """A job publishing again between prune's read and its removal: the newer record stays."""
    out = tmp_path / "out"
    sp.from_arrow(ids(3)).write_parquet(str(out))
    path = sink_record.record_path(sink_records_dir(root), str(out))
    held = open(path, "rb")  # (open: its inode is not another file's meanwhile)
    stale = os.fstat(held.fileno())
    sp.from_arrow(ids(2, 10)).write_parquet(str(out))  # a newer record of the same folder
    folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not user_folder.remove_if_same(folder, os.path.basename(path), stale)
    finally:
        os.close(folder)
        held.close()
    assert sink_record.load(sink_records_dir(root), str(out)).manifest == sink_record.identity(str(out / ".MANIFEST.txt"))


KILLED_SETTING_ASIDE = """
import os, signal, sys
from smallpond.execution import user_folder
real_rename = os.rename
def rename(src, dst, **kw):
    real_rename(src, dst, **kw)
    if ".prune-" in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)  # killed between setting the record aside and its check
os.rename = rename
folder = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY | os.O_DIRECTORY)
# read before a newer record came (here: any other file)
user_folder.remove_if_same(folder, os.path.basename(sys.argv[1]), os.stat(os.path.dirname(sys.argv[1])))
"""


def test_a_record_that_a_killed_clean_set_aside_is_put_back_by_the_next_clean(sp, root, tmp_path):
    """clean sets a record aside (``.{name}.prune-{suffix}``) to remove it only if it is still the
    one read; killed there (here: after a job wrote a newer record, which is the one set aside),
    the destination had no record, and no clean looked at that file again. The next clean puts it
    back (a record written since stays instead) and judges it as any other: this one, of a result
    still there, is kept and vouches for it; one of a result that is gone is removed."""
    records = sink_records_dir(root)
    outs = {k: tmp_path / k for k in ("kept", "rewritten", "gone")}
    for out in outs.values():
        sp.from_arrow(ids(3)).write_parquet(str(out))
    paths = {k: sink_record.record_path(records, str(out)) for k, out in outs.items()}
    for path in paths.values():
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_SETTING_ASIDE, path], env=dict(os.environ, PYTHONPATH=REPO_ROOT), timeout=60
        )
        assert killed.returncode == -9 and not os.path.exists(path)
    assert sink_record.load(records, str(outs["kept"])) is None  # lost, until the next clean
    with pytest.raises(PlanError, match="refusing to write into"):  # what the lost record costs
        sp.from_arrow(ids(2, 10)).write_parquet(str(outs["rewritten"]))
    shutil.rmtree(outs["rewritten"])
    sp.from_arrow(ids(2, 10)).write_parquet(str(outs["rewritten"]))  # a new folder there: a newer record
    newer = open(paths["rewritten"], "rb").read()
    shutil.rmtree(outs["gone"])
    set_aside = [n for n in os.listdir(records) if ".prune-" in n]
    assert len(set_aside) == 3

    done = cli("clean", "--yes", data_root=root)
    assert done.returncode == 0, done.stderr
    assert "removed 1 record(s) of published results" in done.stdout
    assert not [n for n in os.listdir(records) if ".prune-" in n]
    assert sink_record.load(records, str(outs["kept"])).manifest == sink_record.identity(str(outs["kept"] / ".MANIFEST.txt"))
    assert open(paths["rewritten"], "rb").read() == newer and not os.path.exists(paths["gone"])
    sp.from_arrow(ids(2, 40)).write_parquet(str(outs["kept"]))  # its record vouches for it: overwritten as usual
    assert published_rows(str(outs["kept"]), "id") == [40, 41]


def test_a_clean_whose_record_set_aside_another_clean_puts_back_goes_on(sp, root, tmp_path, monkeypatch):
    """Two cleans at once: one puts back (as a killed clean's) the record the other has just set
    aside; the other finds it gone, counts it as not removed and goes on (no error), and the record
    is in place."""
    out = tmp_path / "out"
    sp.from_arrow(ids(3)).write_parquet(str(out))
    path = sink_record.record_path(sink_records_dir(root), str(out))
    data = open(path, "rb").read()
    folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    real_rename = os.rename

    def rename(src, dst, **kw):
        real_rename(src, dst, **kw)
        if ".prune-" in str(dst):
            user_folder.put_back_set_aside(folder, sink_record._is_record_name)  # the other clean, right then

    monkeypatch.setattr(os, "rename", rename)
    try:
        assert not user_folder.remove_if_same(folder, os.path.basename(path), os.stat(path))
    finally:
        os.close(folder)
    assert open(path, "rb").read() == data and not [n for n in os.listdir(os.path.dirname(path)) if ".prune-" in n]
