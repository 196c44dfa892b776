"""smallpond.platform: picking a platform by name, and launching, watching and stopping real
processes (plain subprocesses, and a real ``mpirun``)."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time

import psutil
import pytest

from smallpond.platform import MPI, Manual, Platform, get_platform
from tests.processes import alive

pytestmark = pytest.mark.queue

REPORT = textwrap.dedent(
    """
    import os, sys, time
    out = sys.argv[1]
    keys = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "SP_EXECUTORS_ON_HOST", "SP_TEST_VAR")
    with open(os.path.join(out, f"tmp-{os.getpid()}"), "w") as f:
        f.write(" ".join(f"{k}={os.environ.get(k, '')}" for k in keys))
    os.rename(os.path.join(out, f"tmp-{os.getpid()}"), os.path.join(out, str(os.getpid())))  # whole when seen
    deadline = time.monotonic() + 120
    while len(sys.argv) > 3 and not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
        time.sleep(0.02)  # (told when to start its sleep: not before the test has seen every rank)
    time.sleep(float(sys.argv[2]))
    open(os.path.join(out, f"end-{os.getpid()}"), "w").close()
    """
)


def reports(path) -> list:
    out = []
    for name in sorted(n for n in os.listdir(path) if n.isdigit()):
        with open(os.path.join(path, name)) as f:
            out.append(dict(kv.split("=", 1) for kv in f.read().split()))
    return out


def wait_for_files(path, n, seconds=60):
    deadline = time.monotonic() + seconds
    while len([n for n in os.listdir(path) if n.isdigit()]) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return [int(p) for p in os.listdir(path) if p.isdigit()]


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "report.py"
    path.write_text(REPORT)
    out = tmp_path / "out"
    out.mkdir()
    return str(path), str(out)


def test_get_platform_by_name():
    assert type(get_platform("mpi")) is MPI
    assert type(get_platform("base")) is Platform
    assert type(get_platform("manual")) is Manual
    # like upstream: with nothing named, mpirun on the PATH picks MPI
    assert type(get_platform(None)) is (MPI if shutil.which("mpirun") else Platform)
    assert not Platform.is_available() and MPI.is_available() == (shutil.which("mpirun") is not None)


def test_get_platform_imports_a_module_with_one_platform(tmp_path, monkeypatch):
    (tmp_path / "my_cluster.py").write_text(
        "from smallpond.platform import Platform\nclass Cluster(Platform):\n    name = 'cluster'\n"
    )
    (tmp_path / "two_clusters.py").write_text(
        "from smallpond.platform import Platform\nclass A(Platform):\n    pass\nclass B(Platform):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert type(get_platform("my_cluster")).__name__ == "Cluster"  # the imported base class is not picked
    with pytest.raises(RuntimeError, match=r"exactly one Platform subclass, found \['A', 'B'\]"):
        get_platform("two_clusters")
    with pytest.raises(RuntimeError, match="unknown platform 'no_such_platform'"):
        get_platform("no_such_platform")


def test_base_platform_starts_polls_and_stops_subprocesses(script, log_messages):
    path, out = script
    platform = Platform()
    ids = platform.start_job(2, path, [out, "60"], envs={"SP_TEST_VAR": "x"}, extra_opts={"nonsense": 1})
    assert len(ids) == 2
    pids = wait_for_files(out, 2)
    assert sorted(pids) == sorted(int(i) for i in ids)
    assert all(r["SP_EXECUTORS_ON_HOST"] == "2" and r["SP_TEST_VAR"] == "x" for r in reports(out))
    assert any("ignoring launcher options it does not know: ['nonsense']" in m for m in log_messages)
    assert [platform.poll_job(i) for i in ids] == [None, None]
    for i in ids:
        platform.stop_job(i)
    assert all(platform.poll_job(i) is not None for i in ids)
    assert not any(alive(p) for p in pids)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed (.ci/run installs openmpi-bin)")
def test_mpi_platform_launches_ranks_that_can_be_stopped(script, tmp_path):
    path, out = script
    platform = MPI()
    log = str(tmp_path / "mpirun.log")
    ids = platform.start_job(3, path, [out, "120"], envs={"SP_TEST_VAR": "y"}, extra_opts={"log_path": log})
    assert len(ids) == 1, "one handle for the mpirun job (upstream returned none, so its jobs could not be stopped)"
    ranks = wait_for_files(out, 3)
    got = reports(out)
    assert sorted(r["OMPI_COMM_WORLD_RANK"] for r in got) == ["0", "1", "2"]
    assert all(r["OMPI_COMM_WORLD_LOCAL_SIZE"] == "3" and r["SP_TEST_VAR"] == "y" for r in got)
    assert platform.poll_job(ids[0]) is None
    platform.stop_job(ids[0])
    assert platform.poll_job(ids[0]) is not None
    _, left = psutil.wait_procs([psutil.Process(p) for p in ranks if psutil.pid_exists(p)], timeout=30)
    assert not left, f"ranks outlived their stopped job: {left}"


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed (.ci/run installs openmpi-bin)")
def test_mpi_job_survives_the_loss_of_one_rank(script):
    """One executor lost must not take the others with it (mpirun's default would)."""
    path, out = script
    platform = MPI()
    go = os.path.join(out, "go")
    (job,) = platform.start_job(3, path, [out, "3", go])
    ranks = wait_for_files(out, 3)
    os.kill(ranks[0], 9)  # before any has ended (on a loaded machine the last may start seconds after the first)
    open(go, "w").close()
    assert platform.wait_job(job, 60) is not None
    # the two others ran to their end: mpirun did not abort them when the first was killed
    assert sorted(n for n in os.listdir(out) if n.startswith("end-")) == sorted(f"end-{p}" for p in ranks[1:])


def test_manual_platform_starts_nothing():
    assert Manual().start_job(3, sys.executable, ["-c", "pass"]) == []
