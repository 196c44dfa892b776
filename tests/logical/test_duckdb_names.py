"""Tests of smallpond.logical.duckdb_names: the kept names of DuckDB's own functions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_kept_names_are_the_installed_duckdbs():
    # exactly the installed DuckDB's when it is the release they were read from; another release
    # (pyproject allows duckdb>=2.0) may add or drop a few: nearly all must still be there, so a
    # fresh install of a newer DuckDB does not fail the suite (regenerate _NAMES, see the module)
    import duckdb

    from smallpond.logical.duckdb_names import KEPT_VERSION, _kept_names, _live_names

    kept, live = _kept_names(), _live_names()
    assert {"gcd", "sum", "is distinct from"} <= kept & live
    if duckdb.__version__ == KEPT_VERSION:
        assert kept == live, f"only kept: {sorted(kept - live)[:20]}, only in DuckDB: {sorted(live - kept)[:20]}"
    else:
        assert len(kept & live) >= 0.9 * len(kept), f"DuckDB {duckdb.__version__} lacks: {sorted(kept - live)[:20]}"


def test_a_udf_named_like_a_duckdb_function_warns_without_importing_duckdb():
    # the driver's tasks run in workers: it had not imported DuckDB, and the warning made it do so
    # (~85 ms of CPU at the first node with a Python UDF)
    code = textwrap.dedent(
        """
        import sys, warnings
        from smallpond.logical.node import Context, DataSourceNode, SqlEngineNode
        from smallpond.logical.udf import UDFType, udf

        @udf([UDFType.BIGINT, UDFType.BIGINT], UDFType.BIGINT)
        def gcd(a, b):
            return -1

        ctx = Context()
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select gcd(a, b) from {0}", udfs=[gcd])
        print("WARNED", any("DuckDB built-in" in str(w.message) for w in got), "DUCKDB", "duckdb" in sys.modules)
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "WARNED True DUCKDB False" in done.stdout, done.stdout + done.stderr[-2000:]
