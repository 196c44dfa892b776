"""Acceptance: two jobs of one data root publishing one inside the other's destination at the same
instant (``out`` and ``out/sub2``): one publishes, the other is refused and publishes nothing.

One after the other, the second is refused when planned (ops/sink_overlap.py,
``check_nested_results``). At the same instant both were planned before either published, so both
went ahead: ``out`` was published with ``sub2`` inside it, a folder its manifest does not list, and
its next overwrite was refused. The nesting is checked again when the job publishes, under the
publication locks: a publication into ``out/sub2`` also holds a shared lock of every folder above
it (``out`` among them), and one into ``out`` holds the lock of ``out`` exclusively, so the two
take turns, and the second finds the first's result (ops/sink_lock.py, ops/sink.py ``publish``).

The jobs are the held jobs of the concurrent append tests: each stages its sink, waits, and all
publish once released together; ``SP_TEST_PUBLISH_STEP_DELAY`` makes each publication step take a
while, so that unlocked, their publications overlap every time.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.safety_helpers import published_rows
from tests.e2e.test_safety_append_concurrent import _together
from tests.e2e.test_safety_append_crash import consistent, held, rows_of, run


@pytest.mark.parametrize(
    "first, modes",
    [("outer", ("overwrite", "overwrite")), ("inner", ("append", "overwrite")), ("outer", ("append", "append"))],
    ids=["outer_staged_first", "inner_staged_first", "both_append"],
)
def test_jobs_publishing_one_inside_the_other_at_the_same_instant(tmp_path, data_root, first, modes):
    out = str(tmp_path / "out")
    inner = os.path.join(out, "sub2")
    jobs = [(out, 100, modes[0]), (inner, 200, modes[1])]
    if first == "inner":  # the outer job is planned once the inner one staged its folder inside out/
        jobs.reverse()
    errors = _together(tmp_path, data_root, None, jobs, expect=[0, 70], one_by_one=True)
    refused = [e for e in errors if "nothing was published" in e]
    assert len(refused) == 1, [e[-2000:] for e in errors]
    message = refused[0]
    if os.path.exists(os.path.join(out, ".MANIFEST.txt")):  # the outer job won
        assert published_rows(out, "id") == [100, 101, 102]
        consistent(out)  # out holds its result only: no sub2, no staged folder of the refused job
        assert f"cannot publish into {inner}: {out}, a folder above it, holds a smallpond result" in message
    else:  # the inner job won
        assert sorted(os.listdir(out)) == ["sub2"]
        assert published_rows(inner, "id") == [200, 201, 202]
        consistent(inner)
        assert f"cannot publish into {out}: it contains {inner}, which holds a smallpond result" in message
    assert "published since this job was planned, by job " in message and "/sinks/" in message  # the other job, its record
    assert not [n for n in os.listdir(tmp_path) if n.startswith("out.")]  # no staged or kept folder left
    assert not [n for n in os.listdir(out) if n.startswith("sub2.")]
    # whichever won, the data root's record vouches for it: the same job again is not refused
    winner = out if os.path.exists(os.path.join(out, ".MANIFEST.txt")) else inner
    run(held(data_root, rows_of(tmp_path, "again", 900), winner, mode="overwrite"))
    assert published_rows(winner, "id") == [900, 901, 902]


@pytest.mark.xfail(
    strict=True,
    reason="known gap (found in review, not fixed yet): a job killed mid-publication leaves its manifest in "
    "out without a record, so another job's nesting check passes; the rerun then finishes the publication around it",
)
def test_a_job_killed_while_publishing_is_not_nested_into_before_its_rerun(tmp_path, data_root):
    """The outer job is killed after its manifest moved into ``out``, before its record was written
    (its journal stays, its rerun finishes it). A job publishing into ``out/sub2`` meanwhile found no
    recorded result above (the record is what the nesting check trusts) and published; the outer
    job's rerun then finished its publication, and ``out`` held ``sub2``, a folder its manifest does
    not list: the state the check at publication exists to prevent. Wanted: one of the two refused
    (the inner one, naming the interrupted job and saying to rerun it)."""
    from tests.e2e.safety_helpers import kill_at

    out = str(tmp_path / "out")
    outer = held(data_root, rows_of(tmp_path, "outer", 100), out, mode="overwrite")
    kill_at(outer, 2)  # its file and manifest moved into out; its record not written
    inner = subprocess.run(
        held(data_root, rows_of(tmp_path, "inner", 200), os.path.join(out, "sub2"), mode="overwrite"),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    rerun = subprocess.run(outer, capture_output=True, text=True, timeout=180)
    assert not (inner.returncode == 0 and rerun.returncode == 0), sorted(os.listdir(out))
