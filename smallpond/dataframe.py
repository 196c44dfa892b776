"""The lazy DataFrame (the Session that creates DataFrames is in :mod:`smallpond.session`).

Every DataFrame method builds one logical node and returns a new DataFrame; nothing runs until a
consumer (``compute``, ``count``, ``take``, ``to_pandas``, ``to_arrow``, ``write_parquet``) asks.
Results are computed once per session: a DataFrame derived from a computed one reuses its result.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Union

from smallpond.common import (
    DATA_PARTITION_COLUMN_NAME,
    DEFAULT_BATCH_SIZE,
    EMPTY_PLACEHOLDER_COLUMN,
    TextBlock,
    escape_braces,
    some_of,
    sql_fragment,
)
from smallpond.display import format_table, html_table
from smallpond.errors import ParameterError, UnknownOptionError
from smallpond.io.paths import user_path
from smallpond.io.sqltext import fragment_problem
from smallpond.logical.base import call_site_msg, node_at
from smallpond.logical.dataset import (
    DataSet,
    PandasDataSet,
    ParquetDataSet,
)
from smallpond.logical.node import (
    ArrowStreamNode,
    DataSinkNode,
    DataSourceNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LimitNode,
    LogicalPlan,
    Node,
    ShuffleNode,
    SqlEngineNode,
)
from smallpond.logical.structural import files_are_the_result
from smallpond.rowfuncs import FilterRows, MapBatches, MapRows

if TYPE_CHECKING:
    from smallpond.session import Session


def _sql_text(op: str, param: str, text: str, shape: str) -> str:
    """``text`` (a non-blank SQL string) as it is pasted into ``op``'s query as ``shape`` (a
    condition, a select list, an ORDER BY list: see ``io.sqltext.FRAGMENT_SHAPES``); blank text,
    or text that would not stay that part of the query (``"a) or (1=1"``, ``"b limit 1"``), is
    refused where it is given, not when its query fails to run or runs changed."""
    if not isinstance(text, str) or not text.strip():
        raise ParameterError(call_site_msg(f"DataFrame.{op}", f"{param} must be a non-empty SQL string, got {text!r}"))
    why = fragment_problem(text, shape)
    if why is not None:  # (it would change the query around it, or fail there less clearly)
        raise ParameterError(call_site_msg(f"DataFrame.{op}", f"{text!r} is not one SQL {shape}: {why}"))
    return sql_fragment(text)


def _not_honoured(op: str, param: str, why: str) -> None:
    """Warn, naming the user's call site, that ``param`` given to ``DataFrame.{op}`` has no effect."""
    import warnings

    warnings.warn(call_site_msg(f"DataFrame.{op}", f"{param} has no effect: {why}"), UserWarning, stacklevel=3)


def _options_checked(method):
    """``method`` (a transformation passing ``**kwargs`` on to the node it builds), with an
    option that node does not take refused as an UnknownOptionError (a ParameterError and a
    TypeError, as upstream raised) naming the method and the user's
    call site, not a TypeError from inside the node's constructor."""
    import functools
    import re

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except TypeError as e:
            m = re.search(r"unexpected keyword argument '([^']+)'", str(e))
            if m is None or m.group(1) not in kwargs:
                raise
            raise UnknownOptionError(
                call_site_msg(f"DataFrame.{method.__name__}", f"takes no option {m.group(1)!r} ({type(e).__name__}: {e})")
            ) from None

    return checked


def _schema_arg(op: str, schema):
    """``schema=`` of a Python ``map``/``flat_map``/``map_batches`` as a ``pyarrow.Schema`` (None
    stays None; a list of ``(name, type)`` pairs or a dict of name → type is converted as
    ``pa.schema`` does), refused where it is given when it is not one: a dict of type names
    DuckDB spells (``{"x": "int"}``) failed inside the task with an AttributeError."""
    if schema is None:
        return None
    import pyarrow as pa

    if isinstance(schema, pa.Schema):
        return schema
    if not isinstance(schema, (str, bytes)):
        try:
            return pa.schema(schema)
        except (TypeError, ValueError, pa.ArrowException) as e:
            why = f" ({type(e).__name__}: {e})"
    else:
        why = ""
    raise ParameterError(
        call_site_msg(
            f"DataFrame.{op}",
            f"schema must be a pyarrow.Schema, e.g. pa.schema([('x', pa.int64())]), got {type(schema).__name__} {schema!r}{why}",
        )
    )


