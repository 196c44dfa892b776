"""The planner: logical nodes → tasks, one plan function per node type.

The walk is post-order and deterministic, so the same script builds the same task ids, and each
task's fingerprint digests its node's parameters, its partition and its inputs' fingerprints;
a partition of a split by files of sources of files, fixed by the plan, digests the files it
reads instead (:mod:`~smallpond.execution.plan_splits`), so a changed file reruns its partition only.
Partitioning mistakes (dimensions that do not match, ...) raise :class:`PlanError` here, before
any task runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import warnings
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

from smallpond.common import rare_full_collections
from smallpond.errors import PlanError
from smallpond.execution.fingerprint import Unfingerprintable, stable_digest
from smallpond.execution.ops.arrow import (
    ArrowBatchTask,
    ArrowComputeTask,
    ArrowStreamTask,
    PandasBatchTask,
    PandasComputeTask,
    PythonScriptTask,
)
from smallpond.execution.ops.duckdb import sql_may_draw_random, sql_reads_files
from smallpond.execution.ops.partition import HashPartitionTask
from smallpond.execution.ops.range import RangePartitionTask, RangeSampleTask
from smallpond.execution.ops.sink import DataSinkTask, check_destination
from smallpond.execution.ops.sink_overlap import check_earlier_sinks, check_overlap, check_sink_destinations
from smallpond.execution.ops.sink_sources import check_listable
from smallpond.execution.ops.sql import SqlEngineTask
from smallpond.execution.ops.structural import (
    DataSourceTask,
    EvenlyDistributedPartitionProducerTask,
    LoadPartitionedDataSetProducerTask,
    MaterializeSourceTask,
    MergeDataSetsTask,
    PartitionConsumerTask,
    ProjectionTask,
    RepeatPartitionProducerTask,
    RootTask,
    SplitDataSetTask,
    UserDefinedPartitionProducerTask,
    is_literal_dataset,
)
from smallpond.execution.plan_splits import share_fingerprints, split_fingerprints
from smallpond.execution.plancheck import case_clashes
from smallpond.execution.plansize import check_plan_size, num_producers
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.task import PartitionInfo, Task
from smallpond.io.paths import one_version_per_file
from smallpond.logical.base import Node, created_at, node_at
from smallpond.logical.determinism import sql_reads_clock
from smallpond.logical.graph import topological_order
from smallpond.logical.node import (
    ArrowBatchNode,
    ArrowComputeNode,
    ArrowStreamNode,
    ConsolidateNode,
    DataSinkNode,
    DataSourceNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LimitNode,
    LoadPartitionedDataSetNode,
    LogicalPlan,
    PandasBatchNode,
    PandasComputeNode,
    PartitionNode,
    ProjectionNode,
    PythonScriptNode,
    RangePartitionNode,
    RepeatPartitionNode,
    RootNode,
    SqlEngineNode,
    UnionNode,
    UserDefinedPartitionNode,
)
from smallpond.logical.optimizer import optimize, optimized_of
from smallpond.logical.structural import projection_texts

#: the folder (under the output root or ``--output_path``) the root's results are published in
FINAL_RESULTS = "FinalResults"

TOP = PartitionInfo()

# Consumers that read their inputs' files and write files of their own; and consumers that pass
# their inputs' files on as they are (file lists, row ranges), so what reads those files is
# whatever consumes them.
_REWRITING = (SqlEngineNode, HashPartitionNode, RangePartitionNode, ArrowComputeNode)


def engine_only_outputs(root: Node) -> set:
    """Ids of the nodes under ``root`` whose output files only smallpond's own tasks read.

    Such a node has no ``output_name`` / ``output_path``, is not the plan's result, and every
    path from it through nodes that pass files on (repartitioning by files, unions, ...) ends
    in a node that reads the files and writes its own (SQL, partitioning, Arrow/pandas). A sink,
    a user Python script (which may copy files) or any other node is a reader outside the
    engine: the files it can reach are published and keep the node's Parquet settings.
    """
    nodes = topological_order([root], lambda x: x.input_deps)
    consumers: Dict[int, List[Node]] = {}
    for n in nodes:
        for d in n.input_deps:
            consumers.setdefault(id(d), []).append(n)
    published: Dict[int, bool] = {}
    for n in reversed(nodes):  # consumers before their inputs
        cs = consumers.get(id(n), [])
        pub = not cs or bool(n.output_name) or bool(getattr(n, "output_path", None)) or isinstance(n, DataSinkNode)
        for c in cs:
            if isinstance(c, _REWRITING) and not isinstance(c, LimitNode):
                continue
            if c.passes_input_files and not published[id(c)]:  # (Node.passes_input_files)
                continue
            pub = True
        published[id(n)] = pub
    return {i for i, pub in published.items() if not pub}


class ExecutionPlan:
    """The tasks of a planned job and, once it ran, their outputs."""

    def __init__(
        self,
        ctx: RuntimeContext,
        root_task: Task,
        logical_plan: Optional[LogicalPlan],
        tasks: Dict[str, Task],
        final_task: Optional[Task] = None,
    ) -> None:
        self.ctx = ctx
        self.root_task = root_task
        self.logical_plan = logical_plan
        self.tasks = tasks
        self.final_task = final_task
        #: once the job ran, every task's output dataset by task key: run, resumed from its commit
        #: record, or taken from the task cache; on a rerun, metadata-only tasks that nothing needed
        #: (all after them committed) are rebuilt from their inputs; one whose rebuilding fails is
        #: absent (nothing needs it)
        self.results: Dict[str, Any] = {}
        self.successful = False

    @property
    def final_output(self):
        if self.final_task is None or self.final_task.key not in self.results:
            return None
        return self.results[self.final_task.key]

    @property
    def final_output_path(self) -> Optional[str]:
        return self.final_task.node.output_path if self.final_task is not None else None

    @property
    def analyzed_logical_plan(self) -> Optional[LogicalPlan]:
        """The logical plan this execution plan was made from."""
        return self.logical_plan

    @property
    def named_outputs(self) -> Dict[str, Any]:
        names = sorted({t.output_name for t in self.tasks.values() if t.output_name})
        return {n: self.get_output(n) for n in names}

    def get_output(self, output_name: str):
        """All outputs of the tasks with this ``output_name``, merged into one dataset."""
        from smallpond.execution.ops.structural import merge_datasets

        named = [
            (k, t)
            for k, t in sorted(self.tasks.items(), key=lambda kv: kv[1].id)
            if t.output_name == output_name and not isinstance(t, DataSinkTask)
        ]
        # a node's inner tasks (a partition node's splits, merges and producers; a limit's
        # per-partition steps) share its name: only the tasks no task of the same node consumes
        # hold its output
        inner = {d for _, t in named for d in t.input_keys if d in self.tasks and self.tasks[d].node_id == t.node_id}
        outs = [self.results[k] for k, _ in named if k not in inner and k in self.results]
        if not outs:
            return None
        return merge_datasets(outs)

    @property
    def leaves(self) -> List[Task]:
        return [t for t in self.tasks.values() if not t.input_keys]

    def __repr__(self) -> str:
        return f"ExecutionPlan({len(self.tasks)} tasks)"


def _results_of(root: Node) -> List[Node]:
    """The nodes whose results are a plan's final output: its root's, or for a root the user
    built as ``RootNode(ctx, (sink, ...))`` (which does no work of its own) those of its inputs,
    in order. Its RootTask's output was taken, an empty table with no columns."""
    if not isinstance(root, RootNode) or not root.input_deps:
        return [root]
    return [n for d in root.input_deps for n in _results_of(d)]


