"""The README quick start as a whole process, against the same query in one plain DuckDB process.

Both sides are timed as a user sees them: ``python script.py`` from start to exit, including the
interpreter, imports, reading ``prices.parquet``, the per-ticker min/max, writing Parquet (the same
format on both sides: smallpond's default writer options, ZSTD level 3 without dictionary pages),
and printing the result as a pandas frame. Runs are interleaved and medians reported.

    python benchmarks/quickstart.py --rows 1M --repeat 3 [--append-results]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    Timings,
    add_common_arguments,
    append_results,
    compile_bytecode,
    parse_count,
    print_header,
    remove,
)
from smallpond.io.parquet import ParquetWriterOptions  # noqa: E402

SMALLPOND_SCRIPT = """
import smallpond
sp = smallpond.init(data_root={data_root!r})
df = sp.read_parquet({prices!r})
df = df.repartition(3, hash_by="ticker")
df = sp.partial_sql("SELECT ticker, min(price), max(price) FROM {{0}} GROUP BY ticker", df)
df.write_parquet({output!r})
print(df.to_pandas())
"""

# the same work in DuckDB, writing the same Parquet format as smallpond's write_parquet (its
# default writer options: ZSTD level 3, no dictionary pages). The query runs twice, once for the
# file and once for the printout, as it did when this script used rel.write_parquet and rel.df()
DUCKDB_SCRIPT = """
import duckdb
query = "SELECT ticker, min(price), max(price) FROM read_parquet({prices!r}) GROUP BY ticker"
duckdb.execute(f"COPY ({{query}}) TO {output!r} ({writer_options})")
print(duckdb.sql(query).df())
"""


def make_prices(path: str, rows: int) -> None:
    import duckdb

    if os.path.exists(path):
        import pyarrow.parquet as pq

        if pq.read_metadata(path).num_rows == rows:
            return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    duckdb.sql(
        f"COPY (SELECT 'T' || lpad((hash(range) % 500)::VARCHAR, 3, '0') AS ticker, (hash(range * 7) % 1000000) / 100.0 AS price "
        f"FROM range({rows})) TO '{path}' (FORMAT PARQUET)"
    )


def run_script(code: str, cwd: str) -> float:
    env = dict(os.environ, SP_PROGRESS="0")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"script failed:\n{proc.stderr}")
    return elapsed


def validate(output_sp: str, output_duck: str) -> None:
    import duckdb

    a = duckdb.sql(f"SELECT * FROM read_parquet('{output_sp}/*.parquet') ORDER BY 1").fetchall()
    b = duckdb.sql(f"SELECT * FROM read_parquet('{output_duck}') ORDER BY 1").fetchall()
    if a != b:
        raise AssertionError(f"smallpond and DuckDB disagree: {len(a)} vs {len(b)} rows")


def run(rows: int, repeat: int, data_dir: str, check: bool = True) -> Timings:
    prices = os.path.join(data_dir, "quickstart", f"prices-{rows}.parquet")
    make_prices(prices, rows)
    work = os.path.join(data_dir, "quickstart", "work")
    os.makedirs(work, exist_ok=True)
    compile_bytecode()
    timings = Timings()
    for i in range(repeat):
        out_sp = os.path.join(work, f"sp-out-{i}")
        out_duck = os.path.join(work, f"duck-out-{i}.parquet")
        remove(out_sp)
        remove(out_duck)
        duck_code = DUCKDB_SCRIPT.format(prices=prices, output=out_duck, writer_options=ParquetWriterOptions().duckdb())
        timings.add("duckdb", run_script(duck_code, work))
        code = SMALLPOND_SCRIPT.format(prices=prices, output=out_sp, data_root=os.path.join(work, "sp-data"))
        timings.add("smallpond", run_script(code, work))
        if check:
            validate(out_sp, out_duck)
        remove(os.path.join(work, "sp-data"))
    return timings


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=parse_count, default=1_000_000, help="rows in prices.parquet (default 1M)")
    add_common_arguments(p)
    args = p.parse_args(argv)
    print_header("quick start (whole process)", {"rows": args.rows, "repeat": args.repeat})
    t = run(args.rows, args.repeat, args.data_dir, args.validate)
    ratio = t.median("smallpond") / t.median("duckdb")
    print(f"smallpond: {t.describe('smallpond')}")
    print(f"DuckDB:    {t.describe('duckdb')}")
    print(f"ratio smallpond/DuckDB: {ratio:.2f}x")
    if args.append_results:
        append_results(
            "quickstart",
            f"{args.rows:,} rows",
            f"{t.median('smallpond'):.2f}s",
            f"{t.median('duckdb'):.2f}s",
            f"{ratio:.2f}x",
        )


if __name__ == "__main__":
    main()
