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
Nor does a sink publish inside (or around) a result published earlier: a sink of an earlier
computation of the session (:func:`check_earlier_sinks`, naming both sinks) or any folder holding a
smallpond result the data root has a record of (:func:`check_nested_results`, naming the folder, the
job that published it and its record): the outer result would hold a folder no manifest lists, and its next overwrite would be
refused. Two jobs planned before either published (``out`` and ``out/sub2`` at the same instant)
both pass that check: it is made again when each publishes, under locks that make the two take
turns (:func:`nested_since_planned`; :mod:`~smallpond.execution.ops.sink_lock`), and the second
is refused, publishing nothing, naming the first's folder, job and record. A job killed while it
published (its result moved in, its record not written yet) is seen by its publication mark
(:func:`pending_nested`, :mod:`~smallpond.execution.ops.sink_pending`): a folder inside or around its
destination is refused, naming the job and saying to rerun it. The same destination as an earlier sink of the session is an overwrite by the usual rules
(a notebook cell run again), except when that sink's result is an input of the new sink: reading a
folder and overwriting it in one computation is refused, as it is for a data source's folder
(:func:`check_overlap`), and the earlier frame's result would be gone.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Dict, Optional, Sequence, Tuple

from smallpond.errors import PlanError
from smallpond.execution.ops import sink_pending, sink_record
from smallpond.execution.runtime import JOB_FOLDER_NAME, SMALLPOND_DIRNAME
from smallpond.logical.base import node_at
from smallpond.logical.dataset import _WILDCARD, DataSet, PartitionedDataSet
from smallpond.logical.graph import topological_order

#: a job folder's name under the data root (the runtime's
#: :data:`~smallpond.execution.runtime.JOB_FOLDER_NAME`, under the name this module has given it)
JOB_FOLDER = JOB_FOLDER_NAME


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


def check_earlier_sinks(nodes: Sequence, earlier: Sequence) -> None:
    """Refuse (PlanError) a sink among ``nodes`` (the new sinks of a plan) that publishes inside
    or around the destination of a sink of ``earlier`` (planned by an earlier computation of the
    session), or that overwrites the destination of one whose result is its own input; naming
    both sinks and where they were created."""
    for node in nodes:
        dest, upstream = os.path.realpath(node.output_path), None
        for other in earlier:
            where = os.path.realpath(other.output_path)
            if dest == where:
                if node.mode != "overwrite":
                    continue  # an append keeps the earlier files; the other modes refuse or skip
                if upstream is None:
                    upstream = {id(n) for n in topological_order([node], lambda x: x.input_deps)}
                if id(other) not in upstream:
                    continue  # the same folder written again: an overwrite by the usual rules
                raise PlanError(
                    f"{node_at(node)} would overwrite {node.output_path}, which holds the result of {node_at(other)}, "
                    "computed earlier in this session and an input of this sink: overwriting a folder that the "
                    "computation reads from is refused (the files it reads would be gone, and so would that frame's "
                    "result). Write into another folder"
                )
            if inside(dest, where) or inside(where, dest):
                raise PlanError(
                    f"{node_at(node)} would publish {node.output_path} "
                    f"{'inside' if inside(dest, where) else 'around'} {other.output_path}, the destination of "
                    f"{node_at(other)} computed earlier in this session: one result would hold the other's folder, "
                    "which its manifest does not list, so its next overwrite would be refused. Give each sink a "
                    "folder of its own, side by side"
                )


def recorded_result(folder: str, records_dir: str) -> Optional[str]:
    """The record's path if ``folder`` holds a smallpond result this data root recorded (its
    manifest is the one the record names), else None."""
    manifest = os.path.join(folder, sink_record.MANIFEST)
    if not os.path.lexists(manifest):
        return None
    rec = sink_record.load(records_dir, folder)
    if rec is None or sink_record.identity(manifest) != rec.manifest:
        return None
    return sink_record.record_path(records_dir, folder)


def _recorded_under(dest: str, records_dir: str) -> Optional[Tuple[str, str]]:
    """A folder strictly inside ``dest`` that holds a recorded result, and its record; looked up
    among the records (never by walking the user's folder), and only if ``dest`` has a folder."""
    try:
        if not any(e.is_dir(follow_symlinks=False) for e in os.scandir(dest)):
            return None
    except OSError:
        return None
    for folder in sink_record.claimed_destinations(records_dir):
        if folder != dest and inside(folder, dest):
            record = recorded_result(folder, records_dir)
            if record is not None:
                return folder, record
    return None


