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
import re
import subprocess
import time

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


def _killed_at_its_record(cmd):
    """Run ``cmd`` (a held job publishing into a new folder) and SIGKILL it once its result is swapped
    into its destination, before its record is written (step 2: mkdir, swap, record, ...)."""
    from tests.e2e.safety_helpers import kill_at

    kill_at(cmd, 2)


def dest_of(cmd):
    return cmd[cmd.index("-o") + 1]


def _job_folder(data_root, cmd):
    job_id = cmd[cmd.index("--job_id") + 1]
    (name,) = [n for n in os.listdir(data_root) if n.endswith(job_id)]
    return os.path.join(data_root, name)


@pytest.mark.parametrize("killed", ["outer", "inner"])
@pytest.mark.parametrize("other", ["planned_after", "held_before"])
def test_a_job_killed_while_publishing_is_not_nested_into_before_its_rerun(tmp_path, data_root, killed, other):
    """One job is killed after its result moved into its destination, before its record was written
    (its journal stays, its rerun finishes it). A job publishing inside it or around it meanwhile
    (``out/sub2`` inside ``out``, or an append into ``out`` around ``out/sub2``) found no recorded
    result there (the record is what the nesting checks trust) and published, and the rerun then
    finished its publication: ``out`` held ``sub2``, a folder its manifest does not list. The killed
    job's publication mark (ops/sink_pending.py) makes the other job refused, when planned after
    the kill or, planned before it, when it publishes, naming the killed job and saying to rerun it.
    Its rerun then finishes its publication, and the other job runs again as the rules say."""
    out = str(tmp_path / "out")
    inner_dest = os.path.join(out, "sub2")
    # an outer job planned around an inner one is an append (an overwrite is refused when planned: out
    # holds the inner job's folder, or its staged one, which no manifest lists)
    mode = "overwrite" if (killed, other) == ("outer", "planned_after") else "append"
    outer = held(data_root, rows_of(tmp_path, "outer", 100), out, mode=mode)
    inner = held(data_root, rows_of(tmp_path, "inner", 200), inner_dest, mode="overwrite")
    victim, survivor = (outer, inner) if killed == "outer" else (inner, outer)
    if other == "planned_after":
        _killed_at_its_record(victim)
        refused = subprocess.run(survivor, capture_output=True, text=True, timeout=180)
    else:  # planned (and staged) before the kill; it publishes after it
        hold = tmp_path / "hold"
        hold.mkdir()
        proc = subprocess.Popen(survivor + ["--hold", str(hold)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while not (hold / "holding").exists():
                assert proc.poll() is None, proc.stderr.read()[-3000:]
                time.sleep(0.05)
            _killed_at_its_record(victim)
        finally:
            (hold / "go").touch()
            _, err = proc.communicate(timeout=180)
        refused = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert refused.returncode != 0, refused.stderr[-3000:]
    job = _job_folder(data_root, victim)
    victim_dest = out if killed == "outer" else inner_dest
    message = " ".join(refused.stderr.split())
    assert f"job {job} began publishing a result into {victim_dest} and has not finished" in message, message[-3000:]
    assert (
        "the job is not running: it stopped before finishing its publication (it was killed, or it failed). Rerun that job"
        in message
    )
    assert f"(its publication journal {os.path.join(job, 'config', 'publication.journal')} is still there)" in message
    assert "or remove that journal to give the publication up" in message
    if other == "held_before":  # refused when it publishes, holding the publication locks
        assert "nothing was published" in message and f"cannot publish into {dest_of(survivor)}" in message
    else:  # refused when planned
        assert "PlanError: DataSinkNode created at" in message
    # the rerun finishes its publication; the other job, run again, is refused by the record
    run(victim)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("out.")]  # no staged folder of either job
    if killed == "outer":
        assert published_rows(out, "id") == [100, 101, 102]
        consistent(out)  # no sub2 in it
    else:
        assert published_rows(inner_dest, "id") == [200, 201, 202]
        assert sorted(os.listdir(out)) == ["sub2"]  # the append around it was refused: nothing of it there
    again = subprocess.run(survivor, capture_output=True, text=True, timeout=180)
    assert again.returncode != 0 and "holds a smallpond result published earlier" in again.stderr, again.stderr[-3000:]
    mark_dir = os.path.join(data_root, ".smallpond", "users", str(os.getuid()), "publishing")
    assert os.listdir(mark_dir) == []  # the publications finished: no mark left


def test_a_rerun_finishing_a_journal_without_a_mark_marks_it_first(tmp_path, data_root):
    """A journal of a smallpond without publication marks (here: its mark removed) gets its mark
    from the rerun that finishes it, before the rerun's first step: killed again there, the job is
    still seen by the nesting checks."""
    out = str(tmp_path / "out")
    outer = held(data_root, rows_of(tmp_path, "outer", 100), out, mode="overwrite")
    _killed_at_its_record(outer)
    mark_dir = os.path.join(data_root, ".smallpond", "users", str(os.getuid()), "publishing")
    (name,) = os.listdir(mark_dir)
    os.remove(os.path.join(mark_dir, name))
    _killed_at_its_record(outer)  # the rerun, killed before the same step
    assert os.listdir(mark_dir) == [name]
    inner = subprocess.run(
        held(data_root, rows_of(tmp_path, "inner", 200), os.path.join(out, "sub2")), capture_output=True, text=True, timeout=180
    )
    assert inner.returncode != 0 and "began publishing a result into" in inner.stderr, inner.stderr[-3000:]
    run(outer)
    assert published_rows(out, "id") == [100, 101, 102] and os.listdir(mark_dir) == []


def test_a_job_killed_while_publishing_is_not_restarted_around_its_journal(tmp_path, data_root):
    """``--restart`` moves the job folder aside, journal and all: the publication it began would
    never be finished (a rerun finishes the journal in the job's own folder), its destination
    would keep a result no record vouches for (the restarted job's own overwrite of it refused,
    'remove it by hand'), and its mark would count no more (its folder has no journal), so other
    jobs could publish inside it. A restart is refused while the journal is there, naming it and
    what to do; run again without restart, the job finishes its publication, and may restart."""
    out = str(tmp_path / "out")
    outer = held(data_root, rows_of(tmp_path, "outer", 100), out, mode="overwrite")
    _killed_at_its_record(outer)
    job = _job_folder(data_root, outer)
    journal = os.path.join(job, "config", "publication.journal")
    refused = subprocess.run(outer + ["--restart"], capture_output=True, text=True, timeout=180)
    message = " ".join(refused.stderr.split())
    assert refused.returncode != 0, message[-3000:]
    assert f"cannot restart job {job}: an earlier run of it began publishing and did not finish" in message, message[-3000:]
    assert f"(its publication journal {journal} is still there)" in message
    assert "Run the job again without restart (same job id and data root)" in message
    assert os.path.exists(journal) and not [n for n in os.listdir(data_root) if ".restarted-" in n]
    inner = subprocess.run(
        held(data_root, rows_of(tmp_path, "inner", 200), os.path.join(out, "sub2")), capture_output=True, text=True, timeout=180
    )
    assert inner.returncode != 0 and "began publishing a result into" in inner.stderr, inner.stderr[-3000:]  # still seen
    run(outer)  # finishes the publication
    assert published_rows(out, "id") == [100, 101, 102]
    run(outer + ["--restart"])
    assert [n for n in os.listdir(data_root) if ".restarted-" in n]
    assert published_rows(out, "id") == [100, 101, 102]
    mark_dir = os.path.join(data_root, ".smallpond", "users", str(os.getuid()), "publishing")
    assert os.listdir(mark_dir) == []


def tree(root: str) -> list:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_a_job_killed_while_publishing_keeps_its_folder_through_cleanup_root(tmp_path, data_root):
    """``RuntimeContext.cleanup_root()`` (and ``initialize(cleanup_root=True)``, upstream's API)
    removed the whole job folder, the journal of a publication a killed run began with it: that
    publication could never be finished, its destination kept a result no record vouches for, and
    its mark counted no more. Both are refused while the journal is there, naming it and what to
    do; the folder and journal stay. Run again, the job finishes its publication, and the folder
    may go."""
    from datetime import datetime

    from smallpond.execution.ownership import JobFolderError
    from smallpond.execution.runtime import JobId, RuntimeContext

    out = str(tmp_path / "out")
    outer = held(data_root, rows_of(tmp_path, "outer", 100), out, mode="overwrite")
    _killed_at_its_record(outer)
    job = _job_folder(data_root, outer)
    journal = os.path.join(job, "config", "publication.journal")
    stamp, job_id = os.path.basename(job).split(".", 1)

    def runtime():
        return RuntimeContext(JobId(hex=job_id), datetime.strptime(stamp, "%Y-%m-%d-%H-%M-%S"), data_root)

    assert runtime().job_root == job
    config = sorted(os.listdir(os.path.join(job, "config")))
    before = tree(job)
    for remove, rerun in (
        (lambda rt: rt.cleanup_root(), ""),
        (lambda rt: rt.initialize(cleanup_root=True), " without cleanup_root"),
    ):
        with pytest.raises(JobFolderError) as refused:
            remove(runtime())
        message = str(refused.value)
        assert f"cannot remove the folder of job {job}: an earlier run of it began publishing and did not finish" in message
        assert f"(its publication journal {journal} is still there)" in message
        assert (
            f"Run the job again{rerun} (same job id and data root), which finishes that publication, then remove its folder"
            in message
        )
        assert "or, if it cannot be run again (its secret was lost), remove that journal to give the publication up" in message
        assert os.path.exists(journal)
    assert sorted(os.listdir(os.path.join(job, "config"))) == config  # the killed run's lock too (its status)
    for remove_output_root in (True, False):  # upstream's clean-up of the intermediates, refused likewise
        with pytest.raises(JobFolderError, match=rf"cannot clean up job {re.escape(job)}: an earlier run of it began publishing"):
            runtime().cleanup(remove_output_root=remove_output_root)
    assert tree(job) == before
    run(outer)  # finishes the publication
    assert published_rows(out, "id") == [100, 101, 102]
    runtime().cleanup_root()
    assert not os.path.exists(job) and published_rows(out, "id") == [100, 101, 102]
