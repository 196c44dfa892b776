"""Deduplicate documents by content: keep one document (the lowest id) per distinct content.

Run: python examples/dedup_documents.py INPUT_DIR_OR_GLOB OUTPUT_DIR [-n 8]
(``--make-data DIR`` first writes sample documents there, a third of them duplicates).

Each document gets a hash of its content (SQL ``md5``); a hash partition by that hash brings all
copies of a content into the same partition, where one query keeps the first copy. One pass over
the data, all in DuckDB: the contents are never loaded into Python.
"""

from __future__ import annotations

import argparse
import os

import smallpond

DEDUP_SQL = """
select * exclude (content_hash) from {0}
qualify row_number() over (partition by content_hash order by doc_id) = 1
"""


def make_data(directory: str, files: int = 3, docs: int = 3_000) -> str:
    """Documents where every third one repeats an earlier document's content under a new id and url."""
    import duckdb

    os.makedirs(directory, exist_ok=True)
    for f in range(files):
        duckdb.sql(
            f"""COPY (SELECT {f} * {docs} + range AS doc_id,
                      'https://example.com/' || ({f} * {docs} + range) AS url,
                      'document body ' || (CASE WHEN range % 3 = 2 THEN (range * 13) % {docs * files // 2}
                                                ELSE {f} * {docs} + range END) AS content
                      FROM range({docs})) TO '{directory}/docs-{f}.parquet'"""
        )
    return os.path.join(directory, "*.parquet")


def dedup(sp, inputs: str, output: str, npartitions: int) -> None:
    df = sp.read_parquet(inputs)
    df = df.map("*, md5(content) as content_hash")
    df = df.repartition(npartitions, hash_by="content_hash")
    df = sp.partial_sql(DEDUP_SQL, df)
    df.write_parquet(output)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", nargs="?", help="Parquet files with doc_id, url, content (a directory or a glob)")
    p.add_argument("output", nargs="?", default="deduped/")
    p.add_argument("-n", "--npartitions", type=int, default=8)
    p.add_argument("--make-data", default=None, help="write sample documents into this directory and dedup them")
    args = p.parse_args()
    inputs = make_data(args.make_data) if args.make_data else args.input
    if not inputs:
        p.error("give an input (or --make-data DIR)")
    if os.path.isdir(inputs):
        inputs = os.path.join(inputs, "*.parquet")
    sp = smallpond.init()
    try:
        dedup(sp, inputs, args.output, args.npartitions)
    finally:
        sp.shutdown()
    print(f"deduplicated {inputs} into {args.output}")


if __name__ == "__main__":
    main()