def nested_result(dest: str, records_dir: str) -> Optional[Tuple[str, str, bool]]:
    """A folder above ``dest`` (True) or inside it (False) that holds a smallpond result this data
    root recorded, with the record's path; None if there is none. ``dest`` itself holding one is
    not nesting (an overwrite or append by the usual rules)."""
    dest = os.path.realpath(dest)
    folder = os.path.dirname(dest)
    while True:
        record = recorded_result(folder, records_dir)
        if record is not None:
            return folder, record, True
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    found = _recorded_under(dest, records_dir)
    return (found[0], found[1], False) if found is not None else None


def published_by(folder: str, records_dir: str) -> str:
    """Who published the recorded result in ``folder``, for an error: ``"by job {its folder}"``
    (records keep the publishing job's folder), or ``"by another job"`` for a record written
    before they did."""
    rec = sink_record.load(records_dir, folder)
    return f"by job {rec.job}" if rec is not None and rec.job else "by another job"


def pending_nested(dest: str, records_dir: str, job_root: Optional[str] = None) -> Optional[Tuple[str, bool, str]]:
    """A destination above ``dest`` (True) or inside it (False) of a publication another job of
    the data root (not the one in ``job_root``) began and has not finished, with who it is and
    what to do (:func:`~smallpond.execution.ops.sink_pending.describe`); None if there is none.
    Until its record is written, a result moved in there is seen by no other check."""
    dest = os.path.realpath(dest)
    for p in sink_pending.pending(records_dir, exclude=job_root):
        for folder in p.destinations:
            if folder != dest and (inside(dest, folder) or inside(folder, dest)):
                return folder, inside(dest, folder), sink_pending.describe(p, folder)
    return None


def _side_by_side(who: str) -> str:
    """The rest of a refusal to nest with a publication another job has not finished (``who``:
    :func:`~smallpond.execution.ops.sink_pending.describe`), at planning and at publication alike."""
    return (
        f"{who}. One result would hold the other's folder, which its manifest does not list: give each "
        "result a folder of its own, side by side"
    )


def check_nested_results(node, records_dir: str, job_root: Optional[str] = None) -> None:
    """Refuse (PlanError) a sink whose destination is inside, or contains, a folder holding a
    smallpond result published earlier (by any job of this data root), naming that folder and
    the record of it; or a folder another job (not the one in ``job_root``) began publishing into
    and has not finished (:func:`pending_nested`). The destination itself holding one is an overwrite or append by the usual
    rules (:func:`~smallpond.execution.ops.sink.check_destination`). Checked again when the job
    publishes (:func:`nested_since_planned`): a job of the data root may publish there meanwhile."""
    found = nested_result(node.output_path, records_dir)
    if found is None:
        pending = pending_nested(node.output_path, records_dir, job_root)
        if pending is not None:
            folder, above, who = pending
            where = "is inside" if above else "contains"
            raise PlanError(node._msg(f"output path {node.output_path} {where} {folder}: {_side_by_side(who)}"))
        return
    folder, record, above = found
    by = published_by(folder, records_dir)
    if above:
        raise PlanError(
            node._msg(
                f"output path {node.output_path} is inside {folder}, which holds a smallpond result published "
                f"earlier {by} (its record: {record}): that result would hold a folder its manifest does not list, "
                "and its next overwrite would be refused. Choose a folder outside it"
            )
        )
    raise PlanError(
        node._msg(
            f"output path {node.output_path} contains {folder}, which holds a smallpond result published "
            f"earlier {by} (its record: {record}): publishing around it would put one result inside another. "
            "Choose a folder that does not contain it"
        )
    )


def nested_since_planned(dest: str, records_dir: str, job_root: Optional[str] = None) -> Optional[str]:
    """Why a publication into ``dest`` is refused, now that it holds the publication locks of
    ``dest`` and of the folders above it (:mod:`~smallpond.execution.ops.sink_lock`): a folder
    above or inside it holds a result another job of the data root published since this job
    checked when planned (:func:`check_nested_results`), say at the same instant, or is the
    destination of a publication another job (not the one in ``job_root``) began and did not
    finish (killed: :func:`pending_nested`). Names that folder, the job and its record or
    journal; None if nothing nests."""
    found = nested_result(dest, records_dir)
    if found is None:
        pending = pending_nested(dest, records_dir, job_root)
        if pending is None:
            return None
        folder, above, who = pending
        where = f"inside {folder}" if above else f"which contains {folder}"
        return f"cannot publish into {dest}, {where}: {_side_by_side(who)}"
    folder, record, above = found
    by = published_by(folder, records_dir)
    where = f"{folder}, a folder above it, holds" if above else f"it contains {folder}, which holds"
    return (
        f"cannot publish into {dest}: {where} a smallpond result published since this job was planned, {by} "
        f"(its record: {record}); one result would hold the other's folder, which its manifest does not list. "
        "Give each result a folder of its own, side by side"
    )


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
        if JOB_FOLDER.fullmatch(first):
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
