"""Structural nodes: sources, sinks, the root, unions, projections, consolidation and limits.

They describe where data comes from and goes to, and how partitions are regrouped; only the
source (for in-memory data), the sink and the limit move data.
"""

from __future__ import annotations

import os
import warnings
from typing import List, Optional, Sequence

from smallpond.errors import ParameterError, PlanError
from smallpond.io.paths import MANIFEST_NAME, unlistable, user_path
from smallpond.logical.base import Context, Node, Shape, call_site_msg
from smallpond.logical.compute import SqlEngineNode
from smallpond.logical.dataset import CsvDataSet, DataSet, JsonDataSet, ParquetDataSet


class DataSourceNode(Node):
    """A dataset as the start of a plan (one partition). ``None`` means an empty input."""

    def __init__(self, ctx: Context, dataset: Optional[DataSet]) -> None:
        super().__init__(ctx, ())
        if dataset is None:
            dataset = ParquetDataSet([])
        if not isinstance(dataset, DataSet):
            raise ParameterError(self._msg(f"dataset must be a DataSet, got {type(dataset).__name__}"))
        self.dataset = dataset

    def partition_shape(self) -> Shape:
        return ()

    def fingerprint_params(self):
        params = {"dataset": self.dataset.fingerprint()}
        code = self.dataset.fingerprint_code()
        if code:  # a query builder: the query that runs (absent otherwise: fingerprints stay)
            params["dataset_code"] = code
        return params


SINK_TYPES = ("link", "copy", "link_or_copy", "manifest")
#: what a sink does with a destination that already has content (Spark's ``mode`` names)
SINK_MODES = ("overwrite", "append", "error", "errorifexists", "ignore")


class DataSinkNode(Node):
    """Publish the inputs' files into ``output_path``.

    Args:
        output_path: an absolute directory (a leading ``~`` is the home directory).
        type: ``"link"`` (hard link, else a copy across filesystems), ``"copy"``,
            ``"link_or_copy"`` (hard link, else copy) or ``"manifest"`` (only ``.MANIFEST.txt``,
            listing the inputs' files where they are).
        manifest_only: deprecated spelling of ``type="manifest"`` (warns, naming the call site).
        mode: what to do when ``output_path`` has content:

            * ``"overwrite"`` (default): replace an earlier smallpond result (the files its
              ``.MANIFEST.txt`` lists, if they are still the ones smallpond wrote: the data root
              keeps a record of each publication). A folder holding any other file, a listed file
              a user replaced or modified, or a manifest smallpond has no record of (written by
              hand, or by an older smallpond or a job with another data root) is refused before
              the job runs, naming the files: nothing a user put there is ever deleted or
              overwritten;
            * ``"append"``: add the files under new names beside whatever is there;
            * ``"error"`` / ``"errorifexists"``: refuse a folder that is not empty;
            * ``"ignore"``: leave a folder that is not empty as it is (its inputs are not computed).

            Every ``type``, ``"manifest"`` included, follows these modes. A ``.MANIFEST.txt`` that
            smallpond did not write (not one absolute path per line) is a user's file like any
            other: no mode replaces it.

    The result is published whole, with every other sink of the job: it is built aside and
    renamed into place, so a reader never sees part of it (see :mod:`smallpond.execution.ops.sink`).
    ``.MANIFEST.txt`` lists the published files. An output path that overlaps an input of the job
    or its data root is refused when the job is planned.
    """

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        output_path: str,
        type: str = "link",
        manifest_only: bool = False,
        is_final_node: bool = False,
        *,
        mode: str = "overwrite",
    ) -> None:
        if isinstance(output_path, str):
            output_path = user_path(output_path)
        if not isinstance(output_path, str) or not os.path.isabs(output_path):
            raise ParameterError(call_site_msg("DataSinkNode", f"output_path must be an absolute path, got {output_path!r}"))
        if unlistable(output_path):
            # .MANIFEST.txt lists one path per line: the published files could not be read back
            raise ParameterError(
                call_site_msg(
                    "DataSinkNode",
                    f"output_path must not contain a line break or a byte that is not UTF-8, got {output_path!r}",
                )
            )
        super().__init__(ctx, input_deps, None, os.path.normpath(output_path), 1, 0, None)
        if manifest_only:
            ignored = "" if type in ("link", "manifest") else f" (type={type!r} is ignored)"
            warnings.warn(
                self._msg(f'manifest_only=True is deprecated: write type="manifest"{ignored}'), DeprecationWarning, stacklevel=2
            )
            type = "manifest"
        if type not in SINK_TYPES:
            raise ParameterError(self._msg(f"type must be one of {list(SINK_TYPES)}, got {type!r}"))
        if mode not in SINK_MODES:
            raise ParameterError(self._msg(f"mode must be one of {list(SINK_MODES)}, got {mode!r}"))
        if not self.input_deps:
            raise ParameterError(self._msg("a data sink needs at least one input"))
        if self.output_path == os.sep:
            raise ParameterError(self._msg("output_path must not be the filesystem root"))
        self.type = type
        self.mode = mode
        self.is_final_node = is_final_node
        listed = unlistable_inputs(self)
        if listed:
            raise ParameterError(self._msg(unlistable_refusal(self, listed[0])))

    def partition_shape(self) -> Shape:
        for d in self.input_deps:
            d.partition_shape()
        return ()


