"""What a sink publishes: its input files, whole or only some of their rows, under names that do
not collide, and (``remove_empty_parquet``) without the Parquet files that hold no rows.

A file the job took from the task cache is the entry's inode, and possibly another job's result:
it is never published as it is (:func:`linked_from_cache`, :func:`own_copies`)."""

from __future__ import annotations

import os
import stat
import uuid
from typing import Dict, List, Optional, Tuple

from smallpond.errors import ParameterError, PlanError
from smallpond.execution.cache import LINKED_MARKER
from smallpond.execution.ops.sink_overlap import inside as _inside
from smallpond.io.filesystem import clone_or_copy
from smallpond.io.paths import listable_name
from smallpond.logical.dataset import DataSet, PartitionedDataSet
from smallpond.logical.structural import unlistable_inputs, unlistable_refusal

#: a source: a file to publish whole (None) or the row spans ``[(begin, end), ...]`` of it to publish
Source = Tuple[str, Optional[List[Tuple[int, int]]]]


def source_files(inputs: List[DataSet]) -> List[str]:
    files: List[str] = []
    for ds in inputs:
        if isinstance(ds, PartitionedDataSet):
            files.extend(ds.paths)
        else:
            files.extend(ds.resolved_paths)
    return files


def sources_of(inputs: List[DataSet]) -> List[Source]:
    """What to publish: (file, None) to publish a whole file, (file, [(begin, end), ...]) for
    only some of its rows. Partitions split by rows share files: a file whose ranges cover it
    exactly once is published once and whole, never once per partition."""
    order: List[str] = []
    ranges: Dict[str, List] = {}
    for ds in inputs:
        for d in ds.datasets if isinstance(ds, PartitionedDataSet) else [ds]:
            rr = getattr(d, "_resolved_row_ranges", None)
            if rr is None or all(r.whole_file for r in rr):
                for p in d.resolved_paths:
                    order.append(p)
                    ranges.setdefault(p, []).append(None)
                continue
            for r in rr:
                if r.path not in ranges:
                    order.append(r.path)
                ranges.setdefault(r.path, []).append(r)
    out: List[Source] = []
    seen = set()
    for p in order:
        parts = ranges[p]
        if any(r is None for r in parts):
            out.append((p, None))  # a whole-file input: published as it is, once per mention
            continue
        if p in seen:
            continue
        seen.add(p)
        spans = sorted((r.begin, r.end) for r in parts)
        total = parts[0].file_num_rows
        exact = spans[0][0] == 0 and spans[-1][1] == total and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        out.append((p, None if exact else spans))
    return out


def manifest_files(inputs: List[DataSet], where: str) -> List[str]:
    """The files a manifest-only sink lists: each input file once per mention, and a file that
    partitions split by rows once, whole, when their rows cover it exactly (every partition of a
    split); listing it once per partition read every row once per partition. ``where`` (the sink
    and its call site) names a sink that cannot list its inputs: a manifest lists whole files,
    and some of a file's rows are not one."""
    files = []
    for path, spans in sources_of(inputs):
        if spans is not None:
            raise ParameterError(
                f"{where}: a manifest (type='manifest') lists whole files, and its input is only rows "
                f"{', '.join(f'{b}-{e - 1}' for b, e in spans)} of {path!r}: use type='link' or 'copy', "
                "which publish those rows"
            )
        files.append(path)
    return files


def linked_from_cache(path: str, job_root: str, memo: Dict[str, bool]) -> bool:
    """Whether ``path`` is a hard link to a file of a task cache entry: it lies in an output
    directory of this job that the cache filled (one holding
    :data:`~smallpond.execution.cache.LINKED_MARKER`). Such a file is the inode of the entry and of
    every other job that computed or reused it, so publishing it by a link would make two results
    one file. ``memo``: folder -> answer, shared by the files of one sink (a stat per folder)."""
    root = os.path.abspath(job_root)
    folder = os.path.dirname(os.path.abspath(path))
    walked, hit = [], False
    while folder != root and _inside(folder, root):
        known = memo.get(folder)
        if known is not None:
            hit = known
            break
        walked.append(folder)
        if os.path.lexists(os.path.join(folder, LINKED_MARKER)):
            hit = True
            break
        folder = os.path.dirname(folder)
    for f in walked:
        memo[f] = hit
    return hit


def own_copies(files: List[str], job_root: str) -> int:
    """Give this job a file of its own in place of each of ``files`` that is a task-cache entry's
    inode linked into its output (:func:`linked_from_cache`) and has another link: a copy (a
    reflink where the filesystem has them) renamed over it, so that a manifest listing it never
    lists another job's result, nor the entry, and editing one result in place never changes
    another. A file without another link is the job's own already (a rerun finds its copies).
    Returns how many files were copied."""
    memo: Dict[str, bool] = {}
    copied = 0
    for f in files:
        if not linked_from_cache(f, job_root, memo):
            continue
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            continue
        folder, name = os.path.split(f)
        tmp = os.path.join(folder, f".{name}.own-{uuid.uuid4().hex[:8]}")
        try:
            clone_or_copy(f, tmp)
            os.replace(tmp, f)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        copied += 1
    return copied


def write_rows(src: str, spans: List[Tuple[int, int]], dst: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.io.arrow import read_parquet_file

    table = read_parquet_file(src)
    pq.write_table(pa.concat_tables([table.slice(b, e - b) for b, e in spans]), dst)


def check_listable(sink) -> None:
    """Refuse (PlanError, naming the sink, its call site and the file) a ``type="manifest"`` sink
    whose sources hold a file whose path its manifest cannot list; the files of globs and folders
    are known now, at plan time (names given as they are were refused when the sink was built)."""
    bad = unlistable_inputs(sink, resolve=True)
    if bad:
        raise PlanError(sink._msg(unlistable_refusal(sink, bad[0])))


def dest_names(files: List[str], token: Optional[str] = None) -> List[str]:
    """The names ``files`` are published under: their own, with every character a manifest line
    cannot hold (a control character, a line break) replaced by ``_``
    (:func:`~smallpond.io.paths.listable_name`), and numbered when two would be the same or for an
    append (``token``: its names never meet earlier ones)."""
    names = [listable_name(os.path.basename(f)) for f in files]
    if token is None and len(set(names)) == len(names):
        return names
    out = []
    for idx, n in enumerate(names):
        stem, suffix = os.path.splitext(n)
        out.append(f"{stem}.{token}-{idx}{suffix}" if token else f"{stem}.{idx}{suffix}")
    return out


def without_empty_parquet(sources: List[Source]) -> List[Source]:
    """The sources that hold rows, for a job run with ``remove_empty_parquet``: a Parquet file
    whose footer counts no rows (an empty partition's placeholder, a filter that kept nothing) is
    not published. If none holds rows, the first stays, so the result still has its columns.
    Files that are not Parquet, or whose footer cannot be read, are kept."""
    import pyarrow.parquet as pq

    def has_rows(source: Source) -> bool:
        path, spans = source
        if spans is not None:
            return any(end > begin for begin, end in spans)
        if not path.endswith(".parquet"):
            return True
        try:
            return pq.read_metadata(path).num_rows > 0
        except Exception:  # not ours to judge: published as it is
            return True

    kept = [s for s in sources if has_rows(s)]
    return kept or sources[:1]
