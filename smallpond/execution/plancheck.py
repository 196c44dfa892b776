"""The plan check: a query that cannot run on its inputs' columns fails the job before its turn.

A SQL node far down a pipeline (after an hour of upstream stages) whose query has a typo, or a
``repartition(hash_by=...)`` naming a column its input does not have, would otherwise fail only
when its first task runs. Once a job has run for :data:`DEFAULT_DELAY` seconds, a thread of the
scheduler's process binds every SQL node's query, every hash or shuffle partition's key (a
shuffle's must be a number) and every projection's columns over empty tables typed like the node's inputs (the schemas of
:mod:`smallpond.execution.schema`, known without reading data), in DuckDB as the tasks do, and
looks up each range partition's key column. An error that cannot depend on the data
fails the job at once with a :class:`~smallpond.errors.QueryPlanError` (a ``PlanError`` and a
``RuntimeError``, as a task's own failure is) that names the node, where it
was created, the query and DuckDB's message; what the job already committed stays committed (a
rerun after the fix resumes).

Only errors that do not depend on data are reported: DuckDB's parser errors, and its binder's
``Referenced column``/``Referenced table`` errors. Anything else (a type mismatch, a missing
function, a file a query reads itself) is left to the tasks, which see the real data; so is a
missing column in a query that reads files itself (``read_parquet(...)``, ``FROM 'x.csv'``): the
job may write those files, or rewrite them with other columns, before the query runs. Not checked:
nodes whose query uses a per-task placeholder (a partition dimension), nodes with UDFs or several
statements, nodes downstream of one whose schema is only known when it runs (Python code without
``schema=``), and nodes of which a task has already finished (it ran: the query is fine).

Jobs shorter than the delay never pay for the check (it imports DuckDB in the scheduler's
process). ``SP_PLAN_CHECK`` sets the delay in seconds, or turns the check off (``off``).
"""

from __future__ import annotations

import string
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from smallpond.common import SWITCH_OFF, as_subquery, env_setting, logger
from smallpond.errors import QueryPlanError
from smallpond.execution.ops.duckdb import sql_reads_files
from smallpond.logical.base import node_at
from smallpond.logical.compute import TASK_PLACEHOLDERS

#: seconds a job runs before its plan is checked (a shorter job never pays for the check)
DEFAULT_DELAY = 1.0
#: seconds the end of a run waits for a check still binding a query (after interrupting it)
CLOSE_TIMEOUT = 5.0
#: placeholders that every task has and that do not change which columns a query names (the
#: others, partition dimensions, may differ per task: a query using one is not checked)
_CONSTANT_PLACEHOLDERS = frozenset(TASK_PLACEHOLDERS)


def check_delay() -> Optional[float]:
    """Seconds after which a job's plan is checked (``SP_PLAN_CHECK``), or None if it is off."""
    text = env_setting("SP_PLAN_CHECK").strip().lower()
    if not text:
        return DEFAULT_DELAY
    if text in SWITCH_OFF and text != "0":
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        logger.warning("SP_PLAN_CHECK={!r} is neither a number of seconds nor 'off'; using {}", text, DEFAULT_DELAY)
        return DEFAULT_DELAY


def definite(exc: BaseException) -> bool:
    """Is this DuckDB error one that no data could avoid (a syntax error, a missing column)?"""
    import duckdb

    if isinstance(exc, duckdb.ParserException):
        return True
    if isinstance(exc, duckdb.BinderException):
        text = str(exc)
        return "Referenced column" in text or "Referenced table" in text
    return False


def reads_own_data(query: str) -> bool:
    """Does the user's query read files itself (beside its inputs' ``{0}``, ``{1}``, …)? Those
    files may be written, or rewritten with other columns, by the job before the query runs, so a
    missing column there is not definite."""
    return sql_reads_files([query])


def _originals(node) -> list:
    """The nodes the user built behind ``node`` (a fused node stands for several)."""
    return list(getattr(node, "fused_from", None) or [node])