_SQL_SCHEMA = "it types a Python function's output; a SQL select list is typed by DuckDB (cast in the SQL: 'x::BIGINT AS x')"


#: options of ``random_shuffle`` that only its partition step takes (the sort step is SQL)
_SHUFFLE_PARTITION_OPTIONS = ("engine_type", "use_parquet_writer", "hive_partitioning", "num_producers", "dimension", "nested")


def _tag(node: Node, op: str) -> Node:
    node.df_op = op
    return node


class DataFrame:
    """A lazy, partitioned table. Build with :class:`Session` methods; nothing runs until asked."""

    def __init__(self, session: "Session", plan: Node, recompute: bool = False) -> None:
        self.session = session
        self.plan = plan
        self.optimized_plan: Optional[Node] = None
        self.need_recompute = recompute
        session._nodes.append(plan)

    def __str__(self) -> str:
        return repr(self.plan)

    def __repr__(self) -> str:
        """The node, its partition count, whether it is computed, and its schema (never runs anything)."""
        lines = [self._headline()]
        schema, why = self._known_schema()
        if schema is not None:
            lines.extend(f"  {f.name}: {f.type}" for f in schema)
        else:
            lines.append(f"  schema: {why}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A notebook's view: the schema, and the first rows when the result is already computed."""
        import html

        schema, why = self._known_schema()
        out = [f"<div><b>{html.escape(self._headline())}</b>"]
        if schema is None:
            out.append(f"<p>schema: {html.escape(why)}</p></div>")
            return "".join(out)
        out.append("<table><tr><th>column</th><th>type</th></tr>")
        out.extend(f"<tr><td>{html.escape(f.name)}</td><td>{html.escape(str(f.type))}</td></tr>" for f in schema)
        out.append("</table>")
        if self.is_computed():
            try:
                out.append(f"<p>first rows:</p>{html_table(self._head(10))}")
            except Exception:
                pass
        out.append("</div>")
        return "".join(out)

    def _headline(self) -> str:
        state = "computed" if self._is_computed_quietly() else "not computed"
        return f"DataFrame[{self.plan.label}] {self._num_partitions_str()} partition(s), {state}"

    def _is_computed_quietly(self) -> bool:
        try:
            return self.is_computed()
        except Exception:
            return False

    def _known_schema(self):
        """(schema, None) when known without running anything, else (None, why not)."""
        from smallpond.execution.schema import SchemaUnknown, infer_schema

        try:
            return infer_schema(self.plan, self.session._schemas), None
        except SchemaUnknown as e:
            if self._is_computed_quietly():
                try:
                    return self._result_schema(), None
                except Exception:
                    pass
            return None, f"known once computed ({e})"
        except Exception as e:  # a repr never raises
            return None, f"unknown ({type(e).__name__}: {e})"

    @property
    def schema(self):
        """The ``pyarrow.Schema`` of the result, known before running where possible.

        Sources and SQL are described by DuckDB over empty inputs (no data is read); a Python
        ``map``/``flat_map`` without ``schema=`` (or another user-code node) is computed first,
        and the schema is that of its result (which is kept, as for any consumer).

        >>> sp.from_items([{"a": 1, "b": "x"}]).map("a + 1 as c, b").schema
        c: int64
        b: string
        """
        from smallpond.execution.schema import SchemaUnknown, infer_schema

        try:
            return infer_schema(self.plan, self.session._schemas)
        except SchemaUnknown:
            schema = self._result_schema()
            self.session._schemas[id(self.plan)] = schema
            return schema

    def _what(self) -> str:
        """The frame's node, as errors name it: its label and where it was created."""
        return node_at(self.plan)

    def _result_schema(self):
        from smallpond.execution.partition_schemas import result_schema
        from smallpond.io.arrow import empty_table

        datasets = self._datasets()
        schema = result_schema(datasets, self._what())
        if schema is not None:
            return _nullable(empty_table(schema)).schema
        return _read(datasets[0], self._what()).schema.remove_metadata() if datasets else _nullable(self.to_arrow()).schema

    def _num_partitions_str(self) -> str:
        try:
            return str(self.plan.num_partitions)
        except Exception:
            return "?"

    def _new(self, node: Node, op: str) -> "DataFrame":
        return DataFrame(self.session, _tag(node, op), recompute=self.need_recompute)

    @property
    def _ctx(self):
        return self.session._ctx

    @property
    def num_partitions(self) -> int:
        return self.plan.num_partitions

    # -- transformations -------------------------------------------------------------------------
    @_options_checked
    def repartition(
        self,
        npartitions: int,
        hash_by: Union[str, List[str], None] = None,
        by: Optional[str] = None,
        by_rows: bool = False,
        **kwargs,
    ) -> "DataFrame":
        """Split into ``npartitions`` partitions.

        * ``hash_by``: rows with equal values of these columns go to the same partition;
        * ``by``: a column or SQL expression whose value, a whole number in ``[0, npartitions)``, is
          the partition (an integer, a boolean, or a float holding a whole number: 1.5 fails the
          task, not rounded; see ``ShuffleNode``);
        * otherwise by files, or by rows with ``by_rows=True``.
        """
        if "by_row" in kwargs:  # the name upstream's documentation uses
            by_rows = bool(kwargs.pop("by_row")) or by_rows
        if by is not None and hash_by is not None:
            raise ParameterError("repartition: give either hash_by or by, not both")
        if by_rows and (by is not None or hash_by is not None):
            _not_honoured(
                "repartition", "by_rows=True", f"each row goes where {'by=' if by is not None else 'hash_by='} sends it"
            )
        if by is not None:
            node = ShuffleNode(
                self._ctx, (self.plan,), npartitions, by, dimension=kwargs.pop("dimension", DATA_PARTITION_COLUMN_NAME), **kwargs
            )
        elif hash_by is not None:
            kwargs.setdefault("drop_partition_column", True)
            node = HashPartitionNode(self._ctx, (self.plan,), npartitions, hash_by, **kwargs)
        else:
            node = EvenlyDistributedPartitionNode(self._ctx, (self.plan,), npartitions, partition_by_rows=by_rows, **kwargs)
        return self._new(node, "repartition")

    @_options_checked
    def random_shuffle(self, **kwargs) -> "DataFrame":
        """Shuffle rows randomly across and within partitions (same number of partitions).

        Two steps run: a random partition, then a sort by ``random()`` in each partition. Resource
        options (``cpu_limit``, ``memory_limit``, Parquet writer options) apply to both;
        ``output_name``/``output_path`` name the result (the second step's output), and the
        partition's own options (``engine_type``, ...) go to the first step.
        """
        n = self.plan.num_partitions
        # passed to both steps, output_name put the shuffled intermediate files in the named
        # output beside the result: every row appeared there twice
        result_only = {k: kwargs.pop(k) for k in ("output_name", "output_path") if k in kwargs}
        partition_only = {k: kwargs.pop(k) for k in _SHUFFLE_PARTITION_OPTIONS if k in kwargs}
        part = HashPartitionNode(
            self._ctx, (self.plan,), n, random_shuffle=True, drop_partition_column=True, **partition_only, **kwargs
        )
        _tag(part, "random_shuffle")
        node = SqlEngineNode(self._ctx, (part,), "select * from {0} order by random()", **result_only, **kwargs)
        return self._new(node, "random_shuffle")

    @_options_checked
    def partial_sort(self, by: Union[str, List[str]], **kwargs) -> "DataFrame":
        """Sort each partition by ``by`` (items like ``"b desc"`` are allowed).

        Items are SQL, written by the caller: a column whose name is not a plain identifier must be
        quoted in it (``'"unit price" desc'``; :func:`smallpond.common.quote_identifier` does it).
        Braces in an item are its own text (a column ``x{y}``), never a placeholder. An item is
        checked as a filter's condition is, and may not hold a clause of its own outside
        parentheses (``"b limit 1"``): it is refused where it is given.

        Rows with equal keys come out in an order DuckDB chooses: not the input's (its sort is not
        stable), the same on every run with one thread (the default ``cpu_limit``) as long as the
        task gets the same memory (a sort that spills orders them otherwise), another with more
        threads (``cpu_limit``, elastic threads). ``"columns(*)"`` as the last item breaks ties by
        every column, so the same bytes are written with any memory and at any thread count
        (elastic threads, or ``cpu_limit`` with ``per_thread_output=False``), but for rows
        differing only in a zero's sign, a NaN's bits or an interval's spelling, at 1.3x to 1.85x
        the sort's CPU.

        >>> from smallpond.common import quote_identifier
        >>> df = sp.from_items([{"x{y}": 2}, {"x{y}": 1}])
        >>> df.partial_sort(by=quote_identifier("x{y}") + " desc").take_all()
        [{'x{y}': 2}, {'x{y}': 1}]
        """
        cols = [by] if isinstance(by, str) else list(by) if isinstance(by, (list, tuple)) else None
        if not cols:
            raise ParameterError(call_site_msg("DataFrame.partial_sort", f"by must be a column or a list of them, got {by!r}"))
        order = ", ".join(escape_braces(_sql_text("partial_sort", "by", c, "order by list")) for c in cols)
        return self._new(
            SqlEngineNode(self._ctx, (self.plan,), f"select * from {{0}} order by {order}", **kwargs), "partial_sort"
        )

    @_options_checked
    def filter(self, sql_or_func: Union[str, Callable[[Dict[str, Any]], bool]], **kwargs) -> "DataFrame":
        """Keep rows where a SQL condition or a Python predicate on the row dict is true.

        A SQL condition is one expression: text that closes a parenthesis it did not open (``"a >
        1) or (1=1"``), leaves one open, holds a ``;``, leaves a string, quoted name or comment
        open or holds a clause of its own outside parentheses (``"a > 1 group by a"``; a condition
        that is a query, ``"select ... limit 1"``, is a subquery with its own) is refused where it
        is given (read as DuckDB reads it: strings, E-strings, dollar quotes, quoted names and
        nested comments are the condition's own text).
        The SQL is formatted as :meth:`Session.partial_sql`'s query is (as upstream does): ``{0}``
        is the input, and a brace of its own is doubled (``{{``, ``}}``).
        :func:`smallpond.common.escape_braces` doubles those of a quoted value or name.

        >>> df = sp.from_items([1, 2, 3, 4])
        >>> df.filter("item % 2 = 0").take_all()
        [{'item': 2}, {'item': 4}]
        >>> df.filter(lambda row: row["item"] > 2).take_all()
        [{'item': 3}, {'item': 4}]
        >>> from smallpond.common import escape_braces, quote_literal
        >>> sp.from_items(["a{0}b", "c"]).filter("item = " + escape_braces(quote_literal("a{0}b"))).take_all()
        [{'item': 'a{0}b'}]
        """
        if isinstance(sql_or_func, str):
            cond = _sql_text("filter", "sql_or_func", sql_or_func, "condition")
            return self._new(SqlEngineNode(self._ctx, (self.plan,), f"select * from {{0}} where ({cond})", **kwargs), "filter")
        if callable(sql_or_func):
            return self._python_op("filter", FilterRows(sql_or_func), None, kwargs)
        raise ParameterError(f"filter expects a SQL string or a function, got {type(sql_or_func).__name__}")

    @_options_checked
    def map(self, sql_or_func: Union[str, Callable[[Dict[str, Any]], Dict[str, Any]]], *, schema=None, **kwargs) -> "DataFrame":
        """Map each row: a SQL select list (``"a + b as c"``) or a function row dict → dict.

        ``schema`` (a ``pa.Schema``) fixes the output columns and types of a Python function;
        without it they are those of the first batch of rows (``streaming_batch_size``, 122880 by
        default) whose values are not all None. Values are never changed to fit: a later row with
        a value the type cannot hold as it is (1.5 where the first batch had only integers, a
        string in a number column) or a key the schema lacks fails the task, naming the column;
        pass ``schema=`` then. An integer in a float column is stored as it is. A key missing from
        a row gives a null. Each partition types its own output: types that widen without changing
        a value unify when read (null, int32 with int64, int with float); any other difference (an
        int in one partition, a string in another) fails, naming both tasks and types.

        SQL is formatted as in :meth:`filter`: braces of its own are doubled
        (:func:`smallpond.common.escape_braces`). It is checked as a filter's condition is, and
        may not hold a clause of its own outside parentheses (``"a from t union all select b"``,
        ``"a limit 1"``): it is refused where it is given.

        >>> df = sp.from_items([{"a": 1, "b": 4}, {"a": 2, "b": 5}])
        >>> df.map("a + b as c").take_all()
        [{'c': 5}, {'c': 7}]
        >>> df.map(lambda row: {"c": row["a"] * row["b"]}).take_all()
        [{'c': 4}, {'c': 10}]
        >>> from smallpond.common import escape_braces, quote_identifier
        >>> sp.from_items([{"{0}": 3}]).map(escape_braces(quote_identifier("{0}")) + " as k").take_all()
        [{'k': 3}]
        """
        if isinstance(sql_or_func, str):
            select = _sql_text("map", "sql_or_func", sql_or_func, "select list")
            if schema is not None:
                _not_honoured("map", "schema=", _SQL_SCHEMA)
            return self._new(SqlEngineNode(self._ctx, (self.plan,), f"select {select} from {{0}}", **kwargs), "map")
        if callable(sql_or_func):
            schema = _schema_arg("map", schema)
            return self._python_op("map", MapRows(sql_or_func, schema, flat=False), schema, kwargs)
        raise ParameterError(f"map expects a SQL string or a function, got {type(sql_or_func).__name__}")

    @_options_checked
    def flat_map(
        self, sql_or_func: Union[str, Callable[[Dict[str, Any]], List[Dict[str, Any]]]], *, schema=None, **kwargs
    ) -> "DataFrame":
        """Map each row to zero or more rows: SQL (``"unnest(array[a, b]) as c"``) or a function → list of dicts.

        ``schema`` works as for :meth:`map`; SQL is formatted as in :meth:`filter`.

        >>> df = sp.from_items([{"a": 1, "b": 4}, {"a": 2, "b": 5}])
        >>> df.flat_map(lambda row: [{"c": row["a"]}, {"c": row["b"]}]).take_all()
        [{'c': 1}, {'c': 4}, {'c': 2}, {'c': 5}]
        """
        if isinstance(sql_or_func, str):
            select = _sql_text("flat_map", "sql_or_func", sql_or_func, "select list")
            if schema is not None:
                _not_honoured("flat_map", "schema=", _SQL_SCHEMA)
            return self._new(SqlEngineNode(self._ctx, (self.plan,), f"select {select} from {{0}}", **kwargs), "flat_map")
        if callable(sql_or_func):
            schema = _schema_arg("flat_map", schema)
            return self._python_op("flat_map", MapRows(sql_or_func, schema, flat=True), schema, kwargs)
        raise ParameterError(f"flat_map expects a SQL string or a function, got {type(sql_or_func).__name__}")

    @_options_checked
    def map_batches(self, func: Callable, *, batch_size: int = DEFAULT_BATCH_SIZE, schema=None, **kwargs) -> "DataFrame":
        """Apply ``func(pa.Table) -> pa.Table`` to batches of exactly ``batch_size`` rows (the last may be smaller).

        ``schema`` (a ``pa.Schema``) fixes the output columns and types; without it they are those
        of the first batch's output. Every batch must return these columns: one more or one
        missing fails the task, naming it. A batch is cast to the types only when no value changes
        (int64 values into a float64 column, string into large_string); values that do not fit
        (1.5 in an int64 column) fail the task, naming the column: pass ``schema=`` with a type
        that holds them.

        >>> import pyarrow as pa
        >>> sizes = sp.from_items(list(range(10))).map_batches(lambda t: pa.table({"n": [t.num_rows]}), batch_size=4)
        >>> [row["n"] for row in sizes.take_all()]
        [4, 4, 2]
        """
        if not callable(func):
            raise ParameterError(f"map_batches expects a function, got {type(func).__name__}")
        schema = _schema_arg("map_batches", schema)
        if kwargs.pop("streaming_batch_size", None) is not None:
            _not_honoured("map_batches", "streaming_batch_size=", f"batch_size= ({batch_size}) sets the size of the batches")
        return self._python_op("map_batches", MapBatches(func, schema), schema, dict(kwargs, streaming_batch_size=batch_size))

    def _python_op(self, op: str, fn, schema, kwargs) -> "DataFrame":
        if kwargs.pop("output_schema", None) is not None:
            _not_honoured(op, "output_schema=", "the output's columns and types are given by schema=")
        node = ArrowStreamNode(self._ctx, (self.plan,), process_func=fn, **kwargs)
        node.output_schema = schema
        fn.describe = op
        return self._new(node, op)

    def limit(self, limit: int) -> "DataFrame":
        """The first ``limit`` rows of the whole DataFrame, as one partition.

        >>> sp.from_items(list(range(100))).repartition(10, by_rows=True).limit(3).count()
        3
        """
        return self._new(LimitNode(self._ctx, self.plan, limit), "limit")

    def recompute(self) -> "DataFrame":
        """Compute this DataFrame's own node again next time instead of reusing its result (from
        this session, this job's commits or the task cache); its inputs are reused as before.
        Frames derived from it inherit the flag and run their own node again too. Returns self."""
        self.need_recompute = True
        self._recomputed = False
        return self

    # -- consumers -------------------------------------------------------------------------------
    def _compute(self) -> List[DataSet]:
        return self.session._compute_frames([self])[0]

    def compute(self) -> None:
        """Run the computation (results are kept for later consumers)."""
        self._compute()

    def is_computed(self) -> bool:
        """True if this DataFrame's result is available without running anything."""
        node = self.optimized_plan or self.session._optimized.get(id(self.plan)) or self.plan
        return self.session._is_done(node)

    def _datasets(self) -> List[DataSet]:
        return self._compute()

    def count(self) -> int:
        """Number of rows.

        >>> sp.from_items([1, 2, 3]).count()
        3
        """
        return sum(ds.num_rows for ds in self._datasets())

    def take(self, limit: int) -> List[Dict[str, Any]]:
        """The first ``limit`` rows as dicts."""
        return self._head(limit).to_pylist()

    def _head(self, limit: int, call: str = "take(limit)"):
        """The first ``limit`` rows as a ``pyarrow.Table`` (computing only what they need);
        ``call`` names the parameter in the error of a bad ``limit``."""

        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ParameterError(f"{call} needs a non-negative integer, got {limit!r}")
        source = self if (self.is_computed() or isinstance(self.plan, DataSourceNode)) else self.limit(limit)
        tables, n = [], 0
        for ds in source._datasets():
            if n >= limit and tables:
                break
            t = _read(ds, self._what())
            # (bounded by the rows it has: pyarrow gives a table of no columns the length asked
            # for, so a result of no rows and unknown columns took as ``limit`` empty rows)
            t = t.slice(0, max(0, min(t.num_rows, limit - n)))
            tables.append(t)
            n += t.num_rows
        return self._concat(tables)

    def show(self, n: int = 20) -> None:
        """Print the first ``n`` rows as a table, with column types (computes only what they need).

        >>> sp.from_items([{"a": 1, "b": "x"}, {"a": 2, "b": None}]).show()
        a     | b
        int64 | string
        ------+-------
            1 | x
            2 | null
        (2 rows)
        """
        print(format_table(self._head(n, "show(n)"), n))

    def take_all(self) -> List[Dict[str, Any]]:
        """Every row as dicts, in partition order."""
        return self.to_arrow().to_pylist()

    def to_arrow(self):
        """The whole result as one ``pyarrow.Table`` (partitions in order)."""

        what = self._what()
        return self._concat([_read(ds, what) for ds in self._datasets()])

    def _concat(self, tables: list):
        """The partitions' tables as one (those with columns; placeholders of unknown columns left
        out): as they are when their types agree, else with strings as large strings, else
        conformed to the frame's schema."""
        import pyarrow as pa

        tables = [t for t in tables if _has_columns(t)] or tables[:1]
        if not tables:
            return pa.table({})
        if len(tables) == 1:
            return tables[0]
        if not self._schema_declared():
            # partitions of Python code without schema= typed their columns on their own: types
            # that widen without changing a value unify, anything else is an error (never a cast
            # that changes values, never the first partition's type imposed on the others)
            from smallpond.io.partition_types import concat_partitions

            return concat_partitions(tables, self._what())
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            from smallpond.io.arrow import cast_columns_to_large_string

            tables = [cast_columns_to_large_string(t) for t in tables]
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # partitions that typed a column differently (files unioned by name, each partition
            # over its own files: int64 in one, string in another): the frame's schema, which
            # DuckDB gave for all the files, decides, as a query over the whole frame would
            return pa.concat_tables([_conform(t, self.schema) for t in tables], promote_options="permissive")

    def _schema_declared(self) -> bool:
        """Is the frame's schema known without running it (sources, SQL over them, schema=)?"""
        from smallpond.execution.schema import SchemaUnknown, infer_schema

        try:
            infer_schema(self.plan, self.session._schemas)
        except SchemaUnknown:
            return False
        except Exception:
            return True  # (what the old path then does: conform to the schema, or say why not)
        return True

    def to_pandas(self):
        """The whole result as one ``pandas.DataFrame``, partitions in order, each numbered from 0
        (upstream concatenates the partitions' frames without resetting the index: ``[0, 1, 0]``
        for partitions of 2 and 1 rows); of a frame made by ``from_pandas(df)``, a copy of ``df``
        itself (its index and dtypes kept, as upstream's)."""
        import pandas as pd

        node = self.plan
        if type(node) is DataSourceNode and isinstance(node.dataset, PandasDataSet):
            return node.dataset.to_pandas().copy()
        what = self._what()
        tables = [_read(ds, what) for ds in self._datasets()]
        frame = self._concat(tables).to_pandas()
        index = pd.RangeIndex(0)
        ranges = [pd.RangeIndex(t.num_rows) for t in tables if t.num_rows]
        if ranges:
            index = ranges[0].append(ranges[1:])  # RangeIndexes append as pd.concat joins them
        if len(index) == len(frame):
            frame.index = index
        return frame

    def write_parquet(self, path: str, mode: str = "overwrite") -> None:
        """Write the result as Parquet files into directory ``path`` (published all at once; a
        leading ``~`` is the home directory).

        ``mode`` says what happens when ``path`` has content (Spark's names):

        * ``"overwrite"`` (default): an earlier smallpond result there (the files its
          ``.MANIFEST.txt`` lists) is replaced. A folder holding other files, or a listed file a
          user replaced or modified since, is refused before anything runs, naming them: a file
          smallpond did not write is never deleted. So is a result this data root has no record
          of publishing (written by an older smallpond, by a job with another data root, or a
          manifest written by hand): remove it yourself if it may go;
        * ``"append"``: the new files are added under names that cannot collide;
        * ``"error"`` / ``"errorifexists"``: a folder that is not empty is refused;
        * ``"ignore"``: a folder that is not empty is left as it is, and nothing is computed.

        A ``path`` that overlaps an input of the job is refused too.
        """
        self.write_parquet_lazy(path, mode).compute()

    def write_parquet_lazy(self, path: str, mode: str = "overwrite") -> "DataFrame":
        """Like :meth:`write_parquet` but lazy: returns the DataFrame of the written files."""
        if not isinstance(path, str) or not path:
            raise ParameterError(f"write_parquet needs a directory path, got {path!r}")
        plan = self.plan
        if not files_are_the_result(plan):  # CSV/JSON files, or Parquet files read with columns=
            plan = _tag(SqlEngineNode(self._ctx, (plan,), "select * from {0}"), "write_parquet")
        node = DataSinkNode(self._ctx, (plan,), os.path.abspath(user_path(path)), type="link_or_copy", mode=mode)
        return self._new(node, "write_parquet")

    def explain(self, dry_run: bool = False) -> str:
        """The logical plan and the optimized plan, with partition counts.

        Nodes whose output may differ between two runs are marked ``[may differ between runs:
        why]`` (multi-threaded SQL without ORDER BY, user Python, SQL reading the clock).
        With ``dry_run=True`` a third section, ``== What will run ==``, lists each task that
        computing this DataFrame would run (and why: never computed, which input file, parameter
        or upstream task changed) or reuse (from this session, this job's commits or the task
        cache), without running anything.

        The result is a ``str`` that a notebook or the REPL shows as its lines.

        A ``filter`` followed by a ``map`` runs as one SQL query in the optimized plan:

        >>> df = sp.from_items([1, 2, 3]).repartition(2, by_rows=True).filter("item > 1").map("item * 10 as x")
        >>> print(df.explain())  # doctest: +ELLIPSIS
        == Logical plan ==
        SqlEngineNode-... (DataFrame.map) [2 partition(s)] sql='select item * 10 as x from {0}'  @ ...
          SqlEngineNode-... (DataFrame.filter) [2 partition(s)] sql='select * from {0} where (item > 1)'  @ ...
            EvenlyDistributedPartitionNode-... (DataFrame.repartition) [2 partition(s)]  @ ...
              DataSourceNode-... [1 partition(s)] ArrowTableDataSet(3 rows, columns ['item'])  @ ...
        <BLANKLINE>
        == Optimized plan ==
        SqlEngineNode-... (DataFrame.map) [2 partition(s)] sql='select item * 10 as x from (select * from {0} where (item > 1))'  @ ...
          EvenlyDistributedPartitionNode-... (DataFrame.repartition) [2 partition(s)]  @ ...
            DataSourceNode-... [1 partition(s)] ArrowTableDataSet(3 rows, columns ['item'])  @ ...
        """
        from smallpond.logical.optimizer import optimize

        frozen = set(self.session._node_to_tasks)
        memo = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.session._optimized.items()}
        opt = optimize(self.plan, frozen, memo)
        logical = LogicalPlan(self._ctx, self.plan).explain_str()
        optimized = LogicalPlan(self._ctx, opt).explain_str()
        text = f"== Logical plan ==\n{logical}\n\n== Optimized plan ==\n{optimized}"
        if dry_run:
            text += f"\n\n== What will run ==\n{self.session._job.dry_run_nodes([opt])}"
        return TextBlock(text)