class Planner:
    """Turns nodes into tasks. Keeps its node→tasks memo, so a session can plan incrementally.

    The plan depends only on the logical plan, its inputs and the job's settings that change
    results (the random seed), never on the backend: ``parallelism`` (the workers available) is
    kept for callers but decides nothing, so the same script plans the same tasks, with the same
    ids and output files, on one worker or a hundred.
    """

    def __init__(
        self, runtime_ctx: RuntimeContext, parallelism: Optional[int] = None, attempt_limits: Optional[Tuple[int, int]] = None
    ) -> None:
        self.rt = runtime_ctx
        # (CPUs, memory) one task may ask for: the executor's largest worker (default: this machine)
        self._attempt_limits = attempt_limits
        self.parallelism = parallelism
        self.node_to_tasks: Dict[int, List[Task]] = {}
        # caches by node id (nodes hold only what the user described); the planned nodes are
        # kept alive so that an id is never reused while it is a key here
        self._planned_nodes: List[Node] = []
        self._sinks: List[Node] = []  # the sinks planned so far, checked against later ones
        self._digests: Dict[int, str] = {}
        #: where the modules user functions import in their bodies were found, in the current
        #: call of :meth:`plan` (stable_digest's ``specs``: each name is looked up once however
        #: many nodes import it; anew in each call: a module file created since is found)
        self._specs: Dict[str, Any] = {}
        #: why a node's tasks are never reused (its digest is then "unreusable:..."), by node id
        self._unreused: Dict[int, str] = {}
        #: whether a node's tasks draw from their own seed (draws_from_task_seed), by node id
        self._seeded: Dict[int, bool] = {}
        self._slim_copies: Dict[int, Node] = {}
        self.tasks: Dict[str, Task] = {}
        self.next_task_id = 0
        self._warned: set = set()
        #: nodes whose outputs only the engine reads (:func:`engine_only_outputs`)
        self._engine_only: set = set()
        #: the file datasets read by the sources planned so far (outputs must not overlap them)
        self._input_datasets: List[Any] = []
        self._readers: Dict[int, str] = {}  # id(input dataset) -> the source node that reads it (for messages)
        self._registry = self._plan_functions()
        #: the job's environment variables for its tasks, in every fingerprint (see _env_fingerprint)
        self._env_text = _env_fingerprint(runtime_ctx.env_overrides, lambda: runtime_ctx.secret)

    def _plan_functions(self) -> List[Tuple[Type[Node], Callable]]:
        return [
            (DataSourceNode, self._plan_source),
            (DataSinkNode, self._plan_sink),
            (RootNode, self._plan_root),
            (UnionNode, self._plan_union),
            (ConsolidateNode, self._plan_consolidate),
            (ProjectionNode, self._plan_projection),
            (LimitNode, self._plan_limit),
            (PartitionNode, self._plan_partition),
            (PythonScriptNode, partial(self._plan_compute, PythonScriptTask)),
            (PandasBatchNode, partial(self._plan_compute, PandasBatchTask)),
            (ArrowBatchNode, partial(self._plan_compute, ArrowBatchTask)),
            (ArrowStreamNode, partial(self._plan_compute, ArrowStreamTask)),
            (PandasComputeNode, partial(self._plan_compute, PandasComputeTask)),
            (ArrowComputeNode, partial(self._plan_compute, ArrowComputeTask)),
            (SqlEngineNode, partial(self._plan_compute, SqlEngineTask)),
        ]

    def fork(self) -> "Planner":
        """A planner that continues from this one's state without changing it (a dry run plans
        what a session would plan next: the same task ids, and no trace of it afterwards)."""
        import copy

        p = copy.copy(self)
        p.node_to_tasks = dict(self.node_to_tasks)
        p.tasks = dict(self.tasks)
        p._planned_nodes = list(self._planned_nodes)
        p._sinks = list(self._sinks)
        p._digests = dict(self._digests)
        p._unreused = dict(self._unreused)
        p._seeded = dict(self._seeded)
        p._slim_copies = dict(self._slim_copies)
        p._warned = set(self._warned)
        p._input_datasets = list(self._input_datasets)
        p._readers = dict(self._readers)
        p._registry = p._plan_functions()  # bound to the fork, not to this planner
        return p

    # -- entry points ----------------------------------------------------------------------------
    def plan(self, node: Node) -> List[Task]:
        """The tasks producing ``node``'s partitions (planning its inputs first)."""
        self._specs = {}
        order = topological_order([node], lambda x: x.input_deps)
        # before any task is built: incompatible partitionings, and a plan too large for the
        # scheduler's memory (repartition(10**9)), raise PlanError here
        check_plan_size(order, self.node_to_tasks, len(self.tasks), self.rt.usable_memory_size)
        for n, what, message in case_clashes([n for n in order if id(n) not in self.node_to_tasks]):
            raise PlanError(f"{node_at(n)} cannot run: {message}\n{what}")
        # before any task runs: two sinks into one folder would remove each other's staged result;
        # nor one inside another's, or over the result it reads, of an earlier computation either
        fresh = [n for n in order if isinstance(n, DataSinkNode) and id(n) not in self.node_to_tasks]
        check_sink_destinations(fresh)
        check_earlier_sinks(fresh, self._sinks)
        with one_version_per_file():  # a source's fingerprint and its splits' see the same files
            for n in order:
                if id(n) not in self.node_to_tasks:
                    self._plan_node(n)
        return self.node_to_tasks[id(node)]

    def _plan_node(self, n: Node) -> None:
        """Plan one node whose inputs are planned."""
        if n.output_path and not isinstance(n, DataSinkNode):
            # a compute node's own output_path gets the sinks' overlap rules: never inside an
            # input (a rerun would read its own output) nor in another job's folder; it writes
            # only into attempt folders of its own there, so no file of the user's is replaced
            check_overlap(n, self._input_datasets, self.rt.data_root, self.rt.output_root, self._readers)
        for klass, fn in self._registry:
            if isinstance(n, klass):
                tasks = fn(n, [self.node_to_tasks[id(d)] for d in n.input_deps])
                break
        else:
            raise PlanError(f"no planner for node type {type(n).__name__} ({created_at(repr(n), n.location)})")
        self.node_to_tasks[id(n)] = tasks
        self._planned_nodes.append(n)
        if isinstance(n, DataSinkNode):
            self._sinks.append(n)

    def create_exec_plan(self, logical_plan: LogicalPlan, manifest_only_final_results: bool = True) -> ExecutionPlan:
        """Plan a whole job: the root's results are published as ``FinalResults``."""
        ctx = logical_plan.ctx
        root = logical_plan.root_node
        base = self.rt.final_output_path or self.rt.output_root
        sinks: List[Node] = []
        names: Dict[str, List[Node]] = {}
        for n in logical_plan.nodes.values():
            if n.output_name and not isinstance(n, DataSinkNode):
                names.setdefault(n.output_name, []).append(n)
        results = _results_of(root)
        own_sink = len(results) == 1 and isinstance(results[0], DataSinkNode)
        if not own_sink:
            for n in names.get(FINAL_RESULTS, []):
                raise PlanError(
                    f"{node_at(n)}: output_name {FINAL_RESULTS!r} is the folder the job publishes "
                    f"its final results (the plan root's output) into, at {os.path.join(base, FINAL_RESULTS)}: "
                    "give this output another name"
                )
        for name, nodes in sorted(names.items()):
            if len(nodes) > 1:
                warnings.warn(f"output_name {name!r} is used by {len(nodes)} nodes: {nodes}")
            sinks.append(
                DataSinkNode(ctx, nodes, os.path.join(base, name), type="copy" if self.rt.final_output_path else "manifest")
            )
        if own_sink:
            final = results[0]
        else:
            kind = "copy" if self.rt.final_output_path else ("manifest" if manifest_only_final_results else "link")
            final = DataSinkNode(ctx, results, os.path.join(base, FINAL_RESULTS), type=kind, is_final_node=True)
        for n in logical_plan.nodes.values():
            if isinstance(n, DataSinkNode) and n.is_final_node and n is not final:
                warnings.warn(
                    f"{node_at(n)}: is_final_node=True has no effect: the job's final output (ExecutionPlan.final_output, "
                    f"{FINAL_RESULTS}) is the plan root's result; make this sink the root (or a RootNode's only input)"
                )
        # every sink of the plan is a target of its own: a rerun publishes again a sink whose result
        # was deleted even when what depends on it (FinalResults of a RootNode) is still committed
        inner = [n for n in logical_plan.nodes.values() if isinstance(n, DataSinkNode) and n is not final]
        # the same rules as the DataFrame API's (SQL chains fused, SQL fused into the partitioning
        # after it): optimized once over everything the job runs, so shared nodes stay shared
        memo: Dict = {}
        root_node = optimize(RootNode(ctx, [final] + sinks + inner), set(self.node_to_tasks), memo)
        # the whole job is known here, so each node's role is final: intermediate files only the
        # engine reads are written in the staging format (the DataFrame API, whose frames may be
        # written out by a later call, keeps every node's settings)
        self._engine_only = engine_only_outputs(root_node) - set(self.node_to_tasks)
        with rare_full_collections():  # every task lives as long as the job
            root_tasks = self.plan(root_node)
        final_tasks = self.node_to_tasks[id(optimized_of(memo, final))]
        return ExecutionPlan(self.rt, root_tasks[0], logical_plan, dict(self.tasks), final_tasks[-1])

    # -- helpers ---------------------------------------------------------------------------------
    def _new_task(
        self,
        klass: Type[Task],
        node: Node,
        infos: Sequence[PartitionInfo],
        inputs: Sequence[Task],
        *extra,
        reads: Optional[str] = None,
    ) -> Task:
        """A task of ``node`` over ``inputs``, fingerprinted by their fingerprints, or by ``reads``
        (a digest of what it reads) when given: a partition of a split by files fixed by the plan
        (:mod:`~smallpond.execution.plan_splits`)."""
        self.next_task_id += 1
        task = klass(self._slim(node), self.next_task_id, list(infos), [t.key for t in inputs], *extra)
        self._clamp_resources(task)
        if id(node) in self._engine_only:
            task.staging = True
        components = task.plan_components = {
            "task": klass.__qualname__,
            # staging files are written uncompressed: another format, another output
            "staging": bool(task.staging),
            "params": self._node_digest(node),
            "partition": repr([(p.dimension, p.index, p.npartitions) for p in task.partition_infos]) + repr(extra),
            # the seed decides what random() and the task's generators draw
            "seed": self.rt.random_seed,
        }
        if id(node) in self._unreused:  # (for a dry run's explanation; the params are unique anyway)
            components["unreused"] = self._unreused[id(node)]
        seeded = self._seeded.get(id(node))
        if seeded is None:  # once per node: its SQL is searched, not each task's
            seeded = self._seeded[id(node)] = draws_from_task_seed(node)
        if seeded:
            # its numbers come from the task's own seed, the job's seed and the task's number: two
            # tasks alike in all else draw other numbers, so one's output is not the other's
            components["task_seed"] = int(task.id)
        if self.rt.skip_task_with_empty_input and getattr(klass, "skips_empty_input", False):
            # the job's option changes what such a task writes for an empty input (nothing, where a
            # query such as count(*) would write a row): keyed only when on, so keys stay as they were
            components["skip_empty_input"] = True
        text = "".join(
            [
                f"task:{components['task']}\x00staging:{components['staging']}\x00params:{components['params']}\x00",
                f"partition:{components['partition']}\x00seed:{components['seed']}\x00",
                # the job's settings the task cache keys too: a rerun of the job with other values
                # resumes none of the outputs computed with the old ones
                self._env_text,
                "skip_empty_input\x00" if components.get("skip_empty_input") else "",
                *([t.fingerprint for t in inputs] if reads is None else [f"reads:{reads}"]),
            ]
        )
        task.fingerprint = hashlib.sha256(text.encode()).hexdigest()
        self.tasks[task.key] = task
        return task

    def _node_digest(self, node: Node) -> str:
        """The digest of a node's parameters and code, once per node; "unreusable:" and a random
        suffix for a node whose output may change with something no fingerprint sees (a value that
        cannot be described, a file its SQL reads itself): its tasks are then neither resumed nor
        served from the task cache, and nor are the tasks after them."""
        digest = self._digests.get(id(node))
        if digest is None:
            from smallpond.common import logger

            if sql_reads_files(node_sql(node)):
                # the files a query names can be told from its text only in simple cases (a path
                # built from parts, a relative path, a glob, a remote URL), so none is keyed
                why = "its SQL reads files itself, which the task cache cannot see change"
                logger.info(
                    "{}: {}; its tasks are not reused from an earlier run (give such a "
                    "file to it as an input, {{1}}, to have it keyed)",
                    node_at(node),
                    why,
                )
                self._unreused[id(node)] = why
                digest = "unreusable:" + os.urandom(16).hex()
            else:
                try:
                    digest = stable_digest(node, self._specs)
                except Unfingerprintable as e:
                    msg = (
                        f"{node_at(node)}: cannot fingerprint {e.what}, which it uses; "
                        "a change to it could not be detected, so this node's tasks will not be reused from an earlier run"
                    )
                    logger.warning(msg)
                    warnings.warn(msg, stacklevel=3)
                    self._unreused[id(node)] = f"its node could not be fingerprinted ({e.what})"
                    digest = "unreusable:" + os.urandom(16).hex()
            if not digest.startswith("unreusable:") and sql_reads_clock(node_sql(node)):
                # now() and the like: the result is the job's, so the job's id is part of its key;
                # a rerun of this job resumes it, another job computes it again (a nightly build
                # that stamps its rows gets today's stamp)
                logger.info(
                    "{}: its SQL reads the clock; its tasks are resumed by a rerun of this job, not reused by another job",
                    node_at(node),
                )
                digest = hashlib.sha256(f"{digest}\x00clock:{self.rt.job_id}".encode()).hexdigest()
            if not digest.startswith("unreusable:") and resolves_relative_paths(node):
                # a relative path its tasks resolve means a file of the folder it was built in: reused
                # (cache or resume) only by a node built in the same folder
                digest = hashlib.sha256(f"{digest}\x00folder:{getattr(node, 'created_cwd', None)}".encode()).hexdigest()
            self._digests[id(node)] = digest
            if id(node) not in self._slim_copies:
                self._planned_nodes.append(node)
        return digest

    def _slim(self, node: Node) -> Node:
        slim = self._slim_copies.get(id(node))
        if slim is None:
            slim = self._slim_copies[id(node)] = node.slim_copy()
            self._planned_nodes.append(node)
        return slim

    def _clamp_resources(self, task: Task) -> None:
        if self._attempt_limits is None:
            self._attempt_limits = (self.rt.usable_cpu_count, self.rt.usable_memory_size)  # psutil: once, not per task
        cpus, mem = self._attempt_limits
        # a node's own default (RangePartitionNode's 16 CPUs and 128 GB, as upstream) is a wish,
        # not a request the user made: clamped without a warning
        defaults = getattr(task.node, "_default_limits", ())
        # each clamp is its own warning (one per node), naming the line that built the node
        if task.cpu_limit > cpus:
            if "cpu_limit" not in defaults:
                self._warn_once(
                    task,
                    f"{created_at(task.node_label, task.location)}: cpu_limit {task.cpu_limit} exceeds the {cpus} "
                    f"usable CPUs; clamped to {cpus}",
                    "cpu",
                )
            task.cpu_limit = cpus
        if task.memory_limit is not None and task.memory_limit > mem:
            if "memory_limit" not in defaults:
                self._warn_once(
                    task,
                    f"{created_at(task.node_label, task.location)}: memory_limit {task.memory_limit} exceeds the "
                    f"{mem} bytes usable; clamped to {mem}",
                    "memory",
                )
            task.memory_limit = mem
        if task.gpu_limit > 0:
            self._warn_once(
                task,
                f"{created_at(task.node_label, task.location)}: gpu_limit {task.gpu_limit} has no effect beyond cpu_limit "
                "(8 CPUs per GPU, as upstream): this build assigns no GPUs to tasks",
                "gpu",
            )

    def _warn_once(self, task: Task, msg: str, kind: str) -> None:
        if (task.node_id, kind) not in self._warned:
            self._warned.add((task.node_id, kind))
            from smallpond.common import logger

            logger.warning(msg)
            warnings.warn(msg, stacklevel=2)

    _task = _new_task

    # -- plan functions --------------------------------------------------------------------------
    def _plan_source(self, node: DataSourceNode, inputs) -> List[Task]:
        klass = MaterializeSourceTask if is_literal_dataset(node.dataset) else DataSourceTask
        if klass is DataSourceTask:
            self._input_datasets.append(node.dataset)
            self._readers[id(node.dataset)] = node_at(node)
            # its files listed once (not as listed when the dataset was built): the source's
            # fingerprint, the splits of it the plan fixes (plan_splits) and its task read these,
            # and all their rows (the row ranges and count read of the files before are dropped,
            # but for ranges of parts of files, which are the user's choice)
            node.dataset._resolved_paths = node.dataset._num_rows = None
            ranges = getattr(node.dataset, "_resolved_row_ranges", None)
            if ranges is not None and all(r.whole_file for r in ranges):
                node.dataset._resolved_row_ranges = None
            planned = node.dataset.resolved_paths  # (the dataset's own list, not a copy: a source may list a million files)
        task = self._task(klass, node, [TOP], [])
        if klass is DataSourceTask:
            task.planned_paths = planned
        return [task]

    def _plan_sink(self, node: DataSinkNode, inputs) -> List[Task]:
        """A sink task, after the checks that keep user data safe (see :mod:`~smallpond.execution.ops.sink`).

        A destination outside the job folder must not overlap any input planned so far (the
        sources of this plan, or of this session) nor the data root, and its content must allow
        the sink's ``mode``; all of this raises PlanError now, before any task runs. A sink that
        already published in this job (its commit record matches) is not checked again.
        """
        from smallpond.execution.commit import read_commit

        all_inputs = [t for ts in inputs for t in ts]
        task = self._task(DataSinkTask, node, [TOP], all_inputs)
        check_overlap(node, self._input_datasets, self.rt.data_root, self.rt.output_root, self._readers)
        check_listable(node)  # a type="manifest" sink's files, globs' and folders' too: one path a line
        task.runtime_ctx = self.rt
        committed = read_commit(self.rt, task) is not None
        task.runtime_ctx = None
        if check_destination(node, committed, self.rt.job_root, self.rt.sink_records_dir) == "skip":
            from smallpond.common import logger

            logger.warning("{}: {} is not empty and mode='ignore': it is left as it is", node.label, node.output_path)
            del self.tasks[task.key]
            task = self._task(DataSinkTask, node, [TOP], [], True)
        return [task]

    def _plan_root(self, node: RootNode, inputs) -> List[Task]:
        return [self._task(RootTask, node, [TOP], [t for ts in inputs for t in ts])]

    def _plan_union(self, node: UnionNode, inputs) -> List[Task]:
        return [t for ts in inputs for t in ts]

    def _plan_consolidate(self, node: ConsolidateNode, inputs) -> List[Task]:
        keep = set(node.dimensions)
        groups: Dict[tuple, List[Task]] = {}
        for t in inputs[0]:
            key = tuple(p for p in t.partition_infos if p.dimension in keep)
            groups.setdefault(key, []).append(t)
        return [self._task(MergeDataSetsTask, node, [TOP, *key], ts) for key, ts in groups.items()]

    def _plan_projection(self, node: ProjectionNode, inputs) -> List[Task]:
        return [self._task(ProjectionTask, node, t.partition_infos, [t]) for t in inputs[0]]

    def _plan_limit(self, node: LimitNode, inputs) -> List[Task]:
        parts = inputs[0]
        if len(parts) > 1:
            parts = [self._task(SqlEngineTask, node, t.partition_infos, [t]) for t in parts]
            merged = self._task(MergeDataSetsTask, node, [TOP], parts)
        else:
            merged = parts[0]
        return [self._task(SqlEngineTask, node, [TOP], [merged])]

    def _plan_compute(self, klass: Type[Task], node: Node, inputs: List[List[Task]]) -> List[Task]:
        return [self._task(klass, node, infos, deps) for infos, deps in broadcast(node, inputs)]

    def _plan_partition(self, node: PartitionNode, inputs: List[List[Task]]) -> List[Task]:
        if isinstance(node, EvenlyDistributedPartitionNode):
            producer_cls = EvenlyDistributedPartitionProducerTask
        elif isinstance(node, RepeatPartitionNode):
            producer_cls = RepeatPartitionProducerTask
        elif isinstance(node, LoadPartitionedDataSetNode):
            producer_cls = LoadPartitionedDataSetProducerTask
        elif isinstance(node, UserDefinedPartitionNode):
            producer_cls = UserDefinedPartitionProducerTask
        elif isinstance(node, RangePartitionNode):
            producer_cls = RangePartitionTask
        elif isinstance(node, HashPartitionNode):
            producer_cls = HashPartitionTask
        else:
            raise PlanError(f"no planner for partition node type {type(node).__name__}")
        n = node.npartitions
        if node.nested:
            groups: Dict[tuple, List[Task]] = {}
            for ts in inputs:
                for t in ts:
                    groups.setdefault(t.partition_infos, []).append(t)
            if len(groups) * n > node.max_card_of_producers_x_consumers:
                raise PlanError(
                    f"{node_at(node)}: {len(groups):,} x {n:,} partitions is more than "
                    f"{node.max_card_of_producers_x_consumers:,}; use fewer partitions"
                )
            out = []
            for infos, ts in groups.items():
                src = ts[0] if len(ts) == 1 else self._task(MergeDataSetsTask, node, infos, ts)
                producer = self._task(producer_cls, node, infos, [src, *self._split_points_task(node, infos, [src])])
                for i in range(n):
                    out.append(
                        self._task(PartitionConsumerTask, node, [*infos, PartitionInfo(i, n, node.dimension)], [producer], i)
                    )
            return out
        all_inputs = [t for ts in inputs for t in ts]
        if getattr(node, "pre_sql", None) is not None:
            # fused with the SQL node before it (optimizer.fuse_sql_into_partition): one producer per
            # input partition runs the query over that partition (its placeholders see the input's
            # partition) and routes the result; numbered, as below (the first leaves the placeholders)
            numbered = issubclass(producer_cls, HashPartitionTask)
            producers = [
                self._task(producer_cls, node, t.partition_infos, [t], *((i,) if numbered else ()))
                for i, t in enumerate(all_inputs)
            ]
            return [
                self._task(PartitionConsumerTask, node, [TOP, PartitionInfo(i, n, node.dimension)], producers, i)
                for i in range(n)
            ]
        nprod = num_producers(node, len(all_inputs)) if issubclass(producer_cls, HashPartitionTask) else 1
        if nprod == 1:
            srcs = [all_inputs[0] if len(all_inputs) == 1 else self._task(MergeDataSetsTask, node, [TOP], all_inputs)]
        elif len(all_inputs) >= nprod:
            # dealt round robin, not in blocks: a file partitioning fills its first partitions
            # (4 files in 20 partitions), which blocks would give to one or two producers
            groups = [all_inputs[j::nprod] for j in range(nprod)]
            srcs = [g[0] if len(g) == 1 else self._task(MergeDataSetsTask, node, [TOP], g) for g in groups]
        else:
            merged = all_inputs[0] if len(all_inputs) == 1 else self._task(MergeDataSetsTask, node, [TOP], all_inputs)
            reads = share_fingerprints(all_inputs, nprod)
            srcs = [self._task(SplitDataSetTask, node, [TOP], [merged], i, nprod, reads=reads[i]) for i in range(nprod)]
        extra = self._split_points_task(node, [TOP], srcs)
        # a hash or range producer knows its index: the first one leaves a file in every
        # partition (HashPartitionTask.producer_index); the index is part of its fingerprint
        numbered = issubclass(producer_cls, HashPartitionTask)
        producers = [self._task(producer_cls, node, [TOP], [s, *extra], *((i,) if numbered else ())) for i, s in enumerate(srcs)]
        reads = split_fingerprints(node, all_inputs, producers, self.rt)
        return [
            self._task(PartitionConsumerTask, node, [TOP, PartitionInfo(i, n, node.dimension)], producers, i, reads=reads[i])
            for i in range(n)
        ]

    def _split_points_task(self, node: PartitionNode, infos, srcs: List[Task]) -> List[Task]:
        """The task sampling a range partitioning's split points from all of ``srcs`` (when it has
        none given): every producer of the partitioning reads the same split points."""
        if not isinstance(node, RangePartitionNode) or not node.sampled:
            return []
        return [self._task(RangeSampleTask, node, infos, srcs)]


