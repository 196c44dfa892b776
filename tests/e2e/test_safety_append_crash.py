"""Acceptance: an append that a SIGKILL interrupted is all or nothing for a reader, and never
undoes an append another job made since.

A job appending to a folder A moves its files in, then A's new ``.MANIFEST.txt`` (the earlier
lines and its own), then the record of what A holds. Killed in between, and with another job
appending to A meanwhile, its rerun must not put its older manifest over the other job's (that
job's files would drop out of A's manifest): it merges its own files into the manifest in place.
When its journal can no longer be finished (another of its sinks' staged folder is gone), an
append whose files moved in but that no manifest lists is rolled back: those files (the journal
proves by their identities that this job wrote them) are removed, and the rerun appends again, once.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import uuid

from tests.e2e.safety_helpers import append_session, kill_at, manifest, published_rows

HELD_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "held_sink_job.py")


def held(data_root, inputs, dest, mode="append", hold=None):
    cmd = [sys.executable, HELD_JOB, "scheduler", "--job_id", str(uuid.uuid4()), "--data_root", data_root,
           "--num_executors", "1", "-i", *inputs, "-o", dest, "--sink_mode", mode]  # fmt: skip
    return cmd + (["--hold", hold] if hold else [])


def rows_of(tmp_path, name, start, n=3):
    """An input file of ids ``start`` .. ``start + n - 1``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / f"{name}.parquet")
    pq.write_table(pa.table({"id": list(range(start, start + n))}), path)
    return [path]


