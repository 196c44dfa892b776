"""What an attempt looks at in its files: bytes read and written (statistics), the input files a
failure names, and, after a failure, the damaged intermediates whose producers must run again.

Nothing here changes a file: the attempt runner (:mod:`~smallpond.execution.attempt`) and the
scheduler ask. Task outputs are ``{staging|output}/{node}/{task key}.{attempt}.{token}/``
(:data:`ATTEMPT_DIR`), which is how a file is traced back to the task that wrote it.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Dict, List, Optional

from smallpond.execution.runtime import RuntimeContext
from smallpond.logical.dataset import DataSet, PartitionedDataSet

#: the name of an attempt's output directory: ``{task key}.{attempt}.{token}``
ATTEMPT_DIR = re.compile(r"(?P<key>.+-\d{6,})\.\d+\.[0-9a-f]+")


def bytes_written(ds: DataSet) -> int:
    """Bytes of the files a task wrote (one stat per file)."""
    total = 0
    for d in ds.datasets if isinstance(ds, PartitionedDataSet) else [ds]:
        for p in d.paths if d.root_dir is None else ():
            try:
                total += os.stat(p).st_size
            except OSError:
                pass
    return total


@functools.lru_cache(maxsize=100_000)
def _input_size(path: str) -> int:
    """An input file's size, taken once per process (for the ``read`` statistic only): the tasks
    of a node mostly read the same few files, a row range or a partition's share each time."""
    return os.stat(path).st_size


def forget_input_sizes() -> None:
    """Take each input file's size again (a worker kept for another job: its files may have changed)."""
    _input_size.cache_clear()


def bytes_read(inputs: List[DataSet]) -> int:
    """Bytes of the input files an attempt was given (a file's share of them for a row range).

    A statistic: each file's size is taken once per process, so a file that changes while the
    job runs (it should not) is counted at the size first seen."""
    total = 0
    for ds in inputs:
        for d in ds.datasets if isinstance(ds, PartitionedDataSet) else [ds]:
            ranges = getattr(d, "_resolved_row_ranges", None)
            try:
                if ranges and not all(r.whole_file for r in ranges):
                    for r in ranges:
                        size = _input_size(r.path)
                        total += size * r.num_rows // r.file_num_rows if r.file_num_rows else size
                    continue
                paths = d.resolved_paths
            except Exception:
                continue
            for p in paths:
                try:
                    total += _input_size(p)
                except OSError:
                    pass
    return total


def input_files(inputs: List[DataSet]) -> List[str]:
    """Up to 10 distinct input files, in order (row ranges of one file name it once)."""
    out: Dict[str, None] = {}
    for ds in inputs:
        try:
            paths = ds.paths if isinstance(ds, PartitionedDataSet) else ds.resolved_paths
        except Exception:
            continue
        for p in paths:
            out[p] = None
            if len(out) >= 10:
                return list(out)
    return list(out)


def producer_key_of(rt: RuntimeContext, path: str) -> Optional[str]:
    """The key of the task that wrote ``path``, if it is a task output in the job folder.

    Task outputs live in ``{staging|output}/{name}/{task key}.{attempt}.{token}/...``
    (:attr:`Task.final_output_abspath` and the attempt's token).
    """
    for root in (rt.staging_root, rt.output_root):
        if path.startswith(root + os.sep):
            parts = path[len(root) + 1 :].split(os.sep)
            if len(parts) <= 2:
                return None
            m = ATTEMPT_DIR.fullmatch(parts[1])  # each attempt writes {key}.{attempt}.{token}
            return m.group("key") if m else parts[1]
    return None


# words of a reader's message about bytes it could not decode (neither DuckDB nor pyarrow names the
# file when a page in the middle of it is damaged)
_DECODE_ERROR_HINTS = ("thrift", "tprotocol", "corrupt", "deserializ", "invalid data", "checksum", "decompress", "magic")
#: bytes of intermediates read whole, at most, to find a damaged page no message names
FULL_READ_BUDGET = 2 << 30


def unreadable_intermediates(rt: RuntimeContext, inputs: List[DataSet], exc: BaseException, limit: int = 10_000) -> List[str]:
    """Input files written by earlier tasks of this job that cannot be read (after a failure).

    Every such Parquet input's footer is read; a file the error message names is read whole
    (damaged pages leave the footer intact). When no footer is bad, no file is named and the
    message is about undecodable bytes, the files are read whole, up to :data:`FULL_READ_BUDGET`
    bytes: a damaged page in the middle of a file (or of a task cache entry, which verification
    reads only at both ends) is found and its producer runs again. Only called when an attempt
    failed, so the reads cost nothing on success.
    """
    import pyarrow.parquet as pq

    from smallpond.io.arrow import read_parquet_file

    text = str(exc)
    bad: List[str] = []
    unnamed: List[str] = []
    seen = 0
    for ds in inputs:
        for d in ds.datasets if isinstance(ds, PartitionedDataSet) else [ds]:
            try:
                paths = d.resolved_paths
            except Exception:
                continue
            for p in paths:
                if seen >= limit:
                    return bad
                if not p.endswith(".parquet") or producer_key_of(rt, p) is None:
                    continue
                seen += 1
                try:
                    if p in text:
                        read_parquet_file(p)
                    else:
                        pq.read_metadata(p)
                        unnamed.append(p)
                except Exception:
                    bad.append(p)
    if bad or not any(h in text.lower() for h in _DECODE_ERROR_HINTS):
        return bad
    budget = FULL_READ_BUDGET
    for p in unnamed:
        try:
            budget -= os.path.getsize(p)
            if budget < 0:
                break
            read_parquet_file(p)
        except Exception:
            bad.append(p)
    return bad
