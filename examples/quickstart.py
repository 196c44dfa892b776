"""The README quick start: per-ticker min and max price over a Parquet file.

Run: python examples/quickstart.py [prices.parquet] [output_dir]
(without arguments it first writes a small prices.parquet into a temp directory).
"""

from __future__ import annotations

import os
import sys
import tempfile

import smallpond


def make_prices(path: str, rows: int = 100_000) -> None:
    import duckdb

    duckdb.sql(
        f"COPY (SELECT 'T' || (range % 50) AS ticker, (hash(range) % 100000) / 100.0 AS price FROM range({rows})) TO '{path}'"
    )


def main(prices: str, output: str):
    sp = smallpond.init()
    df = sp.read_parquet(prices)
    df = df.repartition(3, hash_by="ticker")
    df = sp.partial_sql("SELECT ticker, min(price), max(price) FROM {0} GROUP BY ticker", df)
    df.write_parquet(output)
    result = df.to_pandas()
    print(result)
    sp.shutdown()
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1:
        prices_path = sys.argv[1]
        out_dir = sys.argv[2] if len(sys.argv) > 2 else "output/"
    else:
        tmp = tempfile.mkdtemp(prefix="smallpond-quickstart-")
        prices_path = os.path.join(tmp, "prices.parquet")
        out_dir = os.path.join(tmp, "output")
        make_prices(prices_path)
    main(prices_path, out_dir)
