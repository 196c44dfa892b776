"""The error hierarchy.

Two families matter to the scheduler:

* retryable: :class:`OutOfMemory`, :class:`WorkerLost`, :class:`InjectedFault`, I/O errors
  (``OSError``), and anything not classified as a user error;
* fail-fast: :class:`PlanError` / :class:`ParameterError` (bad user input found at build or plan
  time, or by a running job's plan check: :class:`QueryPlanError`) and errors marked ``retryable = False`` on a :class:`TaskError` (SQL parse/bind errors,
  unpicklable functions, missing input files).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import List, Optional


class SmallpondError(Exception):
    """Base class of every error raised by smallpond."""


class ParameterError(SmallpondError, ValueError, AssertionError):
    """A node, dataset or API call got a bad parameter. Raised when the object is built.

    It is also an ``AssertionError`` because upstream 0.15 raised bare assertions there, and
    scripts written for it may catch those.
    """


class UnknownOptionError(ParameterError, TypeError):
    """A call got a keyword option that the node it builds does not take.

    Also a ``TypeError``, which is what upstream 0.15 raised (from the node's constructor).
    """


class PlanError(SmallpondError, AssertionError):
    """The logical plan cannot be turned into tasks (e.g. incompatible partitionings, cycles).

    Also an ``AssertionError``, which is what upstream 0.15 raised at planning.
    """


class QueryPlanError(PlanError, RuntimeError):
    """A running job's plan check found a node whose query, key or columns cannot run: the job
    fails before that node's tasks do (:mod:`smallpond.execution.plancheck`).

    Also a ``RuntimeError``, as the error of the task itself is (:class:`TaskError`; upstream 0.15
    raised ``RuntimeError("failed to run query: ...")``): which of the two comes depends on whether
    the job had run for the check's delay, so a script catching one must catch the other.
    """


class InjectedFault(SmallpondError):
    """A fault injected on purpose (``fault_inject_prob``) to exercise retries."""


class OutOfMemory(SmallpondError):
    """A task ran out of memory; it is retried with a larger memory limit."""


class NonzeroExitCode(SmallpondError):
    """A worker process exited with a non-zero code."""


class WorkerLost(SmallpondError):
    """The worker process running a task died (killed, crashed, ``os._exit``), or its machine did."""


class ClusterError(SmallpondError):
    """The cluster cannot run the job: no node to run tasks on, or a node that cannot see the data root."""


class ReportedFailure(SmallpondError):
    """A task's own code reported a failure without raising (a ``process_func`` returned False).
    Retried as any failure is: the code may have met something transient (upstream 0.15 retried it too)."""


class UserCodeError(SmallpondError):
    """User input that can never succeed on retry (bad SQL, missing file, unpicklable function)."""


class ListedFileMissing(UserCodeError, FileNotFoundError):
    """A file that a result folder's ``.MANIFEST.txt`` lists is gone: the result cannot be read
    (the message names the manifest and the file). Also a ``FileNotFoundError``, which reading the
    file raised before."""


class ColumnNotFoundError(UserCodeError, KeyError):
    """A column the user named (``columns=`` of a reader or a projection) that the data does not
    have. A ``KeyError`` too, as the readers raised before; its message is not quoted as a
    ``KeyError``'s would be."""

    def __str__(self) -> str:
        return Exception.__str__(self)


def columns_not_found(missing: List[str], where: str, have: List[str], named_by: Optional[str] = None) -> ColumnNotFoundError:
    """The error for the columns ``missing`` that ``where`` (a file, a set of files, a declared
    schema, a node's input) lacks; ``have``: the columns it has; ``named_by``: the parameter that
    named them, as the user wrote it (``"columns=['zz']"``, ``"hash_columns=['k']"``)."""
    named = ", ".join(repr(c) for c in missing)
    head = f"{named_by}: " if named_by else ""
    noun = "column" if len(missing) == 1 else "columns"
    return ColumnNotFoundError(f"{head}{noun} {named} not found in {where} (its columns: {', '.join(map(str, have))})")


class TaskError(SmallpondError, RuntimeError):
    """A task failed. Carries everything needed to find the culprit.

    Also a ``RuntimeError``: upstream 0.15 surfaced failed SQL as ``RuntimeError("failed to run
    query: ...")``, and scripts written for it may catch that.

    Attributes: ``node`` (e.g. ``SqlEngineNode-000004 'name'``), ``location`` (file:line where the
    node was created), ``task_key``, ``attempt``, ``sql`` (when there is one), ``input_files``
    (the first few), ``retryable`` and the original exception as ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str = "",
        location: str = "",
        task_key: str = "",
        attempt: int = 0,
        sql: Optional[str] = None,
        input_files: Optional[List[str]] = None,
        retryable: bool = True,
        cause_type: str = "",
        details: str = "",
        decision: Optional["Decision"] = None,
        corrupt_inputs: Optional[List[str]] = None,
    ):
        self.message = message
        self.node = node
        self.location = location
        self.task_key = task_key
        self.attempt = attempt
        self.sql = sql
        self.input_files = list(input_files or [])
        #: what the scheduler does about it (see :func:`classify`); ``retryable`` is derived from it
        self.decision = Decision(decision) if decision is not None else (Decision.RETRY if retryable else Decision.FAIL)
        self.cause_type = cause_type
        #: the formatted traceback of the original exception (also in the task's log file)
        self.details = details
        #: input files written by earlier tasks of the job that turned out unreadable: the
        #: scheduler recomputes the tasks that wrote them (once) instead of failing this one
        self.corrupt_inputs: List[str] = list(corrupt_inputs or [])
        super().__init__(self._render())

    @property
    def retryable(self) -> bool:
        return self.decision is not Decision.FAIL

    def _render(self) -> str:
        lines = [f"task {self.task_key} (attempt {self.attempt}) of {self.node} failed: {self.message}"]
        if self.location:
            lines.append(f"  node created at: {self.location}")
        raised_at = _user_frame(self.details)
        if raised_at:
            lines.append(f"  raised at: {raised_at}")
        if self.sql:
            lines.append(f"  SQL: {self.sql}")
        if self.input_files:
            more = "" if len(self.input_files) <= 5 else f" (+{len(self.input_files) - 5} more)"
            lines.append(f"  input files: {', '.join(self.input_files[:5])}{more}")
        return "\n".join(lines)

    def __reduce__(self):
        return (
            _rebuild_task_error,
            (
                self.message,
                self.node,
                self.location,
                self.task_key,
                self.attempt,
                self.sql,
                self.input_files,
                self.retryable,
                self.cause_type,
                self.details,
                self.decision.value,
                self.corrupt_inputs,
            ),
        )


_FRAME = re.compile(r'^  File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<fn>[^\n]+)\n(?:    (?P<code>[^\n]*)\n)?', re.M)
# a library's file by its path alone, whichever Python wrote the traceback (a Ray worker's runtime_env
# virtualenv, another machine's interpreter): a site-packages or dist-packages folder, or an
# interpreter's standard library (lib/python3.X/, python3X.zip). (A ``pip install --target`` folder
# of another name is not told from the user's code.)
_LIBRARY_PATH = re.compile(r"[\\/](?:site-packages|dist-packages)[\\/]|[\\/]lib[\\/]python\d+\.\d+[\\/]|[\\/]python\d+\.zip[\\/]")


def _user_frame(details: str) -> str:
    """The innermost frame of a task's traceback in the user's code (not smallpond's, not an
    installed package's or the standard library's), as ``path:line, in fn: code``; "" if none."""
    if not details:
        return ""
    import os
    import sys
    import sysconfig

    own = os.path.dirname(os.path.abspath(__file__)) + os.sep
    libs = {p for k in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_paths().get(k))}
    libs |= {p for p in sys.path if p.rstrip(os.sep).endswith(("site-packages", "dist-packages"))}
    found = ""
    for m in _FRAME.finditer(details):
        path = m.group("path")
        if not os.path.isabs(path) or path.startswith(own) or any(path.startswith(p) for p in libs) or _LIBRARY_PATH.search(path):
            continue
        code = (m.group("code") or "").strip()
        found = f"{path}:{m.group('line')}, in {m.group('fn')}" + (f": {code}" if code else "")
    return found


def _rebuild_task_error(
    message,
    node,
    location,
    task_key,
    attempt,
    sql,
    input_files,
    retryable,
    cause_type,
    details="",
    decision=None,
    corrupt_inputs=None,
):
    return TaskError(
        message,
        node=node,
        location=location,
        task_key=task_key,
        attempt=attempt,
        sql=sql,
        input_files=input_files,
        retryable=retryable,
        cause_type=cause_type,
        details=details,
        decision=decision,
        corrupt_inputs=corrupt_inputs,
    )


class JobTerminated(SystemExit):
    """The job's process received SIGTERM: the job stops as on Ctrl-C (workers stopped, status
    ``interrupted``) and can be resumed by running the same command again.

    A ``SystemExit`` (exit status ``128 + signal``), so ``except Exception`` in a script does not
    swallow it and an uncaught one ends the script without a traceback.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class JobFailed(SmallpondError):
    """A job could not finish. ``errors`` holds the :class:`TaskError` of each failed task."""

    def __init__(self, message: str, errors: Optional[List[BaseException]] = None):
        self.errors = list(errors or [])
        super().__init__(message)


