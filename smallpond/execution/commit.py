"""Commit records: a task is complete if and only if ``staging/completed_tasks/{key}.commit`` exists.

A record is signed with the job's secret and written atomically once the task's output folder has
its final name (:func:`write_commit`); reading one (:func:`read_commit`) trusts it only if it is
intact, signed, of the task's fingerprint and its outputs exist. A torn or damaged record counts
as absent; one that is intact but not signed by this job raises. :func:`remove_orphan_outputs`
removes the task output folders no record claims.
"""

from __future__ import annotations

import os
import pickle
from typing import List, Optional

from smallpond.execution.attempt_files import ATTEMPT_DIR
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.task import Task
from smallpond.io.filesystem import (
    CorruptRecord,
    atomic_write_bytes,
    create_whole,
    read_file,
    remove_path,
    signed_bytes,
    verified_payload,
)
from smallpond.logical.dataset import DataSet, PartitionedDataSet

#: the suffix :func:`set_aside` gives a damaged commit record of a task nothing needs
DAMAGED = ".damaged"


def commit_path(rt: RuntimeContext, key: str) -> str:
    return os.path.join(rt.completed_task_dir, f"{key}.commit")


def _signed_record(rt: RuntimeContext, record: dict, second: Optional[bytes] = None) -> bytes:
    payload = _fast_pickle(record)
    if payload is None:
        import cloudpickle

        payload = cloudpickle.dumps(record)
    # the format of io.filesystem.dump, without cloudpickle's per-object hooks when plain pickle
    # will do (~0.2 ms, as much as a tiny task's own work)
    return signed_bytes(payload, rt.secret, second)


def commit_record_bytes(rt: RuntimeContext, task: Task, dataset: DataSet, attempt: int, elapsed: float, **extra) -> bytes:
    """The signed bytes of the task's commit record (a publication writes sinks' records itself)."""
    return _signed_record(rt, _record(task, dataset, attempt, elapsed, **extra))


def _record(task: Task, dataset: DataSet, attempt: int, elapsed: float, **extra) -> dict:
    return {
        "key": task.key,
        "fingerprint": task.fingerprint,
        "dataset": dataset,
        "attempt": attempt,
        "elapsed": elapsed,
        **extra,
    }


def write_commit(
    rt: RuntimeContext, task: Task, dataset: DataSet, attempt: int, elapsed: float, cache_secret: Optional[bytes] = None, **extra
) -> Optional[dict]:
    """Commit the task: write its signed record, unless another attempt committed it first.

    The record is written whole and published under its name only if no record exists
    (:func:`~smallpond.io.filesystem.create_whole`: an unnamed file linked, or a temp file
    renamed with ``RENAME_NOREPLACE``, where the filesystem lacks the first): of two attempts
    of one task running at once (a speculative copy, an executor of an earlier scheduler), the
    first to commit wins. Returns None when this attempt's record is now the task's, else the
    winning record. A record left by an earlier plan (another fingerprint), one whose outputs are
    gone, or a torn one, is replaced.

    With ``cache_secret`` (and the task-cache entry's record as ``extra["cache"]``, see
    :func:`~smallpond.execution.cache.commit_entry`) the record is also signed with the task
    cache's secret: the cache entry of the output is then this file, linked (one file fewer a task).
    """
    record = _record(task, dataset, attempt, elapsed, **extra)
    path = commit_path(rt, task.key)
    data = _signed_record(rt, record, cache_secret)
    try:
        create_whole(path, data)
        return None
    except FileExistsError:
        pass
    existing = _load_record(rt, path)
    if existing is not None and existing.get("fingerprint") == task.fingerprint and _outputs_exist(existing["dataset"]):
        return existing
    atomic_write_bytes(path, data)  # the earlier plan's, outputs gone, or torn: replaced whole
    return None


def remove_orphan_outputs(rt: RuntimeContext) -> int:
    """Remove attempt output directories no commit record claims. Returns how many were removed.

    They are left by an attempt that crashed between renaming its output into place and
    committing, by an attempt that lost to another, or by a task recomputed after its plan
    changed. Only a task with more than one directory, or with none committed, is looked at
    closely, so this costs a ``listdir`` per node and one of the commit records' folder (not a
    ``stat`` per task: a round trip each on a networked filesystem, at the end of every job).
    """
    removed = 0
    try:
        committed = set(os.listdir(rt.completed_task_dir))
    except FileNotFoundError:
        committed = set()
    for root in (rt.staging_root, rt.output_root):
        try:
            node_dirs = [os.path.join(root, d) for d in os.listdir(root)]
        except FileNotFoundError:
            continue
        for node_dir in node_dirs:
            if not os.path.isdir(node_dir):
                continue
            by_key: dict = {}
            for name in os.listdir(node_dir):
                m = ATTEMPT_DIR.fullmatch(name)
                if m:
                    by_key.setdefault(m.group("key"), []).append(os.path.join(node_dir, name))
            for key, dirs in by_key.items():
                if len(dirs) == 1 and f"{key}.commit" in committed:
                    continue
                if f"{key}.commit" not in committed and f"{key}.commit{DAMAGED}" in committed:
                    continue  # a damaged record set aside: a published manifest may list these (set_aside)
                path = commit_path(rt, key)
                record = _load_record(rt, path) if os.path.exists(path) else None
                keep = record.get("output_dir") if record else None
                for d in dirs:
                    if d != keep:
                        remove_path(d)
                        removed += 1
    return removed


