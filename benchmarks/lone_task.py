"""A lone task on an idle machine (issue 13, item 3): does it get the idle cores, and what for?

The plan users write for a one-partition transform: ``sp.read_parquet(files).map(<projection>)
.write_parquet(out)``, one SQL task over ``--rows`` rows in 5 files. By default (``elastic_threads
="safe"``) that task is offered the idle CPUs as DuckDB threads and keeps them, its plan being a
scan and a projection, whose bytes do not depend on the thread count. Three sides, each a fresh
process per run, interleaved, the time taken inside the process around the write (imports and
start-up are the quick-start benchmark's business):

* ``smallpond``: the default; ``smallpond-1t``: the same with ``elastic_threads=False`` (one thread,
  as before);
* ``duckdb``: ``COPY (<the same projection> FROM read_parquet(files)) TO out`` with smallpond's
  writer options (ZSTD level 3, no dictionary pages, its row-group size), at as many threads as
  smallpond's default gave the task (the machine's CPUs); ``duckdb-1t`` at one thread.

Like for like: the default is compared with DuckDB at the same threads, ``smallpond-1t`` with
``duckdb-1t``. Validation: both smallpond outputs hold the same bytes (the default's threads must
not change them) and the same rows as DuckDB's. CPU seconds (user + system of the process and its
workers) are printed beside each time.

    python -m benchmarks.lone_task --rows 4M --repeat 5 [--row-groups odd|default] [--append-results]

The input's row groups (``--row-groups``): ``odd`` (the default: uneven, smaller than those written,
the hard case, where DuckDB's two threads sometimes join batches into other output row groups; the
task's check then finds it and writes its file again with one thread: "declined" counts those
runs) or ``default`` (DuckDB's 122,880-row groups, as files written by DuckDB or smallpond have).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    Timings,
    add_common_arguments,
    append_results,
    compile_bytecode,
    parse_count,
    print_header,
    remove,
    usable_cpus,
)

#: the projection both sides compute: float arithmetic, string functions, a cast, a CASE
PROJECTION = (
    "id, x * 1.5 + 2 AS y, upper(s) AS s, length(s) AS n, (k % 7)::SMALLINT AS k7, "
    "CASE WHEN x > 0.5 THEN 'hi' ELSE 'lo' END AS band"
)

SMALLPOND_SCRIPT = """
import json, resource, time
import smallpond
sp = smallpond.init(data_root={data_root!r}, num_executors={executors}, elastic_threads={elastic})
df = sp.read_parquet({files!r}).map({projection!r})
start = time.perf_counter()
df.write_parquet({output!r})
took = time.perf_counter() - start
sp.shutdown()
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{"seconds": took, "cpu": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}}))
"""

DUCKDB_SCRIPT = """
import json, resource, time
import duckdb
conn = duckdb.connect()
conn.execute("SET threads = {threads}")
start = time.perf_counter()
conn.execute("COPY (SELECT {projection} FROM read_parquet({files!r})) TO {output!r} ({writer_options})")
took = time.perf_counter() - start
me = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": took, "cpu": me.ru_utime + me.ru_stime}}))
"""


#: the input's row groups: ``odd`` (51,200 to 118,784 rows, each file its own size, smaller than the
#: 122,880 written: DuckDB's two threads then sometimes join them into other output groups, found
#: by the task's check, which writes again with one thread) or ``default`` (DuckDB's own 122,880)
ROW_GROUP_SHAPES = {"odd": lambda i: 50_000 + 17_000 * i, "default": lambda i: 122_880}


def make_input(folder: str, rows: int, row_groups: str = "odd") -> list:
    """5 Parquet files of ``rows`` rows in all, with row groups of ``row_groups``'s sizes
    (:data:`ROW_GROUP_SHAPES`), made once."""
    import duckdb

    files = [os.path.join(folder, f"part{i}.parquet") for i in range(5)]
    stamp = os.path.join(folder, f".rows-{rows}-{row_groups}")
    if os.path.exists(stamp) and all(os.path.exists(f) for f in files):
        return files
    os.makedirs(folder, exist_ok=True)
    conn = duckdb.connect()
    conn.execute("SET threads = 1")
    per = rows // 5
    for i, f in enumerate(files):
        lo, hi = i * per, rows if i == 4 else (i + 1) * per
        conn.execute(
            f"COPY (SELECT range AS id, (hash(range) % 1000000) / 1e6 AS x, 'v' || (hash(range * 3) % 100003)::VARCHAR AS s, "
            f"(range % 1000)::INTEGER AS k FROM range({lo}, {hi})) TO '{f}' (FORMAT PARQUET, ROW_GROUP_SIZE {ROW_GROUP_SHAPES[row_groups](i)})"
        )
    open(stamp, "w").close()
    return files


def run_script(code: str, cwd: str) -> dict:
    env = dict(os.environ, SP_PROGRESS="0")
    env.pop("SP_ELASTIC_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"script failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def digest(folder: str) -> str:
    h = hashlib.sha256()
    for f in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        with open(f, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def same_rows(folder: str, duck_file: str) -> bool:
    import duckdb

    a = duckdb.sql(f"SELECT * FROM read_parquet('{folder}/*.parquet') ORDER BY id").fetchall()
    b = duckdb.sql(f"SELECT * FROM read_parquet('{duck_file}') ORDER BY id").fetchall()
    return a == b


def declined(data_root: str) -> bool:
    """Whether the job under ``data_root`` had a task decline the elastic threads (its log says
    why; here that is the row-group check after the write, so it wrote its file again with one
    thread: DuckDB's batch copy merged a file boundary's batches otherwise with two threads)."""
    for log in glob.glob(os.path.join(data_root, "*", "log", "**", "*.log"), recursive=True):
        with open(log, errors="replace") as f:
            if "threads=" in (text := f.read()) and " declined: " in text:
                return True
    return False


def run(rows: int, repeat: int, data_dir: str, executors: int, check: bool = True, row_groups: str = "odd"):
    from smallpond.io.parquet import ParquetWriterOptions

    suffix = "" if row_groups == "odd" else f"-{row_groups}"
    files = make_input(os.path.join(data_dir, "lone_task", f"in-{rows}{suffix}"), rows, row_groups)
    work = os.path.join(data_dir, "lone_task", "work")
    os.makedirs(work, exist_ok=True)
    compile_bytecode()
    writer_options = ParquetWriterOptions().duckdb()  # as write_parquet's task writes (its row-group size included)
    timings, cpus, declines = Timings(), {}, []
    for i in range(repeat):
        outs = {}
        for side, elastic, threads in (
            ("duckdb", None, executors),
            ("smallpond", '"safe"', None),
            ("duckdb-1t", None, 1),
            ("smallpond-1t", "False", None),
        ):
            out = os.path.join(work, f"{side}-{i}" + (".parquet" if elastic is None else ""))
            remove(out)
            if elastic is None:
                code = DUCKDB_SCRIPT.format(
                    threads=threads, projection=PROJECTION, files=files, output=out, writer_options=writer_options
                )
            else:
                code = SMALLPOND_SCRIPT.format(
                    data_root=os.path.join(work, "sp-data"),
                    executors=executors,
                    elastic=elastic,
                    files=files,
                    projection=PROJECTION,
                    output=out,
                )
            got = run_script(code, work)
            timings.add(side, got["seconds"])
            cpus.setdefault(side, []).append(got["cpu"])
            outs[side] = out
            if side == "smallpond":
                declines.append(declined(os.path.join(work, "sp-data")))
            remove(os.path.join(work, "sp-data"))
        if check:
            if digest(outs["smallpond"]) != digest(outs["smallpond-1t"]):
                raise AssertionError("the default's output bytes differ from one thread's")
            if not same_rows(outs["smallpond"], outs["duckdb"]):
                raise AssertionError("smallpond and DuckDB disagree")
        for out in outs.values():
            remove(out)
    return timings, cpus, declines


def main(argv=None) -> None:
    import statistics

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=parse_count, default=4_000_000, help="rows in all (default 4M)")
    p.add_argument(
        "--row-groups",
        choices=sorted(ROW_GROUP_SHAPES),
        default="odd",
        help="the input files' row groups: odd (uneven, smaller than those written; default) or default (DuckDB's 122,880)",
    )
    add_common_arguments(p)
    args = p.parse_args(argv)
    executors = max(1, args.executors or usable_cpus())
    print_header(
        "lone task: one-partition read_parquet().map().write_parquet()",
        {"rows": args.rows, "row groups": args.row_groups, "repeat": args.repeat, "cpus": executors},
    )
    t, cpus, declines = run(args.rows, args.repeat, args.data_dir, executors, args.validate, args.row_groups)
    cpu = {side: statistics.median(v) for side, v in cpus.items()}
    for side in ("smallpond", "duckdb", "smallpond-1t", "duckdb-1t"):
        print(f"{side:13s} {t.describe(side)}, CPU {cpu[side]:.2f} s")
    print(f"default runs whose task declined the threads (and wrote its file again with one): {sum(declines)} of {len(declines)}")
    r_default = t.median("smallpond") / t.median("duckdb")
    r_one = t.median("smallpond-1t") / t.median("duckdb-1t")
    gain = t.median("smallpond-1t") / t.median("smallpond")
    print(f"ratio smallpond/DuckDB at {executors} threads (default): {r_default:.2f}x")
    print(f"ratio smallpond/DuckDB at 1 thread (elastic_threads=False): {r_one:.2f}x")
    print(
        f"default vs one thread: {gain:.2f}x faster (same output bytes)"
        if args.validate
        else f"default vs one thread: {gain:.2f}x"
    )
    if args.append_results:
        data = f"{args.rows:,} rows, 5 files ({args.row_groups} row groups), one task"
        append_results(
            "lone_task",
            data + f", default ({executors} threads)",
            f"{t.median('smallpond'):.2f} s, CPU {cpu['smallpond']:.2f} s, declined in {sum(declines)} of {len(declines)} runs",
            f"{t.median('duckdb'):.2f} s ({executors} threads), CPU {cpu['duckdb']:.2f} s",
            f"{r_default:.2f}x",
        )
        append_results(
            "lone_task",
            data + ", elastic_threads=False (1 thread)",
            f"{t.median('smallpond-1t'):.2f} s, CPU {cpu['smallpond-1t']:.2f} s",
            f"{t.median('duckdb-1t'):.2f} s (1 thread), CPU {cpu['duckdb-1t']:.2f} s",
            f"{r_one:.2f}x",
        )


if __name__ == "__main__":
    main()