def _read(ds: DataSet, what: str = ""):
    """A partition's rows, read in this process; a read that fails names the files and ``what``
    (the frame's node and where it was created)."""
    if isinstance(ds, ParquetDataSet) and not ds._has_expressions() and not ds.generated_columns:
        return _nullable(ds.to_arrow_table())
    import duckdb

    conn = duckdb.connect()
    try:
        return _nullable(ds.to_arrow_table(conn=conn))
    except duckdb.Error as e:  # (a CSV row that does not parse, ...): say which files were read
        try:
            paths = list(ds.resolved_paths)
        except Exception:
            raise e from None
        if not paths:
            raise
        where = some_of(paths)
        raise type(e)(f"{e}\n  reading {where}" + (f"\n  for {what}" if what else "")) from e
    finally:
        conn.close()


def _has_columns(table) -> bool:
    """Whether a partition's table has real columns: not none, and not only the placeholder
    column SQL over an empty input of unknown columns sees (with no rows), which other partitions'
    columns must not be unioned with."""
    if table.num_columns == 0:
        return False
    return not (table.num_rows == 0 and table.column_names == [EMPTY_PLACEHOLDER_COLUMN])


def _nullable(table):
    """The table with every top-level field nullable (no data is copied).

    DuckDB >= 1.5 marks a Parquet column REQUIRED when its statistics show no NULLs, so results
    would come back as e.g. ``int64 not null`` depending on the data; upstream (DuckDB 1.2) always
    returned nullable fields, and ``df.to_arrow() == pa.table(...)`` relies on that.
    """
    import pyarrow as pa

    if all(f.nullable for f in table.schema):
        return table
    schema = pa.schema([f.with_nullable(True) for f in table.schema], metadata=table.schema.metadata)
    return pa.Table.from_arrays(table.columns, schema=schema)


def __getattr__(name: str):
    # upstream's import path: ``from smallpond.dataframe import Session``
    if name == "Session":
        from smallpond.session import Session

        return Session
    raise AttributeError(f"module 'smallpond.dataframe' has no attribute {name!r}")


def _conform(table, schema):
    """``table`` with each column that ``schema`` has cast to its type there (string types as large)."""
    import pyarrow as pa

    from smallpond.io.arrow import cast_columns_to_large_string, empty_table

    target = cast_columns_to_large_string(empty_table(schema)).schema
    columns = [
        table.column(i).cast(target.field(name).type) if name in target.names else table.column(i)
        for i, name in enumerate(table.column_names)
    ]
    return pa.table(columns, names=table.column_names)
