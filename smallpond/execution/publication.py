"""The job's side of publishing its sinks: which prepared sinks go out, their commit records, and
finishing (or abandoning) a publication an earlier run began.

How a publication is staged, journaled and carried out is in :mod:`~smallpond.execution.ops.sink`
and :mod:`~smallpond.execution.ops.sink_journal`. Here: the sinks of the scheduler's state that a
computation prepared and that are not published yet (:func:`unpublished`) are published together
(:func:`publish_prepared`) or, when the computation failed, forgotten and their staged folders
removed (:func:`discard_unpublished`); when the job starts, :func:`finish_earlier` finishes the
publication a crashed run left in its journal, and :func:`tell_abandoned` says, in the log and in
the event log (``publication_abandoned``), when that journal had to be given up.

A sink of a session that overwrites the destination of a sink published by an earlier computation
(allowed: a notebook cell run again) leaves the earlier frame without its files: the state notes it
(``SchedState.overwritten``), and a computation that would read that result is refused, naming both
sinks and the folder (:func:`check_not_overwritten`), rather than failing on a missing file.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from smallpond.common import logger
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.sched_state import SchedState, invalidate, replace_result


def finish_earlier(rt: RuntimeContext):
    """When the job starts: put back the sinks' records an earlier run parked, and finish the
    publication an earlier run began. Returns the :class:`~smallpond.execution.ops.sink_journal.Abandoned`
    journal if it could not be finished (its sinks run again), else None."""
    from smallpond.execution.ops.sink import restore_publication_records
    from smallpond.execution.ops.sink_journal import Abandoned, roll_forward

    restore_publication_records(rt)  # the sinks an earlier run published, if it removed staging/
    outcome = roll_forward(rt)
    return outcome if isinstance(outcome, Abandoned) else None


def tell_abandoned(abandoned, events=None) -> None:
    """Say that an earlier publication was abandoned and why (a warning naming the destinations,
    and a ``publication_abandoned`` event when the event log is open)."""
    logger.warning("{}", abandoned.describe())
    if events is not None:
        events.emit(
            "publication_abandoned",
            destinations=abandoned.destinations,
            missing=[staged for _, staged in abandoned.missing],
            finished=abandoned.finished,
            kept=abandoned.kept,
            rolled_back=abandoned.rolled_back,
            records_removed=abandoned.records_removed,
        )


def unpublished(st: Optional[SchedState], published: Dict[str, Any]) -> List[str]:
    """Keys of the sinks this job ran whose result is not published (``published``: sink key ->
    the dataset it was published as; a sink that ran again is published again)."""
    if st is None:
        return []
    keys = [
        k
        for k in st.executed
        if k in st.done and published.get(k) is not st.done[k] and getattr(st.tasks.get(k), "commits_on_publication", False)
    ]
    return sorted(keys, key=lambda k: int(st.tasks[k].id))


def publish_prepared(rt: RuntimeContext, st: SchedState, published: Dict[str, Any], events=None) -> None:
    """Publish every sink the computation prepared, all at once (see ops/sink.py)."""
    from smallpond.execution.commit import commit_path, commit_record_bytes
    from smallpond.execution.ops.sink import publish, staged_to_final
    from smallpond.execution.ops.sink_columns import warn_if_columns_differ
    from smallpond.execution.ops.sink_journal import Abandoned, roll_forward

    keys = unpublished(st, published)
    if not keys:
        return
    earlier = roll_forward(rt)  # an earlier publication of this session that failed half way
    if isinstance(earlier, Abandoned):
        tell_abandoned(earlier, events)
    prepared, finals = [], {}
    for k in keys:
        task = st.tasks[k]
        finals[k] = staged_to_final(rt, task, st.done[k])
        # where it is published: the clean-up keeps the files a surviving result lists
        data = commit_record_bytes(rt, task, finals[k], st.attempts.get(k, 0), 0.0, output_path=task.node.output_path)
        prepared.append((task, {"path": commit_path(rt, k), "data": data}))
    publish(rt, prepared)
    for k in keys:
        if not st.tasks[k].skip:  # (mode="ignore" over an earlier result: nothing published)
            warn_if_columns_differ(st.tasks[k].node, st.done[k].reads_by_name, finals[k].resolved_paths)
        replace_result(st, k, finals[k])
        published[k] = finals[k]
        st.overwritten.pop(k, None)  # published again: its result is back
    overwrites = {os.path.realpath(st.tasks[k].node.output_path): k for k in keys if st.tasks[k].node.mode == "overwrite"}
    for k in published:
        by = overwrites.get(os.path.realpath(st.tasks[k].node.output_path)) if k in st.tasks else None
        if by is not None and by != k:
            st.overwritten[k] = by
    logger.info("published {} sink(s): {}", len(keys), ", ".join(st.tasks[k].node.output_path for k in keys))


def check_not_overwritten(st: Optional[SchedState], tasks: Dict[str, Any], targets: List[Any]) -> None:
    """Refuse (PlanError) computing ``targets`` when they are, or need, the result of a sink whose
    destination a later sink of the session overwrote since (its files are gone): naming both sinks
    and the folder. ``tasks``: every planned task by key."""
    from smallpond.errors import PlanError
    from smallpond.logical.base import node_at

    if st is None or not st.overwritten:
        return
    stack, seen = [t.key for t in targets], set()
    while stack:
        k = stack.pop()
        if k in seen:
            continue
        seen.add(k)
        by = st.overwritten.get(k)
        if by is not None:
            node, other = tasks[k].node, tasks[by].node
            raise PlanError(
                f"{node_at(node)} published its result into {node.output_path}, but {node_at(other)} overwrote that "
                "folder since, in this session: the result is gone, so it cannot be read (nor anything computed "
                "from it). Call recompute() on the frame to publish it again, or read the folder as it is now"
            )
        if k not in st.done:
            stack.extend(tasks[k].input_keys)


def discard_unpublished(rt: RuntimeContext, st: Optional[SchedState], published: Dict[str, Any]) -> None:
    """Forget sinks that were prepared but not published, and remove what they staged, and
    what the attempts of sinks that did not finish staged (a sink still running when another
    task failed the job is stopped part way, beside the user's destination).

    Kept as they are while a publication journal exists: the next start finishes it.
    """
    from smallpond.execution.ops.sink import staging_path
    from smallpond.execution.ops.sink_journal import journal_path
    from smallpond.execution.ops.sink_leftovers import remove_with_owner

    if st is None or os.path.exists(journal_path(rt)):
        return
    keys = unpublished(st, published)
    for k in keys:
        remove_with_owner(staging_path(rt, st.tasks[k]))
    invalidate(st, keys)
    for k, task in st.tasks.items():
        if k not in st.done and getattr(task, "commits_on_publication", False):
            remove_with_owner(staging_path(rt, task))
