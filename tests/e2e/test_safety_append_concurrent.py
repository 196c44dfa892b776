"""Acceptance: jobs appending to one folder at the same instant each append once, and none
drops another's files.

Each job plans its publication from the folder as it finds it (the manifest's lines, the record
of what the folder holds) and then moves its files and its manifest in. Two jobs doing that at
once each plan from the folder before the other's steps: the manifest moved in last lists only
its job's files beside the earlier ones (the other append is published, reported done, and
listed by none), or a job finds the other's manifest moved in before its record and refuses
it as a user's edit. Publications into one destination take turns (ops/sink_lock.py).

The jobs are held once their sinks are prepared and released together;
``SP_TEST_PUBLISH_STEP_DELAY`` makes each publication step take a while, so without the lock
their publications overlap every time.
"""

from __future__ import annotations

import glob
import os
import subprocess
import time

import pytest

from tests.e2e.safety_helpers import published_rows
from tests.e2e.test_safety_append_crash import consistent, held, rows_of, run

JOBS = 3


def _logs_say(data_root: str, text: str) -> int:
    """How many of the jobs' logs under ``data_root`` have ``text``."""
    found = 0
    for path in glob.glob(os.path.join(data_root, "*", "log", "*.log")):
        with open(path, errors="replace") as f:
            found += text in f.read()
    return found


def _together(tmp_path, data_root, a, jobs, expect=None, one_by_one=False):
    """Run held jobs ``jobs`` ((first id, sink mode) each, or (destination, first id, sink mode))
    that publish into ``a`` (or their own destination) once all are prepared, released at the same
    instant; every one must succeed (``expect``: else the exit statuses, in order of exit status).
    ``data_root`` may be a list: each job's. ``one_by_one``: each job is started once the one
    before is prepared (so it is planned after that one staged its result), not all at once."""
    env = dict(os.environ, SP_TEST_PUBLISH_STEP_DELAY="0.15")
    procs = []

    def prepared(job, hold):
        while not (hold / "holding").exists():
            assert job.poll() is None, job.stderr.read()[-3000:]
            time.sleep(0.02)

    try:
        for i, spec in enumerate(jobs):
            dest, start, mode = spec if len(spec) == 3 else (a, *spec)
            hold = tmp_path / f"hold{i}"
            hold.mkdir()
            root = data_root[i] if isinstance(data_root, list) else data_root
            cmd = held(root, rows_of(tmp_path, f"job{i}", start), dest, mode=mode, hold=str(hold))
            procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), hold))
            if one_by_one:
                prepared(*procs[-1])
        for job, hold in procs:  # every job's sink is prepared; they publish on "go"
            prepared(job, hold)
    finally:
        for _, hold in procs:
            (hold / "go").touch()
        errors = [job.communicate(timeout=180)[1] for job, _ in procs]
    if expect is not None:
        assert sorted(job.returncode for job, _ in procs) == expect, [e[-2000:] for e in errors]
        return errors
    for (job, _), err in zip(procs, errors):
        assert job.returncode == 0, err[-3000:]
    return errors


def _waited(data_root, jobs):
    """They did publish at the same instant: a job waited for the lock. Any of them may have: a job
    takes the lock twice (to decide at planning what its sink does, then to publish), so the first
    to decide can wait at publication for one still deciding."""
    assert 1 <= _logs_say(data_root, "waiting for another job publishing into") <= jobs


@pytest.mark.parametrize("existing", [True, False], ids=["into_a_result", "into_a_new_folder"])
def test_jobs_appending_to_one_folder_at_the_same_instant_each_append_once(tmp_path, data_root, existing):
    a = str(tmp_path / "A")
    expected = []
    if existing:
        run(held(data_root, rows_of(tmp_path, "first", 0), a))
        expected += [0, 1, 2]
    starts = [100 * (i + 1) for i in range(JOBS)]
    _together(tmp_path, data_root, a, [(start, "append") for start in starts])
    expected += [i for start in starts for i in range(start, start + 3)]
    assert published_rows(a, "id") == sorted(expected)  # every append, once
    consistent(a)  # every file in A listed once; none of another job's removed
    assert not [n for n in os.listdir(tmp_path) if n.startswith("A.")]  # no staged or kept folder left beside A
    _waited(data_root, JOBS)
    # the record of A vouches for what it holds: a later overwrite is not refused
    run(held(data_root, rows_of(tmp_path, "last", 900), a, mode="overwrite"))
    assert published_rows(a, "id") == [900, 901, 902]
    consistent(a)


def test_an_overwrite_and_an_append_at_the_same_instant_leave_a_result_that_reads(tmp_path, data_root):
    """Unlocked, the append kept the earlier result's lines in its manifest while the overwrite
    removed their files: A's manifest named files that were gone."""
    a = str(tmp_path / "A")
    run(held(data_root, rows_of(tmp_path, "first", 0), a))
    _together(tmp_path, data_root, a, [(100, "overwrite"), (200, "append")])
    # one after the other, in either order: the overwrite then the append, or the append overwritten
    assert published_rows(a, "id") in ([100, 101, 102, 200, 201, 202], [100, 101, 102])
    consistent(a)
    _waited(data_root, 2)


@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_jobs_of_different_data_roots_creating_one_folder_at_the_same_instant(tmp_path, mode):
    """Two jobs of different data roots (or users) write into one new folder at the same instant.
    Their records are apart, so only the lock of the folder itself makes them take turns: the
    first publishes, the second then finds a result its data root has no record of and is refused,
    publishing nothing. Unlocked, both succeeded and the folder's manifest listed one job's files
    beside the other's, unlisted (an append reported done and lost)."""
    a = str(tmp_path / "A")
    roots = [str(tmp_path / "root0"), str(tmp_path / "root1")]
    errors = _together(tmp_path, roots, a, [(100, mode), (200, mode)], expect=[0, 70])
    refused = [e for e in errors if "nothing was published" in e]
    assert len(refused) == 1, [e[-2000:] for e in errors]
    assert published_rows(a, "id") in ([100, 101, 102], [200, 201, 202])  # one job's rows, whole
    consistent(a)  # every file in A listed once
    assert not [n for n in os.listdir(tmp_path) if n.startswith("A.")]  # no staged or kept folder left beside A
