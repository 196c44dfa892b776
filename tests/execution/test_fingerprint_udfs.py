"""Fingerprints of DuckDB UDFs and of the files a SQL node loads: a UDF registered by name, loaded
from a module file or made with ``@udf`` is keyed by its code, and an extension or UDF module file
by its contents, so an edited one is never served from the task cache."""

from __future__ import annotations

import time

import pytest

from smallpond.execution.fingerprint import stable_digest
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode
from smallpond.logical.udf import UDFType, udf
from tests.execution import test_fingerprint

# the fixture of test_fingerprint: Parquet ids 0-9
ids_file = test_fingerprint.ids_file


def _udf_sum(tmp_path, ids_file, job: str, k: int, how: str) -> int:
    """(sum(f(id)) over ids 0..9 with f(x) = x * k, tasks reused from the cache), f a UDF registered
    by name (``ctx``), loaded from a module file (``module``) or made with @udf (``decorator``)."""
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([ids_file]))

    def times_k(x):
        return x * k

    if how == "ctx":
        udfs = {"udfs": [ctx.create_function("times_k", times_k, [UDFType.BIGINT], UDFType.BIGINT)]}
    elif how == "module":
        module = tmp_path / "udfmod.py"
        module.write_text(
            "import duckdb\n\ndef create_duckdb_udfs(conn):\n"
            f"    conn.create_function('times_k', lambda x: x * {k}, [duckdb.sqltypes.BIGINT], duckdb.sqltypes.BIGINT)\n"
        )
        udfs = {"udf_module_paths": [str(module)]}
    else:
        udfs = {"udfs": [udf(params=[UDFType.BIGINT], return_type=UDFType.BIGINT, name="times_k")(times_k)]}
    node = SqlEngineNode(ctx, (src,), "select sum(times_k(id)) as s from {0}", **udfs)
    ep = run_job(LogicalPlan(ctx, node), make_runtime_ctx(job, None, str(tmp_path / "root")))
    return ep.final_output.to_arrow_table().column("s")[0].as_py(), ep.num_reused


@pytest.mark.parametrize("how", ["ctx", "module", "decorator"])
def test_an_edited_udf_is_not_served_from_the_task_cache(tmp_path, ids_file, how):
    assert _udf_sum(tmp_path, ids_file, "one", 2, how) == (90, 0)
    assert _udf_sum(tmp_path, ids_file, "two", 3, how) == (135, 0), f"a UDF ({how}) changed, the cached output was served"
    assert _udf_sum(tmp_path, ids_file, "three", 3, how) == (135, 1)  # nothing changed: reused


@pytest.mark.parametrize("option", ["extension_paths", "udf_module_paths", "udfs"])
def test_the_files_a_sql_node_loads_are_digested_by_their_contents(tmp_path, ids_file, option):
    path = str(tmp_path / ("f.py" if option == "udf_module_paths" else "f.duckdb_extension"))

    def digest(contents: bytes) -> str:
        # a file's digest is kept for as long as its size, times and inode stay the same: each
        # version is written a tick of a filesystem's coarse clock after the last (a filesystem
        # without fine-grained timestamps gives two writes within a tick the same times)
        time.sleep(0.01)
        with open(path, "wb") as f:
            f.write(contents)
        ctx = Context()
        return stable_digest(
            SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([ids_file])),), "select 1", **{option: [path]})
        )

    assert digest(b"one") == digest(b"one") != digest(b"two")
