"""Sort mock URLs with the DataFrame API (the DataFrame twin of ``sort_mock_urls.py``).

python examples/sort_mock_urls_v2.py -i tests/data/mock_urls/*.tsv -o sorted_urls/ -n 4

(from the repository's root; the mock data is written on first use). It prints the schema of
the result before running, then where the sorted files went and their first rows.
"""

from __future__ import annotations

import argparse
import os
from typing import List

import smallpond
from smallpond.dataframe import Session


def sort_mock_urls_v2(sp: Session, input_paths: List[str], output_path: str, npartitions: int, verbose: bool = False) -> None:
    df = sp.read_csv(input_paths, schema={"urlstr": "varchar", "valstr": "varchar"}, delim=r"\t")
    df = df.repartition(npartitions)
    df = df.map(r"split_part(urlstr, '/', 1) as host, split_part(urlstr, ' ', 1) as url, from_base64(valstr) AS payload")
    df = df.repartition(npartitions, hash_by="host")
    df = df.partial_sort(by=["host"])
    if verbose:
        print(f"sorting {len(input_paths)} file(s) into {npartitions} partitions; the result will be")
        print(repr(df))  # str(df) is the node name, as upstream; repr shows the schema
    df.write_parquet(output_path)
    if verbose:
        result = sp.read_parquet(output_path)  # the folder's .MANIFEST.txt lists the files
        print(f"wrote {result.count()} rows in {len(os.listdir(output_path)) - 1} file(s) to {os.path.abspath(output_path)}")
        result.show(5)


if __name__ == "__main__":
    from mock_urls import DEFAULT_PATTERN, input_files

    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--input_paths", nargs="+", default=[DEFAULT_PATTERN])
    parser.add_argument("-o", "--output_path", type=str, default="sorted_urls/")
    parser.add_argument("-n", "--npartitions", type=int, default=10)
    args = parser.parse_args()
    sp = smallpond.init()
    sort_mock_urls_v2(sp, input_files(args.input_paths), args.output_path, args.npartitions, verbose=True)
    sp.shutdown()