class Decision(str, Enum):
    """What the scheduler does after a failed attempt."""

    RETRY = "retry"
    FAIL = "fail"
    RETRY_WITH_MORE_MEMORY = "retry_with_more_memory"


# Exception types that say the input or the code is wrong: running it again cannot help.
_FAIL_FAST = (
    UserCodeError,
    ParameterError,
    PlanError,
    NotImplementedError,
    TypeError,
    KeyError,
    AttributeError,
    NameError,
    SyntaxError,
    # a task's code that raises KeyboardInterrupt does it again on a retry (its sys.exit() is
    # retried, as the crash of a worker always was: upstream's tests exit on a first attempt)
    KeyboardInterrupt,
)


def classify(exc: BaseException) -> Decision:
    """The one place that decides retry, fail, or retry with more memory, from the error's class.

    * out of memory (:class:`OutOfMemory`, ``MemoryError``) → retry with more memory;
    * user and input errors (:class:`UserCodeError`, :class:`ParameterError`, :class:`PlanError`,
      and Python's ``TypeError``, ``KeyError``, ``AttributeError``, ``NameError``,
      ``SyntaxError``, ``NotImplementedError``, and a task's ``KeyboardInterrupt``) → fail at
      once;
    * everything else (I/O errors, :class:`WorkerLost`, :class:`InjectedFault`, unknown) → retry.

    A :class:`TaskError` carries the decision made where the original exception was raised
    (in a worker, possibly another process), so it is classified once.
    """
    if isinstance(exc, TaskError):
        return exc.decision
    if isinstance(exc, (OutOfMemory, MemoryError)):
        return Decision.RETRY_WITH_MORE_MEMORY
    if isinstance(exc, _FAIL_FAST):
        return Decision.FAIL
    return Decision.RETRY
