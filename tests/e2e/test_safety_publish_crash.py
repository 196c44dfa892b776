"""Acceptance: SIGKILL at any instant of a publication, then a rerun: every output folder holds the
previous complete result or the new complete one, never a mix, and the rerun completes the new one.

A Driver job with two sinks replaces their earlier results and is SIGKILLed while it publishes:
just before a given publication step (``SP_TEST_PUBLISH_KILL_AT_STEP``, the job kills itself), or
at a random instant with the steps slowed down (``SP_TEST_PUBLISH_STEP_DELAY``). With the default
layout the publication has 14 steps (4 for each of A and B: parent folder, swap, record of what
was published, discard; 3 for the manifest of the job's ``FinalResults``; then the 3 commit
records), so the chosen steps fall before, between and after the two swaps.
"""

from __future__ import annotations

import glob
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

from smallpond.io.filesystem import exchange_paths
from tests.datagen import generate_parquet_files
from tests.e2e.safety_helpers import append_session, kill_at, manifest, published_rows

PUBLISH_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "publish_job.py")
HELD_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "held_sink_job.py")
DELAY = 0.25


def command(job_id, data_root, inputs, a, b):
    return [sys.executable, PUBLISH_JOB, "scheduler", "--job_id", job_id, "--data_root", data_root, "--num_executors", "1",
            "-i", *inputs, "-a", a, "-b", b]  # fmt: skip


def state_of(folder: str, versions: dict) -> str:
    """Which complete version a folder holds ("old" or "new"), or what is wrong with it."""
    if not os.path.isdir(folder):
        return "missing"
    listed = manifest(folder)
    present = sorted(n for n in os.listdir(folder) if n != ".MANIFEST.txt")
    if sorted(os.path.basename(p) for p in listed) != present:
        return f"manifest {listed} does not match files {present}"
    rows = published_rows(folder, "id")
    for name, expected in versions.items():
        if rows == expected:
            return name
    return f"mixed rows {rows}"


def versions(tmp_path, i):
    """Input files of version ``i`` and what sinks A and B hold once it is published."""
    files = generate_parquet_files(str(tmp_path / f"v{i}"), nfiles=2, rows_per_file=5 + i, seed=i, prefix=f"v{i}-")
    rows = list(range(2 * (5 + i)))
    return files, {"A": rows, "B": [2 * r for r in rows]}


