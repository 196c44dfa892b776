"""smallpond: partitioned data processing with DuckDB over Parquet on a shared filesystem.

Quick start::

    import smallpond

    sp = smallpond.init()
    df = sp.read_parquet("prices.parquet")
    df = df.repartition(3, hash_by="ticker")
    df = sp.partial_sql("SELECT ticker, min(price), max(price) FROM {0} GROUP BY ticker", df)
    df.write_parquet("output/")
    print(df.to_pandas())
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smallpond import compat as _compat

_compat.install()  # upstream import paths such as smallpond.logical.planner

if TYPE_CHECKING:
    from smallpond.dataframe import DataFrame
    from smallpond.session import Session

__all__ = ["init", "Session", "DataFrame", "__version__"]


def __getattr__(name: str):
    # looked up when asked for, without importlib.metadata (~20 ms to import, in every process)
    if name == "__version__":
        from smallpond.common import installed_version

        value = installed_version("smallpond") or "unknown"
        globals()["__version__"] = value
        return value
    if name == "Session":
        from smallpond.session import Session

        return Session
    if name == "DataFrame":
        from smallpond.dataframe import DataFrame

        return DataFrame
    raise AttributeError(f"module 'smallpond' has no attribute {name!r}")


def init(
    job_id=None,
    job_time=None,
    job_name=None,
    data_root=None,
    num_executors=None,
    ray_address=None,
    bind_numa_node=None,
    platform=None,
    _remove_output_root=True,
    *,
    random_seed=None,
    task_cache=None,
    **kwargs,
) -> "Session":
    """Start a session. With no arguments it runs embedded on this machine (no service to start).

    Each setting comes from the argument if given, else from its environment variable
    (``SP_JOBID``, ``SP_JOB_TIME``, ``SP_DATA_ROOT``, ``SP_NUM_EXECUTORS``, ``SP_RAY_ADDRESS``,
    ``SP_BIND_NUMA_NODE``, ``SP_PLATFORM``), else its default.

    Args:
        job_id: a UUID (or any string) naming the job; reuse it with the same ``data_root`` to
            resume. Default: a new UUID.
        job_time: a ``datetime``, ISO string or epoch seconds. Default: the time of the existing
            job with this id under ``data_root``, else now.
        job_name: a label for logs.
        data_root: where job directories live. Default ``~/.smallpond/data``.
        num_executors: worker processes (on Ray: attempts at once; with ``platform``: executor
            processes). Default: one per usable CPU (on Ray: per CPU of the cluster).
        ray_address: run every task on this Ray cluster instead of embedded: ``"host:port"``
            connects to a running cluster, ``"auto"`` to the one started on this machine with
            ``ray start``, ``"local"`` starts a private one for this session. Every node must
            see ``data_root`` at the same path. Needs ``pip install "smallpond[ray]"``.
            ``shutdown()`` disconnects (and stops a cluster it started).
        platform: run on the queue backend, with executors started by this platform: ``"mpi"``
            (mpirun), ``"base"`` (subprocesses), ``"manual"`` (by hand:
            ``python -m smallpond.execution.driver executor --job_id ... --data_root ...``).
            Default: embedded (also ``"local"``).
        random_seed: the seed of every random number the job's tasks draw (``random()`` in SQL,
            random shuffles, ``task.python_random_gen``, and in task code Python's ``random`` and
            NumPy's global generator, seeded per task) and of the workers' ``PYTHONHASHSEED``;
            ``SP_RANDOM_SEED``. Default: a constant, so the same plan on the same inputs gives
            the same bytes in every run; pass another to draw other numbers.
        task_cache: the folder of the task cache shared by jobs (``SP_TASK_CACHE``); default
            ``{data_root}/.smallpond/users/{uid}/task_cache`` (each user's own); ``False`` or ``"off"`` turns it off. A task whose
            parameters, code and input files match one an earlier job computed is taken from it
            instead of run (``DataFrame.recompute()`` runs it again).

    Further keyword arguments: ``speculative_exec`` (``"disable"`` (default), ``"enable"``,
    ``"aggressive"``, a bool, or a ``smallpond.execution.scheduler.Speculation``) gives straggling
    tasks a second copy on an idle worker; ``fault_inject_prob``, ``max_retry_count``,
    ``max_fail_count`` and ``console_log_level`` as for the Driver; ``elastic_threads`` gives a
    lone task idle CPUs as DuckDB threads: by default (``"safe"``) only a task whose output bytes
    cannot depend on them (its plan is a copy of scans and projections: see the README), with
    ``True`` (``SP_ELASTIC_THREADS=1``, Driver ``--elastic_threads``) also one whose SQL ends in
    ``ORDER BY`` (rows with equal sort keys may then come out in another order, and floating-point
    aggregates in that SQL may differ: outputs are no longer byte-reproducible), with ``False``
    (``SP_ELASTIC_THREADS=0``) none; ``task_cache_max_bytes``
    (``SP_TASK_CACHE_MAX_BYTES``) bounds the task cache when the session ends (least recently
    used entries go first; see :func:`smallpond.execution.cache.clean`). ``restart=True`` starts the
    job over: an existing folder of this job is moved aside to ``{folder}.restarted-{time}-{hex}``
    (never deleted), the way out when it cannot be resumed (e.g. its ``config/secret`` was lost);
    use it for one run, not permanently. ``remove_empty_parquet=True`` leaves Parquet files without
    rows out of ``write_parquet`` results (one stays if none has rows) and
    ``skip_task_with_empty_input=True`` skips SQL tasks whose input holds no rows, as the Driver's
    flags of those names do.

    Example::

        sp = smallpond.init(ray_address="10.0.0.5:6379", data_root="/shared/smallpond")
    """
    from smallpond.session import Session

    return Session(
        job_id=job_id,
        job_time=job_time,
        job_name=job_name,
        data_root=data_root,
        num_executors=num_executors,
        ray_address=ray_address,
        bind_numa_node=bind_numa_node,
        platform=platform,
        _remove_output_root=_remove_output_root,
        random_seed=random_seed,
        task_cache=task_cache,
        **kwargs,
    )
