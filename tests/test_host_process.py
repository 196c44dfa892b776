"""The library leaves the host process alone: its loguru sinks, stdlib logging and environment.

smallpond logs through a logger of its own (``smallpond.common.logger``), adds its sinks there and
removes only those; worker processes (ours) are where stdlib logging is captured and the job's
environment variables are set.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json, logging, os, sys
from loguru import logger
marker = logger.add(sys.stdout, format="USER {message}", level="INFO")
logging.basicConfig(level=logging.WARNING)
before = {
    "loguru": sorted(logger._core.handlers),
    "logging": [type(h).__name__ for h in logging.getLogger().handlers],
    "level": logging.getLogger().level,
    "env": dict(os.environ),
}

import smallpond
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode

sp = smallpond.init(data_root=sys.argv[1], num_executors=1)
assert sp.from_items([1, 2, 3]).count() == 3
sp.shutdown()
ctx = Context()
node = SqlEngineNode(ctx, (), "select 42 as x")
rt = make_runtime_ctx(None, None, sys.argv[1], env_overrides={"SP_PROBE_ONLY_IN_WORKERS": "1"})
run_job(LogicalPlan(ctx, node), rt, num_workers=1)
logger.info("still mine")
after = {
    "loguru": sorted(logger._core.handlers),
    "logging": [type(h).__name__ for h in logging.getLogger().handlers],
    "level": logging.getLogger().level,
    "env": dict(os.environ),
}
print(json.dumps({"same": before == after, "before": before["loguru"], "after": after["loguru"],
                  "env_diff": sorted(set(after["env"].items()) ^ set(before["env"].items()))}))
"""


def test_sessions_and_jobs_leave_logging_and_environment_as_they_found_them(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["env_diff"] == []
    assert result["same"], result
    assert "USER still mine" in lines  # the user's own sink still works
    assert not any(line.startswith("USER") and "smallpond" in line for line in lines), "smallpond wrote to the user's sink"


def test_smallpond_logger_prints_warnings_by_default_and_stays_silent_once_its_sinks_are_removed():
    """The default console sink is added at the first call that logs; removing every sink (before
    or after that) keeps smallpond silent, as it did when the sink was added eagerly."""
    import subprocess
    import sys

    def stderr_of(code: str) -> str:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    assert "hello" in stderr_of("from smallpond.common import logger; logger.warning('hello')")
    assert stderr_of("from smallpond.common import logger; logger.remove(); logger.warning('hello')") == ""
    assert (
        stderr_of("from smallpond.common import logger; logger.warning('a'); logger.remove(); logger.warning('hello')").count(
            "hello"
        )
        == 0
    )