def consistent(folder):
    """A's manifest lists every file in A, once, and nothing else."""
    listed = manifest(folder)
    present = sorted(n for n in os.listdir(folder) if n != ".MANIFEST.txt")
    assert len(listed) == len(set(listed)), f"a file listed twice: {listed}"
    assert sorted(os.path.basename(p) for p in listed) == present, f"manifest {listed} vs files {present}"


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _append_while_x_is_killed(tmp_path, data_root, kill_step):
    """A holds rows 0..2; job Y prepares its append to A (rows 100..) and waits; job X appends rows
    10.. and is SIGKILLed before publication step ``kill_step`` (0: nothing moved; 1: its file moved
    into A, its manifest not); then Y publishes. Returns X's command."""
    a = str(tmp_path / "A")
    run(held(data_root, rows_of(tmp_path, "first", 0), a))
    hold = tmp_path / "hold"
    hold.mkdir()
    y = subprocess.Popen(
        held(data_root, rows_of(tmp_path, "y", 100), a, hold=str(hold)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while not (hold / "holding").exists():  # Y's staged result is ready; it publishes on "go"
            assert y.poll() is None, y.stderr.read()[-3000:]
            time.sleep(0.05)
        cmd_x = held(data_root, rows_of(tmp_path, "x", 10), a)
        kill_at(cmd_x, kill_step)
    finally:
        (hold / "go").touch()
        _, err = y.communicate(timeout=180)
    assert y.returncode == 0, err[-3000:]
    return cmd_x


def test_a_rerun_finishing_an_append_keeps_another_jobs_append(tmp_path, data_root):
    """X is killed once its journal is written, before any step; Y appends to A meanwhile. X's
    rerun finishes its append into A as it is now: Y's rows stay listed (X's older staged manifest
    replaced Y's, so Y's file dropped out of A's manifest), and the record of A vouches for the
    merged manifest (a later overwrite of A is not refused)."""
    a = str(tmp_path / "A")
    cmd_x = _append_while_x_is_killed(tmp_path, data_root, 0)
    assert published_rows(a, "id") == [0, 1, 2, 100, 101, 102]
    run(cmd_x)
    assert published_rows(a, "id") == [0, 1, 2, 10, 11, 12, 100, 101, 102]
    consistent(a)
    run(held(data_root, rows_of(tmp_path, "z", 200), a))  # a later append
    assert published_rows(a, "id") == [0, 1, 2, 10, 11, 12, 100, 101, 102, 200, 201, 202]
    run(held(data_root, rows_of(tmp_path, "w", 300), a, mode="overwrite"))  # A is wholly smallpond's
    assert published_rows(a, "id") == [300, 301, 302]
    consistent(a)


def test_a_rerun_finishing_a_partial_append_keeps_another_jobs_append(tmp_path, data_root):
    """X is killed between moving its file into A and moving its manifest; Y appends meanwhile
    (its manifest does not list X's file). X's rerun finishes the append: its file is listed in
    A's manifest beside Y's, each once."""
    a = str(tmp_path / "A")
    cmd_x = _append_while_x_is_killed(tmp_path, data_root, 1)
    assert published_rows(a, "id") == [0, 1, 2, 100, 101, 102]
    assert len(os.listdir(a)) == 4  # X's file is in A, unlisted
    run(cmd_x)
    assert published_rows(a, "id") == [0, 1, 2, 10, 11, 12, 100, 101, 102]
    consistent(a)
    run(held(data_root, rows_of(tmp_path, "w", 300), a, mode="overwrite"))
    assert published_rows(a, "id") == [300, 301, 302]


def _session(tmp_path):
    base = str(tmp_path)
    script = append_session(base)
    run([sys.executable, script, base, "first-job", "0"])
    cmd_x = [sys.executable, script, base, "x-job", "10"]
    kill_at(cmd_x, 1)  # A's file moved in; A's manifest, its record and B's swap did not
    assert published_rows(base + "/A", "id") == [0, 1, 2] and len(os.listdir(base + "/A")) == 3
    return base, script, cmd_x


def test_an_abandoned_journal_rolls_back_a_partial_append(tmp_path):
    """A session appending to A and publishing B is killed between A's file move and A's manifest
    move; B's staged folder is then removed, so the rerun abandons the journal. X's file in A, which
    no manifest lists, is removed (it stayed there, unlisted, with its commit record kept: X's rows
    were never published); the rerun appends them, once."""
    base, _, cmd_x = _session(tmp_path)
    (staged_b,) = glob.glob(base + "/B.staging-*[0-9]")
    subprocess.run(["rm", "-rf", staged_b], check=True)
    rerun = run(cmd_x)
    consistent(base + "/A")
    assert published_rows(base + "/A", "id") == [0, 1, 2, 10, 11, 12]
    assert "abandoned the publication" in rerun.stderr and "rolled back the unfinished append" in rerun.stderr
    assert f"the unfinished appends into {base}/A were rolled back" in rerun.stderr  # in the one warning
    events = [
        json.loads(line)
        for path in glob.glob(base + "/root/**/events.jsonl", recursive=True)
        for line in open(path)
        if '"publication_abandoned"' in line
    ]
    assert [e["rolled_back"] for e in events] == [[base + "/A"]]
    assert published_rows(base + "/B", "id") == [20, 22, 24]
    run(cmd_x)  # all published: nothing appended again
    assert published_rows(base + "/A", "id") == [0, 1, 2, 10, 11, 12]


def test_an_abandoned_journal_rolls_back_a_partial_append_another_job_appended_after(tmp_path):
    """As above, but another job appends to A and publishes B meanwhile (its sinks' preparation
    removes X's staged folders, its manifest does not list X's file). The rerun rolls X's file
    back and appends X's rows once, after the other job's."""
    base, script, cmd_x = _session(tmp_path)
    run([sys.executable, script, base, "y-job", "100"])
    assert published_rows(base + "/A", "id") == [0, 1, 2, 100, 101, 102]
    rerun = run(cmd_x)
    consistent(base + "/A")
    assert published_rows(base + "/A", "id") == [0, 1, 2, 10, 11, 12, 100, 101, 102]
    assert "abandoned the publication" in rerun.stderr and "rolled back the unfinished append" in rerun.stderr
    run([sys.executable, script, base, "z-job", "200"])  # A's record vouches for its manifest: not refused
    assert published_rows(base + "/A", "id") == [0, 1, 2, 10, 11, 12, 100, 101, 102, 200, 201, 202]
    consistent(base + "/A")


def test_a_rerun_never_replaces_a_manifest_a_user_put_in_place(tmp_path):
    """X is killed between A's file move and A's manifest move; a user then puts a .MANIFEST.txt of
    their own in A (notes; or absolute paths, as a smallpond manifest has, which the rerun merged
    into and replaced). The rerun refuses, naming the file and what to do, and publishes nothing;
    once the user moves it away, the rerun appends X's rows (listed alone: the folder has no
    manifest any more) and publishes B."""
    for content in ("my notes, not a manifest\n", "{first}\n"):
        (tmp_path / str(len(content))).mkdir()
        base, _, cmd_x = _session(tmp_path / str(len(content)))
        a = base + "/A"
        theirs = content.format(first=manifest(a)[0])
        os.remove(a + "/.MANIFEST.txt")
        with open(a + "/.MANIFEST.txt", "w") as f:
            f.write(theirs)
        for _ in range(2):  # every rerun, until it is moved
            refused = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)
            assert refused.returncode != 0 and f"cannot finish appending to {a}: {a}/.MANIFEST.txt was replaced" in refused.stderr
            assert f"Move it out of {a} and run the job again" in refused.stderr
            with open(a + "/.MANIFEST.txt") as f:
                assert f.read() == theirs
            assert published_rows(base + "/B", "id") == [0, 2, 4]  # not published either
        os.rename(a + "/.MANIFEST.txt", base + "/notes.txt")
        rerun = run(cmd_x)
        assert "has no .MANIFEST.txt any more" in rerun.stderr
        assert published_rows(a, "id") == [10, 11, 12] and published_rows(base + "/B", "id") == [20, 22, 24]
        with open(base + "/notes.txt") as f:
            assert f.read() == theirs


def test_a_rerun_after_the_manifest_was_removed_appends_once_and_says_so(tmp_path):
    """As above, but the user removes A's manifest: the rerun appends as into a folder without one
    (its own files listed), says so, and a further rerun appends nothing again."""
    base, _, cmd_x = _session(tmp_path)
    a = base + "/A"
    os.remove(a + "/.MANIFEST.txt")
    rerun = run(cmd_x)
    assert f"{a} has no .MANIFEST.txt any more (removed since this append was planned, when it listed 1 file(s))" in rerun.stderr
    assert published_rows(a, "id") == [10, 11, 12] and published_rows(base + "/B", "id") == [20, 22, 24]
    run(cmd_x)
    assert published_rows(a, "id") == [10, 11, 12] and len(os.listdir(a)) == 3


def test_a_refusal_behind_another_jobs_interrupted_append_says_to_rerun_that_job(tmp_path):
    """X is killed mid-append; Y is then killed after its manifest moved into A but before its
    record was written. X's rerun is refused (A's manifest is not the recorded one), and the
    message said only to remove the manifest and its files by hand, which deletes Y's and the
    earlier rows. It now names Y's job folder first and says to rerun it; once Y has, X appends."""
    base, script, cmd_x = _session(tmp_path)
    cmd_y = [sys.executable, script, base, "y-job", "100"]
    kill_at(cmd_y, 2)  # Y's file and manifest moved into A; its record not written
    refused = subprocess.run(cmd_x, capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0
    (y_root,) = [p for p in glob.glob(base + "/root/*") if os.path.exists(p + "/config/publication.journal")]
    assert f"First: the job(s) {y_root} were interrupted while publishing" in refused.stderr, refused.stderr[-3000:]
    assert "rerun that job (same job id and data root)" in refused.stderr
    run(cmd_y)
    run(cmd_x)
    assert published_rows(base + "/A", "id") == [0, 1, 2, 10, 11, 12, 100, 101, 102]