def _checked_query(node) -> Optional[str]:
    """The query of a SQL node worth checking, or None."""
    from smallpond.logical.compute import SqlEngineNode

    if not isinstance(node, SqlEngineNode) or node.udf_contexts or len(node.sql_queries) != 1:
        return None
    query = node.sql_queries[0]
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(query) if f and not f.isdigit()}
    except ValueError:
        return None
    if names - _CONSTANT_PLACEHOLDERS:
        return None  # a partition dimension: its value, and so perhaps the query, varies per task
    return query


def _checked(node) -> bool:
    from smallpond.logical.node import HashPartitionNode, ProjectionNode, RangePartitionNode

    if isinstance(node, HashPartitionNode):
        return not node.random_shuffle
    return isinstance(node, (ProjectionNode, RangePartitionNode)) or _checked_query(node) is not None


def find_errors(
    nodes: list, cancelled: threading.Event, connected: Callable = lambda conn: None
) -> List[Tuple[object, str, str]]:
    """(node, what, message) of each node in ``nodes`` whose query, partition key or columns cannot
    bind over its inputs' columns (``what``: ``query: …``, ``partition key …``, ``columns …``). ``nodes`` in the order they were created (inputs first);
    ``connected`` is given the DuckDB connection used (so that it can be interrupted)."""
    if not any(_checked(n) for n in nodes):
        return []  # (no DuckDB import for a plan of Python nodes)
    import duckdb

    from smallpond.errors import ColumnNotFoundError, UserCodeError
    from smallpond.execution.ops.partition import check_key_columns, hash_key_types, partition_key_expr
    from smallpond.execution.ops.range import key_column_of
    from smallpond.execution.schema import SchemaUnknown, _infer, _projection_schema, render_sql, scratch_connection
    from smallpond.io.arrow import empty_table
    from smallpond.logical.node import HashPartitionNode, ProjectionNode, RangePartitionNode

    schemas: Dict[int, object] = {}
    unknown: set = set()  # ids of nodes whose schema is not known: their consumers are skipped
    found = []
    conn = scratch_connection()
    connected(conn)
    try:
        for node in nodes:
            if cancelled.is_set():
                break
            if any(id(d) in unknown for d in node.input_deps):
                unknown.add(id(node))
                continue
            try:
                inputs = [_infer(d, schemas, conn) for d in node.input_deps]
            except Exception:  # SchemaUnknown, or a footer that cannot be read: the tasks will say
                unknown.add(id(node))
                continue
            query = _checked_query(node)
            if query is not None:
                try:
                    sql = as_subquery(render_sql(node, inputs, conn))
                    statements = conn.extract_statements(sql)  # a syntax error, shown in the query alone
                    if len(statements) == 1 and statements[0].type == duckdb.StatementType.SELECT:
                        conn.sql(sql)  # binds a SELECT without running it (anything else is not run here)
                except duckdb.Error as e:
                    # a column missing from a file the query reads itself may be there when it runs
                    if definite(e) and (isinstance(e, duckdb.ParserException) or not reads_own_data(query)):
                        found.append((node, f"query: {query}", str(e)))
                    unknown.add(id(node))
                except Exception as e:  # e.g. a placeholder problem: the tasks will say
                    logger.debug("plan check: {} not checked: {}", node.label, e)
                    unknown.add(id(node))
                continue
            if isinstance(node, RangePartitionNode) and len(inputs) == 1:
                try:
                    key_column_of(node, inputs[0].names)
                except UserCodeError as e:
                    found.append((node, f"key_column {node.key_column!r}", str(e)))
                    unknown.add(id(node))
                continue
            if isinstance(node, ProjectionNode) and len(inputs) == 1:
                try:
                    _projection_schema(node, inputs[0], conn)
                except SchemaUnknown as e:
                    if e.__cause__ is not None and definite(e.__cause__):
                        found.append((node, f"columns {node.columns!r}", str(e.__cause__)))
                    unknown.add(id(node))
                continue
            if isinstance(node, HashPartitionNode) and not node.random_shuffle and len(inputs) == 1:
                name = f"__plan_check_{int(node.id)}"
                conn.register(name, empty_table(inputs[0]))  # (Schema.empty_table imports pandas)
                expr, _ = partition_key_expr(node, inputs[0].names)
                what = node.hash_columns if node.hash_columns else node.data_partition_column
                try:
                    check_key_columns(node, inputs[0].names, conn)  # as the tasks say it
                    conn.execute(f"SELECT {expr} FROM {name} LIMIT 0").fetchall()
                    if node.shuffle_only:  # a key of a type that is no number fails every task
                        partition_key_expr(node, inputs[0].names, hash_key_types(conn, name, node, inputs[0].names))
                except (ColumnNotFoundError, UserCodeError) as e:
                    found.append((node, f"partition key {what!r}", str(e)))
                    unknown.add(id(node))
                except duckdb.Error as e:
                    if definite(e):
                        found.append((node, f"partition key {what!r}", str(e)))
                        unknown.add(id(node))
    finally:
        conn.close()
    return found