def test_sigkill_during_publication_then_rerun(tmp_path, data_root):
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    files, current = versions(tmp_path, 0)
    first = subprocess.run(command(str(uuid.uuid4()), data_root, files, a, b), capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    for i, kill in enumerate(["step0", "step4", "step7", "random"], start=1):
        files, new = versions(tmp_path, i)
        expect = {"A": {"old": current["A"], "new": new["A"]}, "B": {"old": current["B"], "new": new["B"]}}
        assert (state_of(a, expect["A"]), state_of(b, expect["B"])) == ("old", "old")
        job_id = str(uuid.uuid4())
        journal_glob = os.path.join(data_root, f"*.{job_id}", "config", "publication.journal")
        cmd = command(job_id, data_root, files, a, b)
        if kill == "random":  # a random instant: publication steps are slowed, the kill comes from outside
            env = dict(os.environ, SP_TEST_PUBLISH_STEP_DELAY=str(DELAY))
            proc = subprocess.Popen(
                cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            deadline = time.monotonic() + 120
            while not glob.glob(journal_glob):
                assert proc.poll() is None, f"the job ended before publishing: {proc.stderr.read()[-3000:]}"
                assert time.monotonic() < deadline, "no publication journal appeared"
                time.sleep(0.01)
            time.sleep(random.uniform(0, 10 * DELAY))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        else:  # the job kills itself (SIGKILL) just before publication step n
            env = dict(os.environ, SP_TEST_PUBLISH_KILL_AT_STEP=kill[len("step") :])
            killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
            assert glob.glob(journal_glob), "killed during publication, but the journal is gone"

        # at the instant of the kill each folder held one complete version: the swap is atomic
        after_kill = (state_of(a, expect["A"]), state_of(b, expect["B"]))
        assert set(after_kill) <= {"old", "new"}, (kill, after_kill)

        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert (state_of(a, expect["A"]), state_of(b, expect["B"])) == ("new", "new"), kill
        assert not glob.glob(journal_glob)
        assert not [n for n in os.listdir(tmp_path) if ".staging-" in n or ".old-" in n]
        current = new


def test_rerun_after_another_job_published_over_a_crashed_publication(tmp_path, data_root):
    """Job X is SIGKILLed between its two swaps (A is published, B is staged); job Y, another job
    id with the same destinations, publishes both, and its preparation removes X's staged B. X's
    journal can no longer be finished: its rerun abandons it (a warning naming the destinations, a
    ``publication_abandoned`` event), runs its sinks again and publishes A and B, whole, over Y's."""
    import json

    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    files_x, x = versions(tmp_path, 0)
    files_y, y = versions(tmp_path, 1)
    job_x = str(uuid.uuid4())
    cmd_x = command(job_x, data_root, files_x, a, b)
    env = dict(os.environ, SP_TEST_PUBLISH_KILL_AT_STEP="4")  # A's 4 steps ran, B's swap did not
    killed = subprocess.run(cmd_x, env=env, capture_output=True, text=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert state_of(a, {"x": x["A"]}) == "x" and not os.path.exists(b)
    assert [n for n in os.listdir(tmp_path) if n.startswith("B.staging-")]

    other = subprocess.run(command(str(uuid.uuid4()), data_root, files_y, a, b), capture_output=True, text=True, timeout=180)
    assert other.returncode == 0, other.stderr[-3000:]
    assert (state_of(a, {"y": y["A"]}), state_of(b, {"y": y["B"]})) == ("y", "y")

    rerun = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (state_of(a, {"x": x["A"]}), state_of(b, {"x": x["B"]})) == ("x", "x")
    warning = [line for line in rerun.stderr.splitlines() if "abandoned the publication" in line]
    assert len(warning) == 1 and a in warning[0] and b in warning[0], rerun.stderr[-3000:]
    (job_root,) = glob.glob(os.path.join(data_root, f"*.{job_x}"))
    with open(os.path.join(job_root, "log", "events.jsonl")) as f:
        events = [json.loads(line) for line in f if '"publication_abandoned"' in line]
    assert len(events) == 1 and {a, b} <= set(events[0]["destinations"]), events
    assert not os.path.exists(os.path.join(job_root, "config", "publication.journal"))
    assert not [n for n in os.listdir(tmp_path) if ".staging-" in n or ".old-" in n]
    # given up, the publication is no longer pending: its mark (ops/sink_pending.py) went with its journal
    assert os.listdir(os.path.join(data_root, ".smallpond", "users", str(os.getuid()), "publishing")) == []

    again = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)  # all published: nothing to abandon
    assert again.returncode == 0 and "abandoned" not in again.stderr, again.stderr[-3000:]
    assert (state_of(a, {"x": x["A"]}), state_of(b, {"x": x["B"]})) == ("x", "x")


def _x_swapped_a_with_notes_aside(tmp_path, data_root, a, b, step):
    """An earlier result in A and B; job X publishes over it, a user's notes.txt arrives in A once
    X's journal exists and before its swap, and X is killed just before step ``step`` (2: A is
    swapped in, not recorded; 3: recorded, its previous result and the notes not discarded)."""
    files0, _ = versions(tmp_path, 0)
    files_x, x = versions(tmp_path, 1)
    first = subprocess.run(command(str(uuid.uuid4()), data_root, files0, a, b), capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    cmd_x = command(str(uuid.uuid4()), data_root, files_x, a, b)
    kill_at(cmd_x, 1)  # the journal is written, nothing moved yet
    with open(os.path.join(a, "notes.txt"), "w") as f:
        f.write("the user's notes\n")
    kill_at(cmd_x, step)  # the rerun finishes the journal up to that step
    (aside,) = glob.glob(a + ".old-*[0-9a-f]")
    assert os.listdir(aside).count("notes.txt") == 1
    return cmd_x, x


def test_an_overtaken_journal_finishes_the_sinks_it_had_swapped_in(tmp_path, data_root):
    """X is killed after swapping its result into A, before recording it; job Y (sinks A2 and B)
    then removes X's staged B. X's journal is abandoned, but A, which readers already see, is
    finished: recorded (else every rerun was refused at plan time, exit 70: smallpond could not
    tell A's manifest from a user's) and its previous result discarded, the user's notes.txt kept
    in A.kept-* (abandoning whole deleted it with the aside). A's result is still the one X
    published, so its sink counts as published (its commit record is kept, a ``kept`` event field
    names it): the rerun publishes B alone, and leaves A's folder as it is (A was computed and
    published a second time, a new folder swapped in)."""
    import json

    a, a2, b = str(tmp_path / "A"), str(tmp_path / "A2"), str(tmp_path / "B")
    cmd_x, x = _x_swapped_a_with_notes_aside(tmp_path, data_root, a, b, step=2)
    swapped_in = os.stat(a).st_ino
    (staged_b,) = glob.glob(b + ".staging-*[0-9]")
    hold = os.open(staged_b, os.O_RDONLY)  # its inode number is not reused by the next folder made
    try:
        files_y, _ = versions(tmp_path, 2)
        y = subprocess.run(command(str(uuid.uuid4()), data_root, files_y, a2, b), capture_output=True, text=True, timeout=180)
        assert y.returncode == 0, y.stderr[-3000:]
        assert not os.path.exists(staged_b)
    finally:
        os.close(hold)
    for _ in range(2):  # the second run finds everything published
        rerun = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert (state_of(a, {"x": x["A"]}), state_of(b, {"x": x["B"]})) == ("x", "x")
        assert os.stat(a).st_ino == swapped_in, "A was published again"
    (events,) = glob.glob(os.path.join(data_root, f"*.{cmd_x[cmd_x.index('--job_id') + 1]}", "log", "events.jsonl"))
    with open(events) as f:
        (abandoned,) = [json.loads(line) for line in f if '"publication_abandoned"' in line]
    assert abandoned["finished"] == abandoned["kept"] == [a]
    (kept,) = glob.glob(a + ".kept-*")
    assert os.listdir(kept) == ["notes.txt"]
    with open(os.path.join(kept, "notes.txt")) as f:
        assert f.read() == "the user's notes\n"
    assert not [n for n in os.listdir(tmp_path) if ".staging-" in n or ".old-" in n]


def test_another_job_discards_a_dead_jobs_aside_keeping_a_users_file(tmp_path, data_root):
    """X is killed after swapping and recording A, before discarding its previous result, which
    holds the user's notes.txt (it arrived in A during X's run). Job Y publishes into A and B: its
    sink removes X's set-aside folder (X is dead), but only the files X's publication would have
    removed, by the list in its owner record; notes.txt goes back into A (it was deleted)."""
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    _x_swapped_a_with_notes_aside(tmp_path, data_root, a, b, step=3)
    files_y, y = versions(tmp_path, 2)
    other = subprocess.run(command(str(uuid.uuid4()), data_root, files_y, a, b), capture_output=True, text=True, timeout=180)
    assert other.returncode == 0, other.stderr[-3000:]
    with open(os.path.join(a, "notes.txt")) as f:
        assert f.read() == "the user's notes\n"
    os.unlink(os.path.join(a, "notes.txt"))
    assert (state_of(a, {"y": y["A"]}), state_of(b, {"y": y["B"]})) == ("y", "y")
    assert not [n for n in os.listdir(tmp_path) if ".old-" in n or ".kept-" in n]


def test_a_previous_result_an_interrupted_exchange_left_is_discarded_not_removed(tmp_path, data_root):
    """X is SIGKILLed inside its swap of A, right after the exchange: the previous result of A, with
    the user's notes.txt (it arrived during X's run), sits at X's staged folder's name. Job Y, which
    was planned before (A then held only the earlier result) and prepares its sink into A now,
    clears that leftover (X is dead): only the files the record proves smallpond wrote go, and
    notes.txt goes back into A. (It removed the folder whole, notes and all.) X's rerun then
    finishes its publication."""
    (tmp_path / "p").mkdir()
    (tmp_path / "q").mkdir()
    if not exchange_paths(str(tmp_path / "p"), str(tmp_path / "q")):
        pytest.skip("this filesystem cannot exchange two folders atomically: no swap leaves that state")
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    files0, _ = versions(tmp_path, 0)
    files_x, x = versions(tmp_path, 1)
    first = subprocess.run(command(str(uuid.uuid4()), data_root, files0, a, b), capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    cmd_x = command(str(uuid.uuid4()), data_root, files_x, a, b)
    kill_at(cmd_x, 1)  # the journal is written, nothing moved yet
    hold = tmp_path / "hold"
    hold.mkdir()
    cmd_y = [sys.executable, HELD_JOB, "scheduler", "--job_id", str(uuid.uuid4()), "--data_root", data_root,
             "--num_executors", "1", "-i", *files0, "-o", a, "--hold", str(hold), "--before"]  # fmt: skip
    y = subprocess.Popen(cmd_y, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (hold / "holding").exists():  # Y is planned (A checked) and waits before its sink
            assert y.poll() is None, y.stderr.read()[-3000:]
            time.sleep(0.05)
        with open(os.path.join(a, "notes.txt"), "w") as f:
            f.write("the user's notes\n")
        env = dict(os.environ, SP_TEST_PUBLISH_KILL_AT_POINT="exchanged")
        killed = subprocess.run(cmd_x, env=env, capture_output=True, text=True, timeout=180)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        (left,) = glob.glob(a + ".staging-*[0-9]")
        assert "notes.txt" in os.listdir(left)  # the previous result, at the staged folder's name
        assert state_of(a, {"x": x["A"]}) == "x"
    finally:
        (hold / "go").touch()
        y.communicate(timeout=180)
    assert not os.path.exists(left), "Y's sink did not clear the leftover of X"
    with open(os.path.join(a, "notes.txt")) as f:
        assert f.read() == "the user's notes\n"
    os.unlink(os.path.join(a, "notes.txt"))
    rerun = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (state_of(a, {"x": x["A"]}), state_of(b, {"x": x["B"]})) == ("x", "x")
    assert not [n for n in os.listdir(tmp_path) if ".staging-" in n or ".old-" in n or ".kept-" in n]


SESSION_CHAIN = """
import sys
import pyarrow as pa
import smallpond
base, job_id, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sp = smallpond.init(job_id=job_id, data_root=base + "/root", task_cache="off", num_executors=1)
g = sp.from_arrow(pa.table({"id": list(range(n))})).write_parquet_lazy(base + "/G")
if len(sys.argv) > 4:  # and a sink S computed from G's staged files, in the same computation
    g.map("id * 2 as id").write_parquet(base + "/S")
else:
    g.compute()
sp.shutdown()
"""


def test_a_kept_sink_does_not_hide_a_sink_given_up_upstream_of_it(tmp_path):
    """A session publishes G and S (computed from G) together and is SIGKILLed once both are
    swapped in, before their commit records; another session then publishes into G. The rerun
    abandons the journal (G's result is no longer the one it swapped in); S's is intact, so S
    counts as published and is the rerun's target, complete at once. G, behind it, still runs and
    is published again. (Without G among the scheduler's goals the rerun ended as soon as it
    began, reporting success, with G holding the other session's rows.)"""
    base = str(tmp_path)
    script = os.path.join(base, "chain.py")
    with open(script, "w") as f:
        f.write(SESSION_CHAIN)
    cmd_x = [sys.executable, script, base, "x-job", "10", "S"]
    kill_at(cmd_x, 8)  # G's 4 steps and S's 4 ran; the 2 commit records did not
    other = subprocess.run([sys.executable, script, base, "y-job", "3"], capture_output=True, text=True, timeout=180)
    assert other.returncode == 0, other.stderr[-3000:]
    assert published_rows(base + "/G", "id") == [0, 1, 2]
    s_folder = os.stat(base + "/S").st_ino
    rerun = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "abandoned the publication" in rerun.stderr
    assert published_rows(base + "/G", "id") == list(range(10))
    assert published_rows(base + "/S", "id") == [2 * i for i in range(10)]
    assert os.stat(base + "/S").st_ino == s_folder  # S was not published again


def test_an_abandoned_journal_does_not_append_twice(tmp_path):
    """A session appends to A and publishes B together, and is SIGKILLed once A's files and
    manifest are moved in (A is visible), before B's swap. B's staged folder is then removed and
    a user removes one of the files A appended, so the rerun abandons the journal and A is not
    intact. Its append still counts as published (its commit record is kept): the rerun publishes
    B alone and does not append A's rows a second time."""
    base = str(tmp_path)
    script = append_session(base)
    first = subprocess.run([sys.executable, script, base, "first-job", "0"], capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    earlier = set(os.listdir(base + "/A"))
    cmd_x = [sys.executable, script, base, "x-job", "10"]
    kill_at(cmd_x, 4)  # A's steps: its file, its manifest, its record, its staged folder's removal
    assert published_rows(base + "/A", "id") == [0, 1, 2, 10, 11, 12]
    (staged_b,) = glob.glob(base + "/B.staging-*[0-9]")
    subprocess.run(["rm", "-rf", staged_b], check=True)
    (appended,) = set(os.listdir(base + "/A")) - earlier
    os.unlink(os.path.join(base, "A", appended))
    rerun = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "abandoned the publication" in rerun.stderr
    assert sorted(os.listdir(base + "/A")) == sorted(earlier), "the rerun appended A's rows again"
    assert published_rows(base + "/B", "id") == [20, 22, 24]


def test_an_abandoned_journal_does_not_append_twice_after_another_append(tmp_path):
    """As above, but then another job appends to A (rewriting A's manifest) and publishes B (so
    X's staged B is removed): X's append is no longer visible by its manifest, yet its file is in
    A. The rerun abandons the journal, keeps the append's commit record without running its
    steps (they would put back X's older manifest and record), and appends nothing again."""
    base = str(tmp_path)
    script = append_session(base)

    def run(job_id, start):
        return subprocess.run([sys.executable, script, base, job_id, str(start)], capture_output=True, text=True, timeout=180)

    assert run("first-job", 0).returncode == 0
    cmd_x = [sys.executable, script, base, "x-job", "10"]
    kill_at(cmd_x, 4)
    other = run("y-job", 100)
    assert other.returncode == 0, other.stderr[-3000:]
    rows = [0, 1, 2, 10, 11, 12, 100, 101, 102]
    assert published_rows(base + "/A", "id") == rows
    rerun = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "abandoned the publication" in rerun.stderr
    assert published_rows(base + "/A", "id") == rows, "the rerun appended X's rows again"
    assert published_rows(base + "/B", "id") == [20, 22, 24]
    again = subprocess.run([sys.executable, script, base, "z-job", "200"], capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]  # A's record is still y's: a later append is not refused
    assert published_rows(base + "/A", "id") == rows + [200, 201, 202]


def test_clean_keeps_a_job_whose_publication_was_interrupted(tmp_path, data_root):
    """A job killed during its publication is 'crashed', and `smallpond clean --yes` removed its
    folder: the journal and the staged files its rerun needs to finish the publication went with
    it, leaving the destinations' staged leftovers behind. It is kept (saying why) until a rerun
    has finished the publication; then it goes like any finished job."""
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    files, _ = versions(tmp_path, 0)
    assert subprocess.run(command(str(uuid.uuid4()), data_root, files, a, b), capture_output=True, timeout=180).returncode == 0
    files, new = versions(tmp_path, 1)
    job_id = str(uuid.uuid4())
    cmd = command(job_id, data_root, files, a, b)
    kill_at(cmd, 4)
    (job_root,) = glob.glob(os.path.join(data_root, f"*.{job_id}"))

    def clean():
        argv = [sys.executable, "-m", "smallpond", "clean", "--yes", "--data_root", data_root]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = clean()
    assert f"keeping {job_root}" in out and "publication was interrupted" in out, out
    assert os.path.isfile(os.path.join(job_root, "config", "publication.journal"))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert published_rows(a, "id") == new["A"] and published_rows(b, "id") == new["B"]
    assert f"removing {job_root}" in clean() and not os.path.exists(job_root)
