"""Sort mock URLs with the DataFrame API (the DataFrame twin of ``sort_mock_urls.py``).

python examples/sort_mock_urls_v2.py -i tests/data/mock_urls/*.tsv -o sorted_urls/ -n 4
"""

from __future__ import annotations

import argparse
from typing import List

import smallpond
from smallpond.dataframe import Session


def sort_mock_urls_v2(sp: Session, input_paths: List[str], output_path: str, npartitions: int) -> None:
    df = sp.read_csv(input_paths, schema={"urlstr": "varchar", "valstr": "varchar"}, delim=r"\t")
    df = df.repartition(npartitions)
    df = df.map(r"split_part(urlstr, '/', 1) as host, split_part(urlstr, ' ', 1) as url, from_base64(valstr) AS payload")
    df = df.repartition(npartitions, hash_by="host")
    df = df.partial_sort(by=["host"])
    df.write_parquet(output_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--input_paths", nargs="+", required=True)
    parser.add_argument("-o", "--output_path", type=str, required=True)
    parser.add_argument("-n", "--npartitions", type=int, default=10)
    args = parser.parse_args()
    sp = smallpond.init()
    sort_mock_urls_v2(sp, **vars(args))
    sp.shutdown()