def case_clashes(nodes: list) -> List[Tuple[object, str, str]]:
    """(node, what, message) of each node in ``nodes`` that reads with DuckDB (SQL, hash and range
    partitioning) a Parquet source, passed on to it as files, whose file has two columns whose
    names differ only in case: DuckDB would rename one and read the other for it (see
    :func:`~smallpond.logical.dataset_files.case_clash_error`). Python code reading such files
    through pyarrow sees both columns and is not reported. Only footers are read (by the
    planner, for the nodes it plans: this needs no schema inference and no delay)."""
    from smallpond.logical.dataset_files import ParquetDataSet, case_clash_error
    from smallpond.logical.node import DataSourceNode, HashPartitionNode, RangePartitionNode, SqlEngineNode

    clash_of: Dict[int, object] = {}  # by id() of a source: its clash, or None

    def first_clash(node):
        if isinstance(node, DataSourceNode):
            if id(node) not in clash_of:
                ds = node.dataset
                try:
                    clash_of[id(node)] = case_clash_error(ds) if isinstance(ds, ParquetDataSet) and not ds.empty else None
                except Exception:  # a path that cannot be listed: the tasks will say
                    clash_of[id(node)] = None
            return (node, clash_of[id(node)]) if clash_of[id(node)] else None
        if node.passes_input_files:  # (splits, unions, consolidations, projections)
            for d in node.input_deps:
                hit = first_clash(d)
                if hit:
                    return hit
        return None

    found = []
    for node in nodes:
        if isinstance(node, (SqlEngineNode, HashPartitionNode, RangePartitionNode)):
            for d in node.input_deps:
                hit = first_clash(d)
                if hit:
                    src, clash = hit
                    found.append((node, f"input: {node_at(src)}", clash))
                    break
    return found


def nodes_to_check(planned: Sequence, node_ids: Set[int]) -> Tuple[list, Dict[int, int]]:
    """The nodes the user built behind the planned nodes whose ids are in ``node_ids``, inputs
    first, and for each (by ``id()``) the id of the planned node that runs it."""
    nodes: Dict[int, object] = {}
    owner: Dict[int, int] = {}
    for planned_node in planned:
        if int(planned_node.id) in node_ids:
            for node in _originals(planned_node):
                nodes.setdefault(id(node), node)
                owner.setdefault(id(node), int(planned_node.id))
    return sorted(nodes.values(), key=lambda n: int(n.id)), owner


def plan_error(node, what: str, message: str) -> QueryPlanError:
    """The error the check raises for ``node`` (``what``: its query, or the key or columns)."""
    return QueryPlanError(
        f"{node_at(node)} cannot run: {message.strip()}\n"
        f"{what}\n"
        "(found by binding it over empty inputs with its inputs' columns before any of its tasks "
        "ran; tasks already finished stay committed. SP_PLAN_CHECK=off turns this check off)"
    )


