"""The ``SP_*`` environment variables that give a job's settings: one table, read by
``smallpond.init()`` (:class:`smallpond.session.Config`) and by the Driver's command line.

For every setting: an explicit argument (or command-line flag) wins, then the variable, then the
default. An empty variable counts as unset. A value that does not convert is an error naming the
variable, never silently the default.

The job's identity (``SP_JOBID``, ``SP_JOB_TIME``, ``SP_DATA_ROOT``) and the task cache
(``SP_TASK_CACHE``) are resolved by :mod:`smallpond.execution.runtime`, for every entry point.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Tuple

from smallpond.common import SWITCH_ON
from smallpond.errors import ParameterError


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def log_level(text):
    """``text`` if it names a loguru level (``DEBUG``, ``INFO``, ``WARNING``, ...; any case), in upper
    case; else ValueError listing the levels. Checked where it is given, not when the job adds its
    console log (a bare ``Level 'x' does not exist`` from loguru, after the job folder was made)."""
    import sys

    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text  # a severity number, as loguru takes it
    name = text.strip().upper() if isinstance(text, str) else text
    if name in LOG_LEVELS:
        return name
    if "loguru" in sys.modules:  # a level the user's code added to loguru (only then can there be one)
        from smallpond.common import logger

        try:
            logger.level(name)
            return name
        except (ValueError, TypeError):
            pass
    raise ValueError(f"not a log level (one of {', '.join(LOG_LEVELS)}), got {text!r}")


#: loguru's own levels. Checked without loading loguru: a process that loaded it cannot fork its
#: first worker (execution/worker_fork.py), and a job's runtime context is made before that
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def _switch(text: str) -> bool:
    return text.strip().lower() in SWITCH_ON


#: the ``elastic_threads`` value that gives more DuckDB threads only to tasks whose output bytes
#: were shown not to depend on them (see :mod:`smallpond.execution.ops.elastic`)
ELASTIC_SAFE = "safe"
#: the default of ``elastic_threads`` everywhere (``smallpond.init``, ``RuntimeContext``, the Driver)
ELASTIC_DEFAULT = ELASTIC_SAFE


def elastic_mode(owner: str, value: Any):
    """``elastic_threads`` as ``False`` (off), ``True`` (also the opt-in ORDER BY tasks) or
    ``"safe"`` (``None``: :data:`ELASTIC_DEFAULT`): a bool, ``0``/``1`` or the text ``"safe"``,
    ``"true"``/``"false"``/``"1"``/``"0"``/``"on"``/``"off"``/``"yes"``/``"no"`` (any case).
    Anything else is refused, naming ``owner``."""
    from smallpond.common import SWITCH_OFF, is_bool

    if value is None:
        return ELASTIC_DEFAULT
    if is_bool(value) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text == ELASTIC_SAFE:
            return ELASTIC_SAFE
        if text in SWITCH_ON or text in SWITCH_OFF:
            return text in SWITCH_ON
    raise ParameterError(f"{owner}: elastic_threads must be True, False or 'safe', got {value!r}")


def _elastic(text: str):
    return elastic_mode("SP_ELASTIC_THREADS", text)


#: setting -> (variable, conversion of its text)
ENV_SETTINGS: Dict[str, Tuple[str, Callable[[str], Any]]] = {
    "num_executors": ("SP_NUM_EXECUTORS", non_negative_int),
    "platform": ("SP_PLATFORM", str),
    "ray_address": ("SP_RAY_ADDRESS", str),
    "bind_numa_node": ("SP_BIND_NUMA_NODE", lambda v: v == "1"),
    "memory_allocator": ("SP_MEMORY_ALLOCATOR", str),
    "console_log_level": ("SP_CONSOLE_LOG_LEVEL", log_level),
    "fault_inject_prob": ("SP_FAULT_INJECT_PROB", float),
    "max_retry_count": ("SP_MAX_RETRY_COUNT", int),
    "max_fail_count": ("SP_MAX_FAIL_COUNT", int),
    "speculative_exec": ("SP_SPECULATIVE_EXEC", str),
    "random_seed": ("SP_RANDOM_SEED", int),
    "task_cache_max_bytes": ("SP_TASK_CACHE_MAX_BYTES", int),
    "elastic_threads": ("SP_ELASTIC_THREADS", _elastic),
}

#: the settings the Driver's command line takes from the environment when its flag is not given
#: (``SP_RAY_ADDRESS`` only in ``ray`` mode: in ``scheduler`` mode it does not move the job to
#: Ray; ``SP_BIND_NUMA_NODE`` and ``SP_MEMORY_ALLOCATOR`` have no effect in this build and are
#: warned about, like their flags)
DRIVER_ENV_SETTINGS = (
    "num_executors",
    "platform",
    "console_log_level",
    "fault_inject_prob",
    "max_retry_count",
    "max_fail_count",
    "speculative_exec",
    "random_seed",
    "task_cache_max_bytes",
    "elastic_threads",
)


def env_value(setting: str) -> Any:
    """The value the environment gives ``setting``, or None when its variable is unset or empty."""
    var, convert = ENV_SETTINGS[setting]
    text = os.environ.get(var)
    if not text:
        return None
    try:
        return convert(text)
    except ValueError as e:
        raise ParameterError(f"environment variable {var}={text!r} is not valid: {e}") from None


def setting(arg: Any, name: str, default: Any) -> Any:
    """``arg`` if given, else the environment's value of setting ``name``, else ``default``."""
    if arg is not None:
        return arg
    value = env_value(name)
    return default if value is None else value
