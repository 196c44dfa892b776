"""``mode="overwrite"`` removes only files smallpond can prove it wrote (ops/sink_record.py).

A manifest names files; the record under the data root says which files they were (size,
modification time, inode, device) and which manifest. So:

* a user's file put in place of a published one, or a published file a user appended to, is
  theirs: the overwrite is refused when planned, naming it, and the file stays byte for byte;
* an untouched earlier result is replaced, and the result folder holds only the files and the
  manifest, byte-identical between two runs of the same job;
* a ``.MANIFEST.txt`` written by hand (absolute paths, as smallpond writes them), or one edited
  after publication, proves nothing: the files it lists are not removed;
* an earlier result with no record here (another data root, an older smallpond) is refused,
  not removed;
* a job killed between a publication's swap and its record leaves a folder that is refused by
  other jobs, never removed, and the job's rerun finishes the record.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.errors import PlanError
from smallpond.execution.job import run_job
from smallpond.execution.ops import sink_record
from smallpond.execution.runtime import sink_records_dir
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan
from tests.datagen import generate_parquet_files, tree_digest
from tests.e2e.safety_helpers import ids, manifest, published_rows, snapshot
from tests.e2e.test_safety_publish_crash import command, state_of, versions


def parts(sp, n: int, start: int = 0, k: int = 2):
    """A frame of ids ``start..start+n`` computed in ``k`` partitions, so written as ``k`` files."""
    return sp.partial_sql("select id from {0}", sp.from_arrow(ids(n, start)).repartition(k, hash_by="id"))


def published(out) -> list:
    return sorted(n for n in os.listdir(out) if n != ".MANIFEST.txt")


def refused_overwrite(sp, out) -> str:
    """Try to overwrite ``out``; return the refusal's message (nothing may have run or changed)."""
    before = snapshot(str(out))
    executed = len(sp._job.scheduler.state.executed)
    with pytest.raises(PlanError) as info:
        sp.from_arrow(ids(4, 50)).write_parquet(str(out))
    assert snapshot(str(out)) == before, "the refused overwrite changed the folder"
    assert len(sp._job.scheduler.state.executed) == executed, "a task ran before the refusal"
    message = str(info.value)
    assert message.startswith("DataSinkNode created at ") and "test_safety_overwrite.py" in message  # call site
    assert str(out) in message
    return message


def test_a_published_file_a_user_replaced_is_theirs(sp, tmp_path):
    out = tmp_path / "out"
    parts(sp, 10).write_parquet(str(out))
    victim = out / published(out)[0]
    mine = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"id": [-1]}), mine)
    os.replace(mine, victim)  # the user's file, under the name of one of ours
    message = refused_overwrite(sp, out)
    assert f"'{victim.name}'" in message and "replaced or modified" in message and "mode='append'" in message
    assert pq.read_table(victim).column("id").to_pylist() == [-1]
    # once the user moved it away, the rest of the earlier result is replaced as usual
    os.replace(victim, tmp_path / "kept.parquet")
    sp.from_arrow(ids(4, 50)).write_parquet(str(out))
    assert published_rows(str(out), "id") == list(range(50, 54))


def test_a_published_file_a_user_appended_to_is_theirs(sp, tmp_path):
    out = tmp_path / "out"
    parts(sp, 10).write_parquet(str(out))
    edited = out / published(out)[1]
    with open(edited, "ab") as f:
        f.write(b"user's notes")  # edited in place: same inode, another size and time
    message = refused_overwrite(sp, out)
    assert f"'{edited.name}'" in message and "1 file(s)" in message
    assert edited.read_bytes().endswith(b"user's notes")


def test_an_untouched_result_is_replaced_and_the_folder_holds_only_the_result(sp, root, tmp_path):
    """Two runs of one job into one folder: byte-identical folders of Parquet files and the
    manifest; the record is kept outside, under the data root."""
    out = tmp_path / "out"
    digests = []
    for _ in range(2):
        parts(sp, 30, k=3).write_parquet(str(out))
        digests.append(tree_digest(str(out)))
        assert sorted(os.listdir(out)) == sorted([".MANIFEST.txt"] + [os.path.basename(p) for p in manifest(str(out))])
        assert len(os.listdir(out)) == 4  # 3 files and the manifest, as upstream's sink leaves it
    assert digests[0] == digests[1]
    assert not [n for n in os.listdir(tmp_path) if n.startswith("out.")], "staging, old or kept folders left behind"
    record = sink_record.load(sink_records_dir(root), str(out))
    assert record is not None and sorted(record.files) == published(out)
    assert record.manifest == sink_record.identity(str(out / ".MANIFEST.txt"))


def test_a_hand_written_manifest_makes_no_file_ours(sp, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.parquet", "b.parquet"):
        pq.write_table(pa.table({"id": [1, 2]}), out / name)
    # in the very form smallpond writes: one absolute path per line
    (out / ".MANIFEST.txt").write_text(f"{out / 'a.parquet'}\n{out / 'b.parquet'}\n")
    message = refused_overwrite(sp, out)
    assert "'a.parquet', 'b.parquet'" in message and "no record" in message and "written by hand" in message


@pytest.mark.parametrize("kind", ["link", "manifest"])
def test_a_hand_written_manifest_is_refused_by_every_sink_type(tmp_path, make_rt, kind):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"id": [7]}), out / "mine.parquet")
    (out / ".MANIFEST.txt").write_text(f"{out / 'mine.parquet'}\n")
    before = snapshot(str(out))
    ctx = Context()
    plan = LogicalPlan(ctx, DataSinkNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), str(out), type=kind))
    with pytest.raises(PlanError, match="cannot tell whether its .MANIFEST.txt and the files it lists are the ones"):
        run_job(plan, make_rt(), num_workers=1)
    assert snapshot(str(out)) == before


