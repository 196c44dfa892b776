"""The mock URL data of the sort examples: ``urls{i}.tsv`` files of ``{url}\\t{base64 payload}`` lines.

The examples read ``tests/data/mock_urls/*.tsv`` by default; :func:`input_files` writes those files
the first time (so the examples run from a fresh clone as written) and returns the files a list of
paths or patterns stands for.
"""

from __future__ import annotations

import base64
import glob
import os
import random
import string
import sys
from typing import List

DEFAULT_PATTERN = os.path.join("tests", "data", "mock_urls", "*.tsv")


def _word(rnd: random.Random, lo: int, hi: int) -> str:
    return "".join(rnd.choices(string.ascii_letters + string.digits, k=rnd.randint(lo, hi)))


def generate_mock_urls(directory: str, nfiles: int = 6, nlines: int = 60, seed: int = 0) -> List[str]:
    """Write ``urls{i}.tsv`` files of ``{url}\\t{base64 payload}`` lines; return their paths.

    URLs look like ``com.{n}.{m}/{word}.html``; hosts repeat across files (a few hundred of them),
    so a hash partition by host has real work to do.
    """
    os.makedirs(directory, exist_ok=True)
    rnd = random.Random(seed)
    hosts = [f"com.{rnd.randint(10000, 999999)}.{rnd.randint(100, 9999)}" for _ in range(max(1, nfiles * nlines // 3))]
    paths = []
    for i in range(nfiles):
        path = os.path.join(directory, f"urls{i}.tsv")
        with open(path, "w") as f:
            for _ in range(nlines):
                url = f"{rnd.choice(hosts)}/{_word(rnd, 10, 20)}.html"
                payload = base64.b64encode(_word(rnd, 50, 100).encode()).decode()
                f.write(f"{url}\t{payload}\n")
        paths.append(path)
    return paths


def input_files(paths: List[str], nfiles: int = 10, nlines: int = 100) -> List[str]:
    """The files ``paths`` (paths or glob patterns) stand for. If none exists and they all point
    into a ``mock_urls`` directory, the mock data is written there first; otherwise ``paths`` is
    returned as given (the job then fails, naming the missing file)."""
    found = sorted({f for p in paths for f in (glob.glob(p) if glob.has_magic(p) else [p] if os.path.exists(p) else [])})
    if found:
        return found
    dirs = {os.path.dirname(p) for p in paths}
    if len(dirs) == 1 and os.path.basename(next(iter(dirs))) == "mock_urls":
        directory = next(iter(dirs))
        print(f"no input files yet: writing mock URL data to {directory}/", file=sys.stderr)
        generate_mock_urls(directory, nfiles=nfiles, nlines=nlines)
        return sorted(glob.glob(os.path.join(directory, "*.tsv")))
    return list(paths)
