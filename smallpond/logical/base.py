"""The node base class, the logical Context, partition shapes and call-site capture.

A node is a pure description of a step: its inputs, its parameters and its resource hints. Nodes
do no I/O and import nothing from ``smallpond.execution``; the planner turns them into tasks.

Every node records ``location``, the ``file:line`` of the user code that created it, so a failure
at run time points back at the script.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import os
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from smallpond.errors import ParameterError
from smallpond.logical.udf import (
    DuckDbExtensionContext,
    ExternalModuleContext,
    PythonUDFContext,
    UDFContext,
)

TOPLEVEL_DIMENSION = "@toplevel@"
# upstream 0.15 only checked that an output name *starts* with [a-zA-Z0-9_] (so "url-counts" or
# "v1.2" worked); the name becomes a directory and file-name prefix, so path separators, quotes
# and control characters are refused
_NAME_RE = re.compile(r"[a-zA-Z0-9_][^/\\'\"\x00-\x1f]*")
#: the longest output_name (UTF-8 bytes): a file name (255 bytes at most on common file systems)
#: is the name followed by up to ~50 bytes the tasks add ("-{task id}-{batch}.{query}_{n}.parquet",
#: "-{i}-empty.parquet", "-split_points.parquet")
MAX_OUTPUT_NAME_BYTES = 200
_DIM_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: the named placeholders every SQL task has (besides its partition dimensions; reference §2.5)
TASK_PLACEHOLDERS = ("batch_index", "query_index", "cpu_limit", "memory_limit", "rand_seed", "output_filename")
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NodeId(int):
    def __str__(self) -> str:
        return f"{int(self):06d}"


class Context:
    """Holds the node id counter and the UDFs registered for a plan.

    Node ids are handed out in creation order, so running the same script twice builds the same
    ids; task ids and checkpoints depend on that.
    """

    def __init__(self) -> None:
        self.next_node_id = 0
        self.udfs: Dict[str, UDFContext] = {}

    def _new_node_id(self) -> NodeId:
        self.next_node_id += 1
        return NodeId(self.next_node_id)

    def create_function(self, name: str, func: Callable, params, return_type, use_arrow_type: bool = False) -> str:
        """Register a Python function as a DuckDB UDF usable by name in ``udfs=[name]``."""
        self.udfs[name] = PythonUDFContext(name, func, params, return_type, use_arrow_type)
        return name

    def create_external_module(self, module_path: str, name: Optional[str] = None) -> str:
        """Register a Python module that defines ``create_duckdb_udfs(conn)``."""
        name = name or os.path.splitext(os.path.basename(module_path))[0]
        self.udfs[name] = ExternalModuleContext(name, module_path)
        return name

    def create_duckdb_extension(self, extension_path: str, name: Optional[str] = None) -> str:
        """Register a DuckDB extension file to load in every connection that asks for it."""
        name = name or os.path.basename(extension_path)
        self.udfs[name] = DuckDbExtensionContext(name, extension_path)
        return name


def _current_folder() -> Optional[str]:
    try:
        return os.getcwd()
    except OSError:  # removed meanwhile: its tasks run in their worker's folder
        return None


_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__))


def _ours(filename: str) -> bool:
    """Whether a frame of ``filename`` is smallpond's or the import machinery's, not the user's (a
    user's script in a folder whose name holds 'importlib' is the user's)."""
    if filename.startswith("<frozen importlib"):
        return True
    fname = os.path.abspath(filename)
    return fname.startswith(_PKG_DIR + os.sep) or fname.startswith(_IMPORTLIB_DIR + os.sep)


def user_call_site() -> str:
    """``file:line`` of the innermost frame outside the smallpond package."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if not _ours(frame.f_code.co_filename):
                return f"{frame.f_code.co_filename}:{frame.f_lineno}"
            frame = frame.f_back
        return "<unknown>"
    finally:
        del frame


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn``, called by the caller of this function,
    point at the innermost frame outside the smallpond package (the user's line)."""
    frame = inspect.currentframe()
    level = 0  # this function's frame; ``stacklevel=1`` is the frame calling ``warnings.warn``
    try:
        while frame is not None:
            if level > 0 and not _ours(frame.f_code.co_filename):
                return level
            frame = frame.f_back
            level += 1
        return 2
    finally:
        del frame


def created_at(what: str, location) -> str:
    """``{what} created at {location}``: how every message names a node (its label, or its class
    before it exists) and the user's line that created it."""
    return f"{what} created at {location}"


def node_at(node) -> str:
    """A node as messages name it: ``{label} created at {location}``."""
    return created_at(node.label, node.location)


def call_site_msg(kind: str, text: str) -> str:
    """An error message naming the user's call site, for checks made before a node exists."""
    return f"{created_at(kind, user_call_site())}: {text}"


# A partition shape is the list of (dimension, npartitions) below the top level, outermost first.
Shape = Tuple[Tuple[str, int], ...]


def shape_size(shape: Shape) -> int:
    n = 1
    for _, k in shape:
        n *= k
    return n


#: methods of upstream's nodes that built task objects (``PythonScriptNode.spawn``,
#: ``Node.create_task``): a node class defining one is refused, since nothing here calls them,
#: unless its class lists it in ``honoured_task_hooks`` (``PythonScriptNode.spawn`` is called)
UPSTREAM_TASK_HOOKS = ("spawn", "create_task")


class Node:
    """Base class of every logical node.

    Args:
        ctx: the :class:`Context` the node belongs to.
        input_deps: the nodes this one reads.
        output_name: name of a persistent output (``[a-zA-Z0-9_]+``), kept under ``output/``.
        output_path: absolute directory to write this node's output to.
        cpu_limit: CPU cores per task (DuckDB ``threads``).
        gpu_limit: GPUs per task.
        memory_limit: bytes of memory per task (DuckDB ``memory_limit``); None lets the
            scheduler give each task its share of the machine.
    """

    enable_resource_boost = False
    #: the node's output is its inputs' files as they are (file lists, row ranges): it writes none
    passes_input_files = False
    #: upstream task hooks (:data:`UPSTREAM_TASK_HOOKS`) this node class's tasks call
    honoured_task_hooks: Tuple[str, ...] = ()
    #: what a node that smallpond added to the plan is for (an optimizer rule's step), shown in
    #: its label, as a DataFrame method (``df_op``) is for the nodes it builds
    role: Optional[str] = None

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence["Node"],
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: int = 1,
        gpu_limit: float = 0,
        memory_limit: Optional[int] = None,
    ) -> None:
        self.location = user_call_site()
        #: the current folder when the node was built: its tasks run there (on every backend), so
        #: a relative path in its SQL or code means what it meant to the script at that line,
        #: also after an os.chdir, as a dataset's relative paths do (reference §1.3)
        self.created_cwd = _current_folder()
        for hook in UPSTREAM_TASK_HOOKS:
            if hook not in self.honoured_task_hooks and callable(getattr(type(self), hook, None)):
                raise ParameterError(
                    self._msg(
                        f"{type(self).__name__} overrides {hook}(), with which upstream smallpond built a node's tasks "
                        "from its own task classes; this build plans tasks itself and never calls it. Override the "
                        "node's process() instead (for a PythonScriptNode: process(self, runtime_ctx, input_datasets, "
                        "output_path) -> bool, the task's process() moved to the node; a task's extra arguments "
                        "become attributes of the node)"
                    )
                )
        if not isinstance(ctx, Context):
            raise ParameterError(self._msg(f"ctx must be a smallpond Context, got {type(ctx).__name__}"))
        if isinstance(input_deps, Node):
            input_deps = (input_deps,)
        try:
            input_deps = tuple(input_deps)
        except TypeError:
            raise ParameterError(self._msg(f"input_deps must be a sequence of nodes, got {input_deps!r}")) from None
        for dep in input_deps:
            if not isinstance(dep, Node):
                raise ParameterError(self._msg(f"input_deps must contain nodes, got {dep!r}"))
            if getattr(dep, "ctx", ctx) is not ctx:  # (ids are numbered per Context: two nodes would share one)
                raise ParameterError(
                    self._msg(
                        f"input {dep!r} was built with another Context; the nodes of a plan must share one Context "
                        "(or, with DataFrames, one session)"
                    )
                )
        if output_name is not None and (not isinstance(output_name, str) or not _NAME_RE.fullmatch(output_name)):
            raise ParameterError(
                self._msg(
                    "output_name must start with a letter, digit or underscore and contain no slashes, quotes "
                    f"or control characters, got {output_name!r}"
                )
            )
        if output_name is not None and len(output_name.encode()) > MAX_OUTPUT_NAME_BYTES:
            raise ParameterError(
                self._msg(
                    f"output_name is {len(output_name.encode())} bytes long, at most {MAX_OUTPUT_NAME_BYTES} fit: it names a "
                    "folder and starts the name of each file the tasks write ('{output_name}-{task id}-...parquet'), "
                    f"and a file name is at most 255 bytes; got {output_name[:40]!r}..."
                )
            )
        if output_path is not None and (not isinstance(output_path, str) or not os.path.isabs(output_path)):
            raise ParameterError(self._msg(f"output_path must be an absolute path, got {output_path!r}"))
        # numbers.Real: numpy's integers too; NaN and infinity fail every comparison below
        if not isinstance(cpu_limit, numbers.Real) or not 0 < cpu_limit < math.inf:
            raise ParameterError(self._msg(f"cpu_limit must be a positive finite number, got {cpu_limit!r}"))
        if not isinstance(gpu_limit, numbers.Real) or not 0 <= gpu_limit < math.inf:
            raise ParameterError(self._msg(f"gpu_limit must be a non-negative finite number, got {gpu_limit!r}"))
        if memory_limit is not None and (not isinstance(memory_limit, numbers.Real) or not 1 <= memory_limit < math.inf):
            raise ParameterError(
                self._msg(f"memory_limit must be a finite number of bytes (at least 1) or None, got {memory_limit!r}")
            )
        self.ctx = ctx
        self.id = ctx._new_node_id()
        self.input_deps: Tuple[Node, ...] = input_deps
        self.output_name = output_name
        self.output_path = output_path
        self.cpu_limit = max(int(cpu_limit) if cpu_limit >= 1 else 1, int(gpu_limit * 8))
        self.gpu_limit = gpu_limit
        self.memory_limit = int(memory_limit) if memory_limit is not None else None
        self.perf_stats: Dict[str, Any] = {}
        self.perf_metrics: Dict[str, List[float]] = {}

    # -- identity -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}-{getattr(self, 'id', '(being built)')}"

    def __str__(self) -> str:
        return repr(self)

    @property
    def label(self) -> str:
        """How errors and logs name the node: class-id, DataFrame operation and output name."""
        op = getattr(self, "df_op", None)
        what = f" (DataFrame.{op})" if op else f" ({self.role})" if self.role else ""
        return f"{self!r}{what}" + (f" '{self.output_name}'" if self.output_name else "")

    def _msg(self, text: str) -> str:
        return f"{created_at(type(self).__name__, self.location)}: {text}"

    def _flag(self, name: str, value) -> bool:
        """A yes/no parameter of the node as a bool (see :func:`~smallpond.common.as_flag`): the
        text ``"false"`` (a command-line value passed on) is False, not a true non-empty string,
        and anything but a bool, 0/1 or ``"true"``/``"false"`` is refused naming the node."""
        from smallpond.common import as_flag

        return as_flag(created_at(type(self).__name__, self.location), name, value)

    #: attributes that do not change what the node computes: identity and graph links, labels,
    #: resource hints, statistics. Subclasses extend this set, naming their private attributes
    #: too (``_default_limits``); every other attribute enters the fingerprint, including the
    #: private ones of a user's subclass (``self._threshold`` is a parameter like ``threshold``).
    fingerprint_exclude = frozenset(
        {
            "ctx",
            "id",
            "input_deps",
            "location",
            # where relative paths resolve: the planner keys it for the nodes whose tasks may resolve
            # one themselves (user Python, SQL with quoted text; planner.resolves_relative_paths)
            "created_cwd",
            "df_op",
            "role",
            "fused_from",
            "perf_stats",
            "perf_metrics",
            "cpu_limit",
            "gpu_limit",
            "memory_limit",
        }
    )

    def fingerprint_params(self) -> Dict[str, Any]:
        """The parameters that determine this node's output (they enter checkpoint fingerprints):
        every attribute but those :attr:`fingerprint_exclude` names and Python's own dunders."""
        skip = self.fingerprint_exclude
        return {k: v for k, v in sorted(self.__dict__.items()) if k not in skip and not _is_dunder(k)}

    def fingerprint_files(self) -> List[str]:
        """Files, besides its inputs, whose contents decide what the node computes (a UDF module,
        a DuckDB extension): the fingerprint digests their contents. Nodes never read them."""
        return []

    # -- partitions -----------------------------------------------------------------------------
    def partition_shape(self) -> Shape:
        """The partition dimensions of this node's output, outermost first."""
        return self._main_input_shape()

    def _main_input_shape(self) -> Shape:
        if not self.input_deps:
            return ()
        shapes = [d.partition_shape() for d in self.input_deps]
        main = max(shapes, key=lambda s: (len(s), shape_size(s)))
        for dep, s in zip(self.input_deps, shapes):
            if not _is_broadcastable(s, main):
                from smallpond.errors import PlanError

                raise PlanError(
                    self._msg(
                        f"inputs have incompatible partitionings: {dep!r} is partitioned as {_fmt_shape(s)} "
                        f"but {self!r}'s main input is partitioned as {_fmt_shape(main)}; partition dimensions "
                        "and npartitions must match (or an input must have a single partition)"
                    )
                )
        return main

    @property
    def num_partitions(self) -> int:
        return shape_size(self.partition_shape())

    # -- performance metrics --------------------------------------------------------------------
    def add_perf_metrics(self, name: str, value: float) -> None:
        """Record one sample of metric ``name`` (e.g. a task's elapsed seconds) for this node."""
        self.perf_metrics.setdefault(name, []).append(value)
        self.perf_stats.pop(name, None)

    def get_perf_stats(self, name: str) -> Optional["PerfStats"]:
        """Summary statistics of metric ``name`` over the recorded samples, or None if there are none."""
        stats = self.perf_stats.get(name)
        if stats is None:
            samples = self.perf_metrics.get(name)
            if not samples:
                return None
            stats = self.perf_stats[name] = PerfStats.of(samples)
        return stats

    def slim_copy(self) -> "Node":
        """A shallow copy without input dependencies, as shipped to workers."""
        import copy

        c = copy.copy(self)
        c.input_deps = ()
        c.ctx = None
        return c