def _load_record(
    rt: RuntimeContext, path: str, task_key: Optional[str] = None, damaged: Optional[List[str]] = None
) -> Optional[dict]:
    """The commit record at ``path``, or None if it is absent, torn or damaged, or not loadable here.

    A torn or damaged record (a crash or a full disk while it was written: empty, truncated, not a
    record) counts as absent, with a warning (or, given ``damaged``, what is wrong with it is
    appended there instead). A record that is intact but not signed with this job's secret was
    planted or altered: :class:`~smallpond.io.filesystem.SignatureError`, naming the file; nothing
    is loaded.
    """
    from smallpond.common import logger

    again = f": {task_key} runs again" if task_key else ""

    def bad(text: str, suffix: str) -> None:
        if damaged is None:
            logger.opt(depth=1).warning("{}{}", text + suffix, again)
        else:
            damaged.append(text)

    try:
        data = read_file(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        bad(f"commit record {path} cannot be read ({e})", "")
        return None
    try:
        payload = verified_payload(data, rt.secret, path)
    except CorruptRecord as e:
        bad(str(e), ": it counts as absent")
        return None
    try:
        record = pickle.loads(payload)
    except Exception as e:  # signed by us but not loadable here (e.g. a class that moved)
        bad(f"commit record {path} cannot be loaded ({type(e).__name__}: {e})", "")
        return None
    return record if isinstance(record, dict) else None


def _fast_pickle(obj) -> Optional[bytes]:
    """``pickle.dumps(obj)`` if plain pickle can carry it to another process, else None."""
    try:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    # classes and functions of the user's script pickle by reference to ``__main__``, which other
    # processes cannot resolve: those need cloudpickle
    return None if b"__main__" in payload else payload


def read_commit(rt: RuntimeContext, task: Task, damaged: Optional[List[str]] = None) -> Optional[dict]:
    """The task's commit record if it exists, is intact and matches the task's fingerprint.

    A torn record counts as absent (the task runs again, with a warning; given ``damaged``, what
    is wrong with it is appended there instead: see :func:`set_aside`); a forged one raises (see
    :func:`_load_record`).
    """
    path = commit_path(rt, task.key)
    if not os.path.lexists(path):
        # a record a finished job's clean-up kept aside when it removed staging/ (a sink's, or a
        # task's whose files a published result lists): put back when the job starts; a dry run,
        # which does not start it, reads it there
        parked = os.path.join(rt.published_records_dir, os.path.basename(path))
        path = parked if os.path.lexists(parked) else path
    record = _load_record(rt, path, task.key, damaged)
    if record is None or record.get("fingerprint") != task.fingerprint:
        return None
    missing = _missing_output(record["dataset"])
    if missing is not None:
        if not _appended(task):
            return None  # computed again (a sink: published again, which is idempotent)
        # an append published already: publishing it again would add its rows a second time
        from smallpond.common import logger

        if (path, missing) in _TOLD:
            return record
        _TOLD.add((path, missing))
        logger.warning(
            "{}: its files were appended to {} by an earlier run of this job, and {} is gone since; the append "
            "counts as published and is not done again (that would add its rows twice)",
            task.node.label,
            task.node.output_path,
            missing,
        )
    return record


_TOLD: set = set()  # (record, missing file) said already: the planner and the scheduler both read it


def _appended(task: Task) -> bool:
    """Whether ``task`` is a sink that appends (published once, never again: see :func:`read_commit`)."""
    return getattr(task, "commits_on_publication", False) and getattr(task.node, "mode", None) == "append"


def has_record(rt: RuntimeContext, key: str, listing: Optional[set] = None) -> bool:
    """Whether task ``key`` has a commit record at all: intact or not, set aside as damaged, or
    parked by a finished job's clean-up. ``listing``: the names in the commit records' folder, if
    the caller read it already."""
    names = (f"{key}.commit", f"{key}.commit{DAMAGED}")
    if listing is None:
        listing = {n for n in names if os.path.lexists(os.path.join(rt.completed_task_dir, n))}
    return any(n in listing for n in names) or os.path.lexists(os.path.join(rt.published_records_dir, names[0]))


def set_aside(rt: RuntimeContext, key: str, why: str) -> None:
    """Rename the damaged commit record of ``key``, a task nothing needs now (what it feeds is
    complete), to ``{key}.commit.damaged``, and say so once, at the info level.

    The record is not trusted: the task counts as not done, and runs if a later computation needs
    it. Renamed, it is not read (nor warned about) again on the next run. Its name still claims the
    task's output folder for :func:`remove_orphan_outputs`, which leaves it be: a result published
    from it (a manifest that lists its files) must not be left dangling.
    """
    from smallpond.common import logger

    path = commit_path(rt, key)
    try:
        os.replace(path, path + DAMAGED)
    except OSError:
        return
    logger.info(
        "task {} is not needed now (what it feeds is complete), so it does not run; its damaged commit record ({}) "
        "is set aside as {}, not trusted",
        key,
        why,
        path + DAMAGED,
    )


def _outputs_exist(ds: DataSet) -> bool:
    return _missing_output(ds) is None


def _missing_output(ds: DataSet) -> Optional[str]:
    """An output file of ``ds`` that is gone (or what cannot be resolved), else None."""
    datasets = ds.datasets if isinstance(ds, PartitionedDataSet) else [ds]
    for d in datasets:
        # resolved_paths, not the cache: outputs are built from plain path lists that nothing
        # has resolved yet, and a check of nothing would take deleted outputs for done
        try:
            paths = d.resolved_paths
        except Exception:
            return repr(getattr(d, "paths", d))
        for p in paths[:1000]:
            if not os.path.exists(p):
                return p
    return None