def unlistable_refusal(sink: DataSinkNode, path: str) -> str:
    """Why ``sink`` (``type="manifest"``) refuses input file ``path`` (see :func:`unlistable_inputs`)."""
    return (
        f"input path {path!r} contains a line break or a byte that is not UTF-8 ({unlistable(path)!r}), and "
        f"type='manifest' would list it as it is in {os.path.join(sink.output_path, MANIFEST_NAME)}, which holds one "
        "path per line: rename it, publish with type='copy' or 'link_or_copy' (which name the published files "
        "without it), or compute from it first (a SQL or Python step writes files of its own)"
    )


def unlistable_inputs(sink: DataSinkNode, resolve: bool = False) -> List[str]:
    """The files of a ``type="manifest"`` sink's sources, reached through nodes that pass their
    inputs' files on (:attr:`Node.passes_input_files`), whose path a line of its ``.MANIFEST.txt``
    cannot hold (:func:`~smallpond.io.paths.unlistable`). Other types publish files under names of
    their own, made listable (:func:`~smallpond.io.paths.listable_name`). Paths as given unless
    ``resolve``: the files globs and folders stand for, which reads directories (at plan time, not
    while the plan is built)."""
    if sink.type != "manifest":
        return []
    out, seen, todo = [], set(), list(sink.input_deps)
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, DataSourceNode):
            paths = node.dataset.resolved_paths if resolve else node.dataset.absolute_paths
            out.extend(p for p in paths if unlistable(p))
        elif node.passes_input_files:
            todo.extend(node.input_deps)
    return out


class RootNode(Node):
    """A virtual node that depends on every node that must run."""

    def __init__(self, ctx: Context, input_deps: Sequence[Node]) -> None:
        super().__init__(ctx, input_deps)

    def partition_shape(self) -> Shape:
        for d in self.input_deps:
            d.partition_shape()
        return ()


class ConsolidateNode(Node):
    """Merge partitions, keeping only the given dimensions (no data is moved)."""

    passes_input_files = True

    def __init__(self, ctx: Context, input_dep: Node, dimensions: List[str]) -> None:
        super().__init__(ctx, (input_dep,))
        self.dimensions = list(dimensions)

    def partition_shape(self) -> Shape:
        shape = self.input_deps[0].partition_shape()
        dims = [d for d, _ in shape]
        missing = [d for d in self.dimensions if d not in dims]
        if missing:
            raise PlanError(self._msg(f"dimensions {missing} are not among the input's dimensions {dims}"))
        return tuple((d, n) for d, n in shape if d in self.dimensions)


class UnionNode(Node):
    """Concatenate the partitions of several inputs with the same partition dimensions."""

    passes_input_files = True

    def __init__(self, ctx: Context, input_deps: Sequence[Node]) -> None:
        super().__init__(ctx, input_deps)
        if not self.input_deps:
            raise ParameterError(self._msg("UnionNode needs at least one input"))

    def partition_shape(self) -> Shape:
        shapes = [d.partition_shape() for d in self.input_deps]
        dims = {tuple(d for d, _ in s) for s in shapes}
        if len(dims) != 1:
            raise PlanError(self._msg(f"all inputs of a union must have the same partition dimensions, got {shapes}"))
        return shapes[0]

    @property
    def num_partitions(self) -> int:
        return sum(d.num_partitions for d in self.input_deps)