def broadcast(node: Node, inputs: List[List[Task]]) -> List[Tuple[tuple, List[Task]]]:
    """Match input partitions: the input with most dimensions leads; the others are looked up."""
    if not inputs:
        return [((TOP,), [])]

    def dims(ts: List[Task]) -> tuple:
        return tuple(sorted(p.dimension for p in ts[0].partition_infos if p.dimension != TOP.dimension)) if ts else ()

    main = max(range(len(inputs)), key=lambda i: (len(dims(inputs[i])), len(inputs[i])))
    lookups = []
    for i, ts in enumerate(inputs):
        if i == main:
            lookups.append(None)
            continue
        d = set(dims(ts))
        table = {}
        for t in ts:
            table.setdefault(frozenset(p for p in t.partition_infos if p.dimension in d), t)
        lookups.append((d, table))
    out = []
    for mt in inputs[main]:
        deps = []
        for i in range(len(inputs)):
            if i == main:
                deps.append(mt)
                continue
            d, table = lookups[i]
            key = frozenset(p for p in mt.partition_infos if p.dimension in d)
            match = table.get(key)
            if match is None:
                raise PlanError(
                    f"{created_at(repr(node), node.location)}: partition dimensions or npartitions of input {i} "
                    f"({sorted(d)}) are not compatible with the main input's partition {list(mt.partition_infos)}"
                )
            deps.append(match)
        out.append((mt.partition_infos, deps))
    return out


