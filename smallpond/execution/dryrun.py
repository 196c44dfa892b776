"""A dry run: which tasks of a plan will run, which will be reused, and why (nothing runs).

The tasks are walked dependencies first, as the scheduler would run them:

* metadata-only tasks (sources, splits, merges) run for real in this process: they read file
  lists and Parquet footers, never data, and the tasks after them need what they describe;
* a task committed in this job (same job id and data root) is *resumed*;
* otherwise, when every input is known, the task's cache key is computed from its inputs as the
  scheduler would (:mod:`smallpond.execution.cache_keys`): a verified entry means *reused from the
  task cache*; a miss means it *will run*, with the reason found by comparing its fingerprint's
  components with the last build of the same task position (a changed input file, parameter,
  seed or engine, or a recomputed upstream task);
* a task downstream of one that will run will run too ("its input from X will run").

Entries are looked up but never removed, claims are not taken, and nothing is written to the job.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from smallpond.common import some_of
from smallpond.execution.attempt import run_inline
from smallpond.execution.commit import has_record, read_commit
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.sched_state import unpublished_sinks
from smallpond.execution.task import Task
from smallpond.logical.graph import topological_order

RUN = "run"
REUSED = "reused"
RESUMED = "resumed"
DONE = "done"
FAILS = "fails"


@dataclass
class Verdict:
    """What a dry run expects of one task: ``action`` is run / reused / resumed / done / fails."""

    task: Task
    action: str
    reasons: List[str] = field(default_factory=list)
    source: str = ""  # for reused tasks: which job and task wrote the entry


@dataclass
class DryRun:
    """The verdicts of a dry run, in the order the tasks would run."""

    verdicts: List[Verdict]
    task_cache: Optional[str]

    def of(self, action: str) -> List[Verdict]:
        return [v for v in self.verdicts if v.action == action]

    def __str__(self) -> str:
        return format_dry_run(self)


def dry_run(
    rt: RuntimeContext,
    targets: Sequence[Task],
    all_tasks: Dict[str, Task],
    *,
    done: Optional[Dict[str, object]] = None,
    cache=None,
    planned_nodes: Sequence = (),
) -> DryRun:
    """Walk ``targets`` and what they need; see the module docstring.

    Args:
        rt: the job's runtime context (its commit records are read if the job folder exists).
        targets, all_tasks: the planned tasks, as given to the scheduler.
        done: outputs already known (a session's earlier results), by task key.
        cache: a :class:`~smallpond.execution.cache_keys.JobCache` to look entries up in, or
            None when the task cache is off.
        planned_nodes: the planned nodes (whole, as the planner holds them): the tasks of one
            that the plan check (:mod:`smallpond.execution.plancheck`) finds cannot run would
            fail, and say why, instead of "will run".
    """
    from smallpond.execution.cache_keys import JobCache, partition_of, why_changed

    done = dict(done or {})
    order = topological_order([t.key for t in targets], lambda k: all_tasks[k].input_keys)
    outputs: Dict[str, object] = {}
    causes: Dict[str, List[str]] = {}  # task key -> the tasks that will run before its output is known
    verdicts: List[Verdict] = []
    named_behind: Dict[tuple, List[str]] = {}  # the inputs of a step run on the scheduler -> what to name
    job_exists = os.path.isdir(rt.job_root) and os.path.exists(rt.layout.secret_path)
    # what the targets need, as the scheduler finds it: nothing behind a task committed earlier
    # (a sink a finished job published, whose upstream records went with its staging/ folder)
    committed: Dict[str, dict] = {}

    def record_of(key: str) -> Optional[dict]:
        task = all_tasks[key]
        if job_exists and key not in done and not task.exec_on_scheduler:
            return read_commit(rt, task)
        return None

    needed, stack = set(), [t.key for t in targets]
    while stack:
        key = stack.pop()
        if key not in needed:
            needed.add(key)
            record = record_of(key)
            if record is not None:
                committed[key] = record
            else:
                stack.extend(all_tasks[key].input_keys)
        if not stack:  # a sink not published is needed behind committed tasks too
            stack = unpublished_sinks(order, needed, all_tasks, lambda k: k in done or (job_exists and has_record(rt, k)))
    for key in order:
        if key not in needed:  # not run: listed if committed, as the scheduler's resume counts it
            task = all_tasks[key]
            # quietly: a damaged record of a task nothing needs is set aside by the run, not warned about
            if job_exists and key not in done and not task.exec_on_scheduler and read_commit(rt, task, []) is not None:
                verdicts.append(Verdict(task, RESUMED, ["committed earlier in this job"]))
            continue
        task = all_tasks[key]
        if key in done:
            outputs[key] = done[key]
            if not task.exec_on_scheduler:
                verdicts.append(Verdict(task, DONE, ["computed earlier in this session"]))
            continue
        record = committed.get(key)
        if record is not None:
            outputs[key] = record["dataset"]
            if cache is not None:
                cache.on_done(task, record["dataset"], record, ran=False)
            verdicts.append(Verdict(task, RESUMED, ["committed earlier in this job"]))
            continue
        unknown = [d for d in task.input_keys if d not in outputs]
        if unknown:
            upstream = sorted({c for d in unknown for c in causes.get(d, [d])})
            causes[key] = upstream if task.exec_on_scheduler else [key]
            if not task.exec_on_scheduler:
                why = [f"its input from {_names(upstream)} will run"]
                if not task.writes_output or not JobCache.cacheable(task):
                    why.insert(0, _uncached_reason(task))
                verdicts.append(Verdict(task, RUN, why))
            continue
        inputs = [outputs[d] for d in task.input_keys]
        if task.exec_on_scheduler:
            try:
                outputs[key] = run_inline(rt, task, inputs)
            except Exception as e:
                causes[key] = [key]
                verdicts.append(Verdict(task, FAILS, [getattr(e, "message", None) or str(e)]))
                continue
            if cache is not None:  # its output's identity, as the scheduler notes it
                cache.on_done(task, outputs[key])
            continue
        causes[key] = [key]
        if cache is None:
            verdicts.append(Verdict(task, RUN, ["the task cache is off"]))
            continue
        if not task.writes_output or not JobCache.cacheable(task):
            verdicts.append(Verdict(task, RUN, [_uncached_reason(task)]))
            continue
        cache_key = cache.prepare(task, inputs)
        if cache.bypassed(task):
            verdicts.append(Verdict(task, RUN, ["recompute() was asked for it"]))
            continue
        entry = cache.cache.lookup(cache_key, drop=False)
        if entry is not None:
            outputs[key] = _as_if_linked(rt, task, entry)
            del causes[key]
            cache.on_done(task, outputs[key], ran=False)  # its files, as linked under _dry_dir
            verdicts.append(Verdict(task, REUSED, [], f"{entry.task} of job {entry.job}"))
            continue
        prev = cache.previous_build(task)
        cur = {"key": cache_key, **cache.components[key]}
        if prev is None:
            why = [never_computed(partition_of(task), cache.other_partitions(task))]
        else:
            why = why_changed(prev, cur, origin=lambda k: _recomputed_behind(k, all_tasks, cache, named_behind))
        verdicts.append(Verdict(task, RUN, why))
    _plan_check(verdicts, planned_nodes)
    return DryRun(verdicts, rt.task_cache if cache is not None else None)


def _plan_check(verdicts: List[Verdict], planned_nodes: Sequence) -> None:
    """Tasks that will run, of nodes whose query cannot bind, would fail (the check runs now: a dry
    run is asked for, so its cost is not on a job's way)."""
    from smallpond.execution.plancheck import check_delay, errors_by_node

    will_run = {v.task.node_id for v in verdicts if v.action == RUN}
    if not planned_nodes or not will_run or check_delay() is None:
        return
    try:
        reasons = errors_by_node(planned_nodes, will_run)
    except Exception:  # the check never fails a dry run by its own fault
        return
    for v in verdicts:
        if v.action == RUN and v.task.node_id in reasons:
            v.action, v.reasons = FAILS, [reasons[v.task.node_id]]


def _recomputed_behind(key: str, all_tasks: Dict[str, Task], cache, memo: Dict[tuple, List[str]]) -> List[str]:
    """The tasks to name for a changed input produced by task ``key``: itself, or for a step run
    on the scheduler (a shuffle consumer gathering its partition from every producer), the tasks
    behind it whose key differs from their last build (all of them if none can be told).
    ``memo``: by the step's inputs (the consumers of one shuffle share their producers)."""
    task = all_tasks.get(key)
    if task is None or not task.exec_on_scheduler:
        return [key]
    inputs = tuple(task.input_keys)
    known = memo.get(inputs)
    if known is not None:
        return known
    behind: List[str] = []
    stack, seen = list(inputs), set()
    while stack:
        k = stack.pop()
        if k in seen:
            continue
        seen.add(k)
        t = all_tasks.get(k)
        if t is None:
            continue
        if t.exec_on_scheduler:
            stack.extend(t.input_keys)
        elif t.writes_output:
            behind.append(k)
    behind.sort()
    changed = []
    for k in behind:
        prev = cache.previous_build(all_tasks[k])
        if prev is not None and prev.get("key") != cache.whole.get(k):
            changed.append(k)
    named = changed or behind
    if not named:
        return [key]
    memo[inputs] = named
    return named


_PARTITION_INFO = re.compile(r"\('((?:[^'\\]|\\.)*)', (\d+), (\d+)\)")


def _partition_counts(partition: str) -> Dict[str, int]:
    """``{dimension: npartitions}`` of a task's partition as the cache's index keeps it
    (``cache_keys.partition_of``), the top level left out."""
    return {m[0]: int(m[2]) for m in _PARTITION_INFO.findall(partition) if m[0] != "@toplevel@"}


def never_computed(partition: str, other_partitions: Sequence[str]) -> str:
    """Why a task whose partition has no build in the cache's index will run. Where the node's
    earlier builds had another partition count, that is what changed: ``npartitions=<number of
    files>`` after a file was added gives every task of the node a partition it never had."""
    cur = _partition_counts(partition)
    earlier: Dict[str, set] = {}
    for other in other_partitions:
        for dim, n in _partition_counts(other).items():
            earlier.setdefault(dim, set()).add(n)
    changed = [
        f"{dim} has {cur[dim]} partitions, {' or '.join(map(str, sorted(earlier[dim])))} before"
        for dim in cur
        if dim in earlier and cur[dim] not in earlier[dim]
    ]
    if changed:
        return f"its partition changed: {'; '.join(changed)}, so no task of its node has an earlier build"
    return "never computed (no earlier build of this task in the cache)"


def _dry_dir(rt: RuntimeContext, task: Task) -> str:
    return f"{task.output_base(rt)}.0.dryrun"


def _as_if_linked(rt: RuntimeContext, task: Task, entry):
    """The entry's dataset as the task's output would be once linked into the job: under the
    task's output folder, so merges order its files as in the real run. Nothing is linked: the
    row ranges of its Parquet files are read here, from the entry, for the tasks after it that
    split by rows."""
    from smallpond.execution.cache import copy_dataset
    from smallpond.logical.dataset import ParquetDataSet, PartitionedDataSet

    ds = copy_dataset(entry.record["dataset"])
    base = entry.record["base"]
    if entry.in_folder:  # an earlier release's entry: its files under their paths in its folder
        ds._rebase(base, entry.path)
        back = None
    else:  # beside its record, one by one (cache_entries)
        there = entry.stored_paths()
        back = {v: k for k, v in there.items()}
        ds._repath(lambda p: there.get(p, p))
    for d in ds.datasets if isinstance(ds, PartitionedDataSet) else [ds]:
        if isinstance(d, ParquetDataSet):
            _ = d.resolved_row_ranges
    if back is None:
        ds._rebase(entry.path, base)
    else:
        ds._repath(lambda p: back.get(p, p))
    ds._rebase(base, _dry_dir(rt, task))
    return ds


def _uncached_reason(task: Task) -> str:
    from smallpond.execution.ops.sink import DataSinkTask

    if isinstance(task, DataSinkTask):
        return f"publishes to {task.node.output_path} (publishing always runs)"
    if task.writes_output:  # a task the cache does not key (see Planner._node_digest)
        why = task.plan_components.get("unreused") or "its node could not be fingerprinted"
        return f"{why}, so its results are never reused"
    return "passes its inputs through (not cached; cheap)"


def _names(keys: List[str]) -> str:
    return some_of(keys)


def format_dry_run(result: DryRun) -> str:
    """The listing: a summary, then one line per task (grouped by node), with the reasons."""
    counts = {a: len(result.of(a)) for a in (RUN, REUSED, RESUMED, DONE, FAILS)}
    lines = [
        f"task cache: {result.task_cache or 'off'}",
        f"{counts[RUN]} task(s) will run, {counts[REUSED]} reused from the task cache, "
        f"{counts[RESUMED]} resumed from this job's commits"
        + (f", {counts[DONE]} computed earlier in this session" if counts[DONE] else "")
        + (f", {counts[FAILS]} would fail" if counts[FAILS] else ""),
    ]
    node = None
    for v in sorted(result.verdicts, key=lambda v: (v.task.node_id, int(v.task.id))):
        t = v.task
        if t.node_label != node:
            node = t.node_label
            lines.append(f"{node} @ {t.location}")
        parts = ",".join(f"{p.dimension}={p.index}" for p in t.partition_infos if p.dimension != "@toplevel@")
        where = f" [{parts}]" if parts else ""
        if v.action == REUSED:
            text = f"reused (written by {v.source})"
        elif v.action == RUN:
            text = "will run: " + "; ".join(v.reasons)
        elif v.action == FAILS:
            text = "would fail: " + "; ".join(v.reasons)
        else:
            text = v.action + ": " + "; ".join(v.reasons)
        lines.append(f"  {t.key}{where}  {text}")
    return "\n".join(lines)
