"""Sinks of different computations (of one session, or of other jobs of the data root) never
publish one inside the other, nor overwrite a result the computation reads.

* A sink inside (or around) the destination of a sink an earlier computation of the session
  planned is refused when planned, naming both sinks (ops/sink_overlap.py, check_earlier_sinks);
  so is one inside or around a folder holding a result another job published (the data root's
  record of it: check_nested_results). Before, ``E/inner`` was published inside ``E``, whose next
  overwrite (the same script run again) was then refused.
* The same destination as an earlier sink of the session stays an overwrite by the usual rules (a
  notebook cell run again), unless that sink's result is an input of the new one: then the
  computation would read the files it replaces, and is refused when planned.
* After an allowed overwrite, the earlier frame's files are gone: reading it (or computing from
  it) is refused naming both sinks and the folder, not a FileNotFoundError on one of its files;
  ``recompute()`` publishes it again.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smallpond.errors import PlanError
from tests.e2e.safety_helpers import ids, published_rows, snapshot


def _refused(sp, write) -> str:
    """Run ``write``, which must be refused when planned: nothing runs, and its message is returned."""
    executed = len(sp._job.scheduler.state.executed)
    with pytest.raises(PlanError) as info:
        write()
    assert len(sp._job.scheduler.state.executed) == executed, "a task ran before the refusal"
    return str(info.value)


def test_a_sink_inside_an_earlier_computations_sink_is_refused(sp, tmp_path):
    e = str(tmp_path / "E")
    a = sp.from_arrow(ids(5)).write_parquet_lazy(e)
    assert a.count() == 5
    before = snapshot(e)
    message = _refused(sp, lambda: a.map("id + 1 as id").write_parquet(e + "/inner"))
    assert "DataSinkNode-" in message and message.count("test_safety_nested_sinks.py:") == 2  # both sinks, both call sites
    assert f"{e}/inner inside {e}" in message and "earlier in this session" in message
    around = _refused(sp, lambda: sp.from_arrow(ids(3)).write_parquet(str(tmp_path)))
    assert f"around {e}" in around
    assert snapshot(e) == before and not os.path.exists(e + "/inner")
    # the same folder again, from another frame: an overwrite by the usual rules
    sp.from_arrow(ids(3, 100)).write_parquet(e)
    assert published_rows(e, "id") == [100, 101, 102]


def test_overwriting_the_result_a_computation_reads_is_refused(sp, tmp_path):
    d = str(tmp_path / "D")
    a = sp.from_arrow(ids(5)).write_parquet_lazy(d)
    assert a.count() == 5
    message = _refused(sp, lambda: a.map("id * 100 as id").write_parquet(d))
    assert f"would overwrite {d}, which holds the result of DataSinkNode-" in message and "an input of this sink" in message
    assert sorted(a.to_arrow().column("id").to_pylist()) == list(range(5))  # still there
    a.map("id * 100 as id").write_parquet(d, mode="append")  # an append keeps a's files
    assert published_rows(d, "id") == [0, 0, 1, 2, 3, 4, 100, 200, 300, 400]


def test_reading_a_frame_whose_folder_was_overwritten_since_is_refused(sp, tmp_path):
    d = str(tmp_path / "D")
    a = sp.from_arrow(ids(5)).write_parquet_lazy(d)
    assert a.count() == 5
    sp.from_arrow(ids(2, 50)).write_parquet(d)  # not computed from a: allowed
    for read in (a.to_arrow, lambda: a.map("id + 1 as id").count()):
        message = _refused(sp, read)
        assert message.count("DataSinkNode-") == 2 and f"published its result into {d}" in message
        assert "overwrote that folder since" in message and "recompute()" in message
    a.recompute()
    assert sorted(a.to_arrow().column("id").to_pylist()) == list(range(5))
    assert published_rows(d, "id") == list(range(5))


JOB = """
import sys
import pyarrow as pa
import smallpond
root, dest, mode = sys.argv[1], sys.argv[2], sys.argv[3]
sp = smallpond.init(data_root=root, num_executors=1)
sp.from_arrow(pa.table({"id": [1, 2, 3]})).write_parquet(dest, mode=mode)
sp.shutdown()
"""


def test_a_sink_inside_or_around_another_jobs_result_is_refused(tmp_path):
    root, e = str(tmp_path / "root"), str(tmp_path / "E")
    script = str(tmp_path / "job.py")
    with open(script, "w") as f:
        f.write(JOB)

    def run(dest, mode="overwrite"):
        return subprocess.run([sys.executable, script, root, dest, mode], capture_output=True, text=True, timeout=300)

    assert run(e).returncode == 0
    before = snapshot(e)
    inner = run(e + "/inner")
    assert inner.returncode != 0 and f"output path {e}/inner is inside {e}, which holds a smallpond result" in inner.stderr
    assert "/sinks/" in inner.stderr  # the record's path
    assert f"published earlier by job {os.path.realpath(root)}" in inner.stderr  # and the job that published there
    assert snapshot(e) == before
    assert run(e).returncode == 0  # the same script again: E is overwritten as before
    # a result in F/inner, then F with mode="append" (an overwrite refuses the foreign inner/ already)
    f_ = str(tmp_path / "F")
    assert run(f_ + "/inner").returncode == 0
    over = run(f_)  # refused as holding a smallpond result, named with its record (not as "a file")
    assert over.returncode != 0 and f"{f_}/inner in it holds a smallpond result published earlier" in over.stderr
    assert "/sinks/" in over.stderr and f"published earlier by job {os.path.realpath(root)}" in over.stderr
    around = run(f_, "append")
    assert around.returncode != 0 and f"output path {f_} contains {f_}/inner, which holds a smallpond result" in around.stderr
    assert f"published earlier by job {os.path.realpath(root)}" in around.stderr
    assert sorted(os.listdir(f_)) == ["inner"]


def test_records_of_other_folders_are_read_once(tmp_path):
    # whether a destination contains a recorded result was decided by reading every record of the
    # data root, at every plan. Each record's destination is read once and indexed: here another
    # folder's record is then swapped for a FIFO, which blocks whoever opens it; the refusal must
    # come without opening it (the index), and a record written since is still read
    from smallpond.execution.ops import sink_record
    from smallpond.execution.runtime import sink_records_dir

    root = str(tmp_path / "root")
    script = str(tmp_path / "job.py")
    with open(script, "w") as f:
        f.write(JOB)

    def run(dest, mode="overwrite"):
        return subprocess.run([sys.executable, script, root, dest, mode], capture_output=True, text=True, timeout=120)

    g, h, k = (str(tmp_path / n) for n in "GHK")
    assert run(g + "/inner").returncode == 0 and run(h).returncode == 0
    assert f"contains {g}/inner" in run(g, "append").stderr  # refused: this lookup indexes the records
    h_record = sink_record.record_path(sink_records_dir(root), h)
    os.remove(h_record)
    os.mkfifo(h_record)
    assert run(k + "/inner").returncode == 0  # recorded after the index was written
    for dest in (g, k):
        try:
            refused = run(dest, "append")
        except subprocess.TimeoutExpired:
            pytest.fail(f"planning a sink into {dest} opened the record of another folder, which the index holds")
        assert refused.returncode != 0 and f"output path {dest} contains {dest}/inner, which holds" in refused.stderr
    assert sorted(os.listdir(g)) == ["inner"] and sorted(os.listdir(k)) == ["inner"]