def _env_fingerprint(env: Dict[str, str], secret: Callable[[], bytes]) -> str:
    """The environment variables a job sets for its tasks (the Driver's ``--env_variables``), which
    the task cache keys (``cache_keys.env_components``), as a part of every task's fingerprint;
    empty without variables (such jobs keep their fingerprints). ``secret``: the job's secret."""
    if not env:
        return ""
    text = json.dumps(sorted((str(k), str(v)) for k, v in env.items()))
    # a digest keyed with the job's secret: the commit records keep no value in clear, nor one a
    # guess could be checked against (a variable may hold a password)
    return f"env:{hmac.new(secret(), text.encode('utf-8', 'surrogatepass'), 'sha256').hexdigest()}\x00"


#: nodes whose tasks run user Python, which may draw from the generators the engine seeds per task
_USER_PYTHON = (ArrowComputeNode, ArrowStreamNode, PandasComputeNode, PythonScriptNode, UserDefinedPartitionNode)


def draws_from_task_seed(node: Node) -> bool:
    """Whether a node's tasks may draw random numbers from their own seed (the job's seed and the
    task's number, :attr:`Task.random_seed_bytes`): SQL that may call ``random()`` and the like
    (``{rand_seed}`` included), a random shuffle, a range partition's sampled boundaries, user
    Python, Python UDFs in SQL included (``random``, NumPy and the task's generators are seeded
    per task)."""
    if isinstance(node, _USER_PYTHON) or getattr(node, "udf_contexts", None):
        return True
    if isinstance(node, RangePartitionNode) or getattr(node, "random_shuffle", False):
        return True
    texts = node_sql(node)
    if isinstance(node, HashPartitionNode):
        texts += [node.data_partition_column, *node.hash_columns]
    return sql_may_draw_random(texts)


