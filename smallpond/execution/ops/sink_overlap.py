"""No output of a job overlaps its inputs, the data root or a job folder: checked when the job is planned.

An output path (a sink's destination, or a node's own ``output_path=``) equal to, inside or
containing an input path of the job (any data source's files, folders or globs, of this plan or
of an earlier computation of the session), equal to or containing the data root, or inside a job
folder is refused with a :class:`~smallpond.errors.PlanError` naming the node, its call site and
the input (:func:`check_overlap`): a job never reads its own earlier output, nor publishes over
its input or its checkpoints. A folder of its own directly under the data root is allowed (no job
ever looks there), and so is the current job's ``output/`` folder; smallpond's own records
folder there (``.smallpond``) is not.

Two sinks of one plan never share a destination, nor publish one inside the other
(:func:`check_sink_destinations`): each sink's preparation removes the staged folders it finds
beside its destination that this job left (an earlier run's), so the two would remove each
other's staged result, and an overwrite of the outer folder would swap out the inner result.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Dict, Optional, Sequence

from smallpond.errors import PlanError
from smallpond.execution.runtime import SMALLPOND_DIRNAME
from smallpond.logical.base import node_at
from smallpond.logical.dataset import _WILDCARD, DataSet, PartitionedDataSet

_JOB_FOLDER = re.compile(r"\d{4}(-\d\d){5}\..+")


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or under it (both normalised alike by the caller)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_sink_destinations(nodes: Sequence) -> None:
    """Refuse (PlanError) two sinks among ``nodes`` (the sink nodes of one plan) whose destinations
    are the same folder or one inside the other, naming both sinks and where they were created."""
    seen = []
    for node in nodes:
        dest = os.path.realpath(node.output_path)
        for other, where in seen:
            if dest == where:
                how = f"both publish into {node.output_path}"
                why = "each one's preparation would remove the result the other staged beside it"
            elif inside(dest, where) or inside(where, dest):
                how = f"publish one inside the other ({other.output_path} and {node.output_path})"
                why = "publishing the outer folder would swap the inner result out of place"
            else:
                continue
            raise PlanError(
                f"{node_at(other)} and {node_at(node)} {how}: {why}. Give each sink a folder of its own, side by side"
            )
        seen.append((node, dest))


def _pattern_reaches(pattern: str, dest: str, recursive: bool) -> bool:
    """Whether a glob pattern could match a file directly inside ``dest`` (segment by segment)."""
    pat = [s for s in pattern.split(os.sep) if s][:-1]  # the directory part; any file name may match
    segs = [s for s in dest.split(os.sep) if s]

    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(segs)
        if pat[i] == "**" and recursive:
            return any(match(i + 1, k) for k in range(j, len(segs) + 1))
        return j < len(segs) and fnmatch.fnmatchcase(segs[j], pat[i]) and match(i + 1, j + 1)

    return match(0, 0)


def check_overlap(
    node, datasets: Sequence[DataSet], data_root: str, output_root: Optional[str] = None, readers: Optional[Dict[int, str]] = None
) -> None:
    """Refuse (PlanError) an output path equal to, inside or containing an input or the data root.

    Under the data root, a folder of its own is allowed (no job looks there) and so is the current
    job's ``output/`` folder (made for outputs); any other place in a job folder is refused.
    ``readers``: id(input dataset) -> the node that reads it, named in the message (in a session,
    it may be a frame computed earlier, not the one being written).
    """
    dest = os.path.realpath(node.output_path)
    root = os.path.realpath(data_root)
    if inside(root, dest):
        raise PlanError(node._msg(f"output path {node.output_path} is or contains the job data root {data_root}"))
    if inside(dest, root) and not (output_root and inside(dest, os.path.realpath(output_root))):
        first = os.path.relpath(dest, root).split(os.sep)[0]
        if _JOB_FOLDER.fullmatch(first):
            raise PlanError(node._msg(f"output path {node.output_path} is inside job folder {os.path.join(data_root, first)}"))
        own = os.path.join(root, SMALLPOND_DIRNAME)
        if inside(dest, own):
            raise PlanError(node._msg(f"output path {node.output_path} is inside {own}, where smallpond keeps its records"))
    for ds in datasets:
        reader = (readers or {}).get(id(ds))
        for sub in ds.datasets if isinstance(ds, PartitionedDataSet) else [ds]:
            problem = _overlap_with(node, sub, dest)
            if problem is not None:
                by = f" (read by {reader}, an input of this job or of an earlier computation of this session)" if reader else ""
                raise PlanError(node._msg(f"output path {node.output_path} {problem}{by}"))


def _overlap_with(node, ds: DataSet, dest: str) -> Optional[str]:
    """How ``dest`` overlaps input ``ds`` (the end of a sentence), or None."""
    for path, pattern in ds._patterns():  # a folder given as an input path stands for its files
        if pattern is None and os.path.isdir(path):
            folder = os.path.realpath(path)
            if dest == folder or (ds.recursive and inside(dest, folder)):
                return f"is inside input folder {path!r}"
    patterns = [p for p in ds.absolute_paths if _WILDCARD.search(p)]
    for p in patterns:
        if _pattern_reaches(os.path.abspath(p), dest, ds.recursive) or _pattern_reaches(os.path.realpath(p), dest, ds.recursive):
            return f"is inside input pattern {p!r}: a rerun would read its own output"
    try:
        files = ds.resolved_paths
    except Exception:
        return None
    dirs = {}
    for f in files:
        dirs.setdefault(os.path.dirname(f), f)
    for d, example in dirs.items():
        rd = os.path.realpath(d)
        if inside(rd, dest):
            return f"contains input file {example!r}"
    for f in files if len(files) <= 10_000 else files[:10_000]:
        rf = os.path.realpath(f) if os.path.islink(f) else f
        if inside(dest, rf):
            return f"is inside (or equal to) input path {f!r}"
    return None