class ProjectionNode(Node):
    """Select columns (or DuckDB expressions) and add generated columns, without moving data."""

    passes_input_files = True

    def __init__(
        self,
        ctx: Context,
        input_dep: Node,
        columns: Optional[List[str]] = None,
        generated_columns: Optional[List[str]] = None,
        union_by_name: Optional[bool] = None,
    ) -> None:
        super().__init__(ctx, (input_dep,))
        columns = list(columns) if columns is not None else ["*"]
        generated_columns = list(generated_columns or [])
        overlap = set(columns) & set(generated_columns)
        if overlap:
            raise ParameterError(self._msg(f"columns and generated_columns overlap: {sorted(overlap)}"))
        from smallpond.common import GENERATED_COLUMNS

        bad = [c for c in generated_columns if c not in GENERATED_COLUMNS]
        if bad:
            raise ParameterError(self._msg(f"generated_columns must be among {list(GENERATED_COLUMNS)}, got {bad}"))
        self.columns = columns
        self.generated_columns = generated_columns
        self.union_by_name = union_by_name


def _projects(node: Node) -> bool:
    """Whether ``node`` (a projection, or a source) reads its files through a projection: the
    rows of its files are its result, not their columns (``columns=``, generated columns, a
    ``ProjectionNode`` other than ``*``, a union by name)."""
    if isinstance(node, ProjectionNode):
        return node.columns != ["*"] or bool(node.generated_columns) or bool(node.union_by_name)
    ds = getattr(node, "dataset", None) if isinstance(node, DataSourceNode) else None
    if not isinstance(ds, ParquetDataSet):
        return False
    return bool(ds.generated_columns) or ds.columns not in (None, ["*"]) or bool(ds._union_by_name)


def _file_sources(node: Node):
    """The nodes whose files ``node``'s output lists: itself, or what it reaches through nodes
    that pass their inputs' files on (splits by files or rows, unions, projections)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        if n.passes_input_files:
            todo.extend(n.input_deps)


def projection_of(node: Node) -> Optional[Node]:
    """The node that projects the files ``node``'s output lists (:func:`_projects`), if one does:
    a sink publishing those files as they are would publish every column of them."""
    return next((n for n in _file_sources(node) if _projects(n)), None)


def projection_texts(node: Node) -> List[str]:
    """The column expressions of the projections through which ``node``'s output is read (a
    ``ProjectionNode``'s columns, a source's ``columns=``, reached through nodes that pass files
    on): SQL that the tasks reading it evaluate as part of their own query (``now() as t``)."""
    texts: List[str] = []
    for n in _file_sources(node):
        if isinstance(n, ProjectionNode):
            texts.extend(n.columns)
        elif isinstance(n, DataSourceNode):
            texts.extend(getattr(n.dataset, "columns", None) or [])
    return [t for t in texts if isinstance(t, str) and t != "*"]


def files_are_the_result(node: Node) -> bool:
    """Whether the files ``node``'s output lists are its result as Parquet, so a sink may publish
    them as they are: not so for a source's files read through a projection
    (:func:`projection_of`) or of another format (CSV, JSON)."""
    for n in _file_sources(node):
        if _projects(n) or isinstance(n, DataSourceNode) and isinstance(n.dataset, (CsvDataSet, JsonDataSet)):
            return False
    return True


class LimitNode(SqlEngineNode):
    """Keep the first ``limit`` rows of the whole input (a global limit: one output partition)."""

    def __init__(self, ctx: Context, input_dep: Node, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ParameterError(call_site_msg("LimitNode", f"limit must be a non-negative integer, got {limit!r}"))
        super().__init__(ctx, (input_dep,), f"select * from {{0}} limit {int(limit)}")
        self.limit = limit

    def partition_shape(self) -> Shape:
        self.input_deps[0].partition_shape()
        return ()