def resolves_relative_paths(node: Node) -> bool:
    """Whether a node's tasks may resolve a relative path themselves, in the folder it was built in
    (``Node.created_cwd``): user Python (Python UDFs in SQL too), which may open any file, and SQL
    with quoted text, where DuckDB reads a file named by a string or a quoted name (``{0},
    'x.parquet'``; SQL found to read files is not reused at all). SQL without quotes names no file."""
    if isinstance(node, _USER_PYTHON) or getattr(node, "udf_contexts", None):
        return True
    texts = node_sql(node)
    if isinstance(node, HashPartitionNode):
        texts += [node.data_partition_column, *node.hash_columns]
    return any(q in t for t in texts if isinstance(t, str) for q in ("'", '"', "$"))


def node_sql(node: Node) -> List[str]:
    """The SQL text a node's tasks run as the user wrote it: a SQL node's queries (a fused one's
    hold those of the nodes it fused), the query of a partitioning fused with the SQL before it,
    a source's query (``SqlQueryDataSet``), and the expressions of the projections it reads its
    inputs through (:func:`~smallpond.logical.structural.projection_texts`: ``"now() as t"`` in a
    ``ProjectionNode`` or a source's ``columns=``), which its tasks evaluate as they read."""
    texts = list(node.sql_queries) if isinstance(node, SqlEngineNode) else [getattr(node, "pre_sql", None)]
    if isinstance(node, DataSourceNode):
        texts.append(getattr(node.dataset, "sql_query", None))
    for dep in node.input_deps:
        texts.extend(projection_texts(dep))
    return [t for t in texts if isinstance(t, str)]