def test_an_edited_manifest_vouches_for_nothing(sp, tmp_path):
    out = tmp_path / "out"
    sp.from_arrow(ids(6)).write_parquet(str(out))
    pq.write_table(pa.table({"id": [9]}), tmp_path / "mine.parquet")
    os.replace(tmp_path / "mine.parquet", out / "mine.parquet")
    with open(out / ".MANIFEST.txt", "a") as f:  # the user lists their file in our manifest
        f.write(f"{out / 'mine.parquet'}\n")
    message = refused_overwrite(sp, out)
    assert "the manifest was replaced or modified since smallpond wrote it" in message and "'mine.parquet'" in message


def test_a_result_of_another_data_root_is_refused_not_removed(tmp_path):
    """No record here: its files cannot be told from a user's (they could be a hand-written
    manifest's). The user removes the earlier result once; from then on overwrites work."""
    out = tmp_path / "out"
    first = smallpond.init(data_root=str(tmp_path / "root1"), num_executors=1)
    try:
        first.from_arrow(ids(5)).write_parquet(str(out))
    finally:
        first.shutdown()
    sp = smallpond.init(data_root=str(tmp_path / "root2"), num_executors=1)
    try:
        message = refused_overwrite(sp, out)
        assert "no record of it under" in message and "another data root" in message and "remove it" in message
        for name in os.listdir(out):
            os.unlink(out / name)
        for _ in range(2):
            sp.from_arrow(ids(4, 50)).write_parquet(str(out))
        assert published_rows(str(out), "id") == list(range(50, 54))
    finally:
        sp.shutdown()


def test_append_keeps_a_changed_file_refused(sp, tmp_path):
    """An append lists a changed file again, with the identity recorded before the change."""
    out = tmp_path / "out"
    sp.from_arrow(ids(3)).write_parquet(str(out))
    edited = out / published(out)[0]
    with open(edited, "ab") as f:
        f.write(b"x")
    sp.from_arrow(ids(2, 10)).write_parquet(str(out), mode="append")
    assert str(edited) in manifest(str(out))
    assert f"'{edited.name}'" in refused_overwrite(sp, out)


def test_a_kill_between_the_swap_and_the_record_removes_nothing(tmp_path, data_root):
    """SIGKILL just before the first sink's record is written (after its swap): the folder holds
    the new result and a record of the old one. Another job refuses to overwrite it (nothing is
    removed); the killed job's rerun writes the record, and overwrites work again."""
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    files, old = versions(tmp_path, 0)
    run = subprocess.run(command(str(uuid.uuid4()), data_root, files, a, b), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    files, new = versions(tmp_path, 1)
    job_id = str(uuid.uuid4())
    cmd = command(job_id, data_root, files, a, b)
    env = dict(os.environ, SP_TEST_PUBLISH_KILL_AT_STEP="2")  # sink A: mkdir, swap, then its record
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert glob.glob(os.path.join(data_root, f"*.{job_id}", "config", "publication.journal"))
    assert state_of(a, {"old": old["A"], "new": new["A"]}) == "new"
    record = sink_record.load(sink_records_dir(data_root), a)
    assert record is not None and record.manifest != sink_record.identity(os.path.join(a, ".MANIFEST.txt"))

    before = snapshot(a)
    files2, _ = versions(tmp_path, 2)
    other = subprocess.run(command(str(uuid.uuid4()), data_root, files2, a, b), capture_output=True, text=True, timeout=180)
    assert other.returncode != 0 and "cannot tell whether its .MANIFEST.txt" in other.stderr, other.stderr[-3000:]
    assert snapshot(a) == before

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    record = sink_record.load(sink_records_dir(data_root), a)
    assert record.manifest == sink_record.identity(os.path.join(a, ".MANIFEST.txt"))
    files3, third = versions(tmp_path, 3)
    last = subprocess.run(command(str(uuid.uuid4()), data_root, files3, a, b), capture_output=True, text=True, timeout=180)
    assert last.returncode == 0, last.stderr[-3000:]
    assert state_of(a, {"third": third["A"]}) == "third" and state_of(b, {"third": third["B"]}) == "third"


def test_an_output_in_the_records_folder_is_refused(sp, root):
    with pytest.raises(PlanError, match="where smallpond keeps its records"):
        sp.from_arrow(ids(1)).write_parquet(os.path.join(root, ".smallpond", "sinks"))


def test_a_manifest_edited_in_place_is_theirs(sp, tmp_path):
    """Only the manifest changed (the user listed a file of theirs kept elsewhere): the overwrite
    would replace the user's manifest, so it is refused."""
    out = tmp_path / "out"
    sp.from_arrow(ids(6)).write_parquet(str(out))
    pq.write_table(pa.table({"id": [9]}), tmp_path / "elsewhere.parquet")
    with open(out / ".MANIFEST.txt", "a") as f:
        f.write(f"{tmp_path / 'elsewhere.parquet'}\n")
    assert "the manifest was replaced or modified since smallpond wrote it" in refused_overwrite(sp, out)