class PerfStats(NamedTuple):
    """Count, sum, min, max, mean and percentiles of a node's metric samples."""

    cnt: int
    sum: float
    min: float
    max: float
    avg: float
    p50: float
    p75: float
    p95: float
    p99: float

    @staticmethod
    def of(samples: Sequence[float]) -> "PerfStats":
        xs = sorted(samples)
        n = len(xs)

        def pct(q: float) -> float:
            return xs[min(n - 1, int(q * n))]

        total = sum(xs)
        return PerfStats(n, total, xs[0], xs[-1], total / n, pct(0.50), pct(0.75), pct(0.95), pct(0.99))


def _is_dunder(name: str) -> bool:
    """``__orig_class__`` and the like, which Python sets on instances (a user's ``self.__x`` is
    stored as ``_Class__x``, a parameter)."""
    return name.startswith("__") and name.endswith("__")


def _is_broadcastable(shape: Shape, main: Shape) -> bool:
    main_dims = dict(main)
    return all(dim in main_dims and main_dims[dim] == n for dim, n in shape)


def _fmt_shape(shape: Shape) -> str:
    if not shape:
        return "a single partition"
    return " x ".join(f"{dim}[{n}]" for dim, n in shape)


def validate_dimension(owner: Node, dimension: str) -> None:
    if not isinstance(dimension, str) or not _DIM_RE.fullmatch(dimension):
        raise ParameterError(owner._msg(f"dimension must be an identifier ([a-zA-Z_][a-zA-Z0-9_]*), got {dimension!r}"))
    if dimension in TASK_PLACEHOLDERS:
        # a dimension is a placeholder of SQL after it ({__data_partition__}): named so, it replaced
        # the task's own value ({rand_seed} became the partition index), or was replaced by it
        raise ParameterError(
            owner._msg(
                f"dimension {dimension!r} is the name of a placeholder every SQL task has ({', '.join(TASK_PLACEHOLDERS)}); choose another"
            )
        )
