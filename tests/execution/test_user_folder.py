"""This user's folder under a data root (execution/user_folder.py): refused unless it is theirs,
never followed elsewhere by ``smallpond clean``, and an earlier single-user layout moves in.

Other users are simulated here where it takes one (``chown``, as root); the tests with a second
real user are in tests/e2e/test_shared_data_root.py.
"""

from __future__ import annotations

import os
import shutil
import stat

import pyarrow as pa
import pytest

import smallpond
from smallpond.errors import ParameterError, PlanError
from smallpond.execution import cache as cache_module
from smallpond.execution.cache import open_cache
from smallpond.execution.ops import sink_record
from smallpond.execution.runtime import resolve_task_cache, sink_records_dir, user_dir
from tests.e2e.safety_helpers import published_rows, snapshot
from tests.test_cli import cli


def publish(root, out, start=0, **settings):
    sp = smallpond.init(data_root=root, num_executors=1, **settings)
    try:
        sp.from_arrow(pa.table({"id": list(range(start, start + 3))})).write_parquet(str(out))
    finally:
        sp.shutdown()


@pytest.mark.parametrize("case", ["a symbolic link", "writable by others", "another user's"])
def test_a_folder_in_this_users_place_that_is_not_theirs_is_refused(tmp_path, case):
    """Whoever can write ``.smallpond/users`` may put a folder where this user's goes: its key,
    records and task cache never go into one this user does not own alone."""
    root = str(tmp_path / "root")
    mine = user_dir(root)
    os.makedirs(os.path.dirname(mine))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if case == "a symbolic link":
        os.symlink(theirs, mine)
    else:
        os.mkdir(mine)
        if case == "writable by others":
            os.chmod(mine, 0o777)
        elif os.geteuid() == 0:
            os.chown(mine, 65534, 65534)
        else:
            pytest.skip("needs root, to give the folder to another user")
    with pytest.raises(PlanError) as info:
        publish(root, tmp_path / "out", task_cache="off")
    message = str(info.value)
    assert message.startswith("DataSinkNode created at ") and f"{mine} " in message
    assert "refusing to keep this user's key, records of published results and task cache in it" in message
    with pytest.raises(ParameterError, match="refusing to keep"):
        open_cache(resolve_task_cache(None, root))
    assert os.listdir(theirs) == [] and not os.path.exists(tmp_path / "out")
    if case != "a symbolic link":
        assert os.listdir(mine) == []


def test_a_user_folder_taken_away_leaves_no_record_and_nothing_is_removed(tmp_path):
    """The owner of ``users/`` can move this user's folder away: the result it vouched for is then
    unrecorded, so an overwrite is refused and nothing of it is removed."""
    root, out = str(tmp_path / "root"), tmp_path / "out"
    publish(root, out)
    os.rename(user_dir(root), str(tmp_path / "moved"))
    before = snapshot(str(out))
    with pytest.raises(PlanError, match="there is no record of it under"):
        publish(root, out, start=10)
    assert snapshot(str(out)) == before


def test_clean_never_follows_a_swapped_user_folder(tmp_path):
    """A symbolic link in place of this user's folder leads elsewhere: ``smallpond clean`` must not
    prune what it finds there (a file there that looks like a damaged record stays)."""
    root, out = str(tmp_path / "root"), tmp_path / "out"
    publish(root, out)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sinks").mkdir(parents=True)
    (elsewhere / "sinks" / "notes.record").write_text("someone's file, not a record")
    shutil.move(user_dir(root), str(tmp_path / "moved"))
    os.symlink(elsewhere, user_dir(root))
    done = cli("clean", "--yes", data_root=root)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "left the records of published results alone" in done.stderr and "symbolic link" in done.stderr
    assert (elsewhere / "sinks" / "notes.record").exists()


def legacy_layout(root: str) -> None:
    """Turn this user's folder into the layout an earlier smallpond left (one user per data root)."""
    top, mine = os.path.join(root, ".smallpond"), user_dir(root)
    for name in ("secret", "sinks"):
        os.rename(os.path.join(mine, name), os.path.join(top, name))
    os.rename(os.path.join(mine, "task_cache"), os.path.join(root, ".task_cache"))
    shutil.rmtree(os.path.join(top, "users"))
    os.chmod(top, 0o700)


def entries(cache: str) -> set:
    folder = os.path.join(cache, "entries")
    return {k for d in os.listdir(folder) for k in os.listdir(os.path.join(folder, d))}


def test_an_earlier_single_user_layout_moves_into_the_users_folder(tmp_path):
    """The owner's next job renames the earlier key, records and task cache into its folder: the
    records still vouch for the results (an overwrite works) and the cache's entries are kept."""
    root, out = str(tmp_path / "root"), tmp_path / "out"
    publish(root, out)
    cached = entries(resolve_task_cache(None, root))
    assert cached
    legacy_layout(root)
    cache_module._caches.clear()  # the next job is a new process: it has not opened the cache yet
    publish(root, out, start=10)
    assert published_rows(str(out), "id") == [10, 11, 12]
    top = os.path.join(root, ".smallpond")
    assert sorted(os.listdir(top)) == ["users"] and stat.S_IMODE(os.stat(top).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(os.path.join(top, "users")).st_mode) == 0o1733
    assert not os.path.exists(os.path.join(root, ".task_cache"))
    assert cached <= entries(resolve_task_cache(None, root))


def test_clean_moves_an_earlier_layout_in_and_prunes_its_records(tmp_path):
    root, out, kept = str(tmp_path / "root"), tmp_path / "out", tmp_path / "kept"
    publish(root, out)
    publish(root, kept)
    legacy_layout(root)
    shutil.rmtree(out)
    done = cli("clean", "--yes", data_root=root)
    assert "removed 1 record(s) of published results" in done.stdout, done.stdout + done.stderr
    assert sorted(os.listdir(os.path.join(root, ".smallpond"))) == ["users"]
    assert sink_record.load(sink_records_dir(root), str(kept)) is not None  # verified with the key that moved in