def errors_by_node(planned: Sequence, node_ids: Set[int]) -> Dict[int, str]:
    """Check now (a dry run): for each planned node whose id is in ``node_ids`` and whose query,
    key or columns cannot bind, a one-line reason, by the planned node's id."""
    todo, owner = nodes_to_check(planned, node_ids)
    reasons: Dict[int, str] = {}
    for node, _what, message in find_errors(todo, threading.Event()):
        first = message.strip().splitlines()[0] if message.strip() else message
        where = "" if owner[id(node)] == int(node.id) else f" (in {node.label}, fused into it)"
        reasons.setdefault(owner[id(node)], f"the plan check: {first}{where}")
    return reasons


class PlanCheck:
    """Checks a running job's plan in a thread once the job has run for ``delay`` seconds.

    The scheduler calls :meth:`tick` from its loop (it raises the error found, if any) and
    :meth:`close` when the run ends.
    """

    def __init__(self, delay: float, nodes: Callable[[], list]) -> None:
        self.delay = delay
        self._nodes = nodes  # the planned nodes (whole ones: a task carries a copy without inputs)
        self._thread: Optional[threading.Thread] = None
        self._cancelled = threading.Event()
        self._found: Optional[list] = None
        self._started_at: Optional[float] = None
        self._conn = None  # the check's DuckDB connection, while it runs

    @classmethod
    def from_environment(cls, nodes: Callable[[], list]) -> Optional["PlanCheck"]:
        delay = check_delay()
        return None if delay is None else cls(delay, nodes)

    def tick(self, state, elapsed: float) -> None:
        """Start the check when due; raise a :class:`PlanError` for the first error it found in a
        node that has not run yet."""
        if self._thread is None:
            if elapsed >= self.delay and not self._cancelled.is_set():
                self._start(state)
            return
        if not self._found:  # still running, or nothing found
            return
        found, self._found = self._found, []
        ran = self._ran_nodes(state)
        for node, what, message in found:
            if int(node.id) in ran:  # a task of it finished: the check was wrong about it
                logger.debug("plan check: {} ran although its {} did not bind: {}", node.label, what, message)
                continue
            raise plan_error(node, what, message)

    def _start(self, state) -> None:
        ran = self._ran_nodes(state)
        waiting = {t.node_id for t in list(state.tasks.values())} - ran
        todo, _ = nodes_to_check(self._nodes() if waiting else (), waiting)
        todo = [n for n in todo if int(n.id) not in ran]
        self._started_at = time.time()

        def run() -> None:
            try:
                self._found = find_errors(todo, self._cancelled, self._connected)
            except Exception as e:  # the check never fails a job by its own fault
                logger.debug("plan check could not run: {}: {}", type(e).__name__, e)
                self._found = []
            logger.debug("plan check of {} node(s) took {:.3f}s", len(todo), time.time() - self._started_at)

        # a daemon: close() waits for it, but an interpreter leaving while a query binds (a
        # query reading a slow remote file) does not hang on it
        self._thread = threading.Thread(target=run, name="smallpond-plan-check", daemon=True)
        self._thread.start()

    @staticmethod
    def _ran_nodes(state) -> set:
        """Ids of the nodes (fused ones stand for all they fused) of which a task that reads data
        finished (a projection's task only rewrites a description in the scheduler: its
        consumers read the columns)."""
        ran = set()
        for key in list(state.done):
            task = state.tasks.get(key)
            if task is not None and not task.exec_on_scheduler:
                ran.update(int(n.id) for n in _originals(task.node))
                ran.add(task.node_id)
        return ran

    def _connected(self, conn) -> None:
        self._conn = conn

    def close(self) -> None:
        """Stop the check (a query being bound is interrupted) and wait for its thread a moment."""
        self._cancelled.set()
        if self._thread is None:
            return
        conn = self._conn
        if conn is not None and self._thread.is_alive():
            try:
                conn.interrupt()
            except Exception:  # closed meanwhile
                pass
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            logger.warning("plan check: still binding a query after {}s; left behind", CLOSE_TIMEOUT)
