"""Shuffle training data: every row to a random partition, then a random order within each.

Run: python examples/shuffle_training_data.py INPUT_DIR_OR_GLOB OUTPUT_DIR [-n 8]
(``--make-data DIR`` first writes small sample shards there).

Training on data in file order repeats whatever order it was written in (by source, by time);
a global random shuffle breaks that. Each row is sent to one of ``n`` partitions at random
(``random_shuffle``), each partition is put in a random order, and the result is written as ``n``
shards of about equal size. The random numbers come from the job's seed: rerunning the same job
(same ``SP_JOBID``) gives the same order.
"""

from __future__ import annotations

import argparse
import os

import smallpond


def make_data(directory: str, shards: int = 4, rows: int = 5_000) -> str:
    """Shards of fake training examples, written in a very non-random order (sorted by label)."""
    import duckdb

    os.makedirs(directory, exist_ok=True)
    for s in range(shards):
        duckdb.sql(
            f"""COPY (SELECT {s} * {rows} + range AS example_id, (range * 7 + {s}) % 10 AS label,
                      'text of example ' || ({s} * {rows} + range) AS text
                      FROM range({rows}) ORDER BY label) TO '{directory}/shard-{s}.parquet'"""
        )
    return os.path.join(directory, "*.parquet")


def shuffle(sp, inputs: str, output: str, npartitions: int) -> None:
    df = sp.read_parquet(inputs)
    df = df.repartition(npartitions, by_rows=True).random_shuffle()
    df.write_parquet(output)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", nargs="?", help="Parquet files (a directory or a glob)")
    p.add_argument("output", nargs="?", default="shuffled/")
    p.add_argument("-n", "--npartitions", type=int, default=8)
    p.add_argument("--make-data", default=None, help="write sample shards into this directory and shuffle them")
    args = p.parse_args()
    inputs = make_data(args.make_data) if args.make_data else args.input
    if not inputs:
        p.error("give an input (or --make-data DIR)")
    if os.path.isdir(inputs):
        inputs = os.path.join(inputs, "*.parquet")
    sp = smallpond.init()
    try:
        shuffle(sp, inputs, args.output, args.npartitions)
    finally:
        sp.shutdown()
    print(f"shuffled {inputs} into {args.output}")


if __name__ == "__main__":
    main()
