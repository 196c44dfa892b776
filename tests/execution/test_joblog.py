"""The job's own log sinks, written without loguru (smallpond/execution/joblog.py)."""

import json
import os
import subprocess
import sys

from smallpond.execution import joblog

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


_JOB = r"""
import json, os, sys
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode
import duckdb
data = sys.argv[1]
duckdb.sql(f"COPY (SELECT range AS id FROM range(10)) TO '{data}/in.parquet'")
ctx = Context()
node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([f"{data}/in.parquet"])),), "select count(*) as n from {0}")
rt = make_runtime_ctx(None, None, f"{data}/root", console_log_level="WARNING")
run_job(LogicalPlan(ctx, node), rt, num_workers=1)
logs = [os.path.join(rt.log_root, n) for n in os.listdir(rt.log_root) if n.endswith(".log")]
print(json.dumps({"loguru": "loguru" in sys.modules, "log": open(logs[0]).read()}))
"""


def test_a_job_writes_its_log_without_importing_loguru(tmp_path):
    # loguru (and asyncio with it) costs ~40 ms of a job's start; the job log needs none of it
    out = json.loads(_python(_JOB, str(tmp_path)))
    assert out["loguru"] is False
    lines = out["log"].splitlines()
    assert any(" | INFO     | smallpond.execution.job:start:" in line and " - smallpond job " in line for line in lines)
    assert any(" succeeded: " in line for line in lines)


_SAME_LINES = r"""
import json, sys
from smallpond.common import logger
from smallpond.execution.joblog import PlainSink

plain, loguru_path = sys.argv[1], sys.argv[2]

def emit():
    logger.debug("debug {} and {k}", 1, k="two")
    logger.info("info {braces} kept", )
    logger.warning("warning")

logger.remove_default_sink()
sink = logger.add_plain(PlainSink("DEBUG", path=plain))
emit()
assert "loguru" not in sys.modules
logger.add(loguru_path, level="DEBUG")  # a sink only loguru can have: the plain one moves into it
emit()
logger.remove(sink)
logger.info("after the plain sink is removed")
print(json.dumps({"loguru": "loguru" in sys.modules}))
"""


def test_plain_lines_are_the_lines_loguru_writes(tmp_path):
    plain, by_loguru = tmp_path / "plain.log", tmp_path / "loguru.log"
    assert json.loads(_python(_SAME_LINES, str(plain), str(by_loguru)))["loguru"] is True
    ours, theirs = plain.read_text().splitlines(), by_loguru.read_text().splitlines()
    assert len(ours) == 6 and len(theirs) == 4  # the plain sink got both rounds, loguru's one and the last line

    def unstamped(lines):
        return [line.split(" | ", 1)[1] for line in lines]

    assert unstamped(ours[:3]) == unstamped(theirs[:3])  # written without loguru, as loguru writes them
    assert ours[3:] == theirs[:3]  # then by loguru, into the same file
    assert unstamped(ours[:1]) == ["DEBUG    | __main__:emit:9 - debug 1 and two"]
    assert unstamped(ours[1:2]) == ["INFO     | __main__:emit:10 - info {braces} kept"]
    assert "after the plain sink is removed" in theirs[3] and "after" not in plain.read_text()


def test_a_plain_file_is_handed_to_loguru_past_its_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(joblog, "PLAIN_FILE_LIMIT", 100)
    sink = joblog.PlainSink("INFO", path=str(tmp_path / "sub" / "job.log"), rotation="100 MB", retention=5)
    assert os.path.exists(tmp_path / "sub" / "job.log") and not sink.needs_loguru  # created when added
    sink.write("INFO", "m", "f", 1, "x" * 40)
    assert not sink.needs_loguru
    sink.write("INFO", "m", "f", 1, "x" * 40)
    assert sink.needs_loguru  # loguru rotates it from here on
    assert sink.loguru_args() == (str(tmp_path / "sub" / "job.log"), {"level": "INFO", "rotation": "100 MB", "retention": 5})
    sink.close()
    assert joblog.PlainSink("INFO", write=print, colorize=True).needs_loguru  # colors are loguru's
