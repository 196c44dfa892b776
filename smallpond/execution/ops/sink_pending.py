"""Publications begun and not finished: a mark per job in the data root (this user's folder), read by the nesting checks.

The nesting checks (:mod:`~smallpond.execution.ops.sink_overlap`) trust the records of published
results: a folder holds a result if its manifest is the one its record names. A publication moves
its files and manifest in first and writes the record after them, so a job killed between the two
leaves a result that no record vouches for; its journal (``config/publication.journal``) stays, and
the job's rerun finishes the publication. Until then another job of the data root would find no
result there and publish inside it (or around it), and the rerun would finish the first
publication around the second: one result holding a folder its manifest does not list.

So before its journal is written, a publication into folders outside the job's own writes a
**publication mark**: ``{data_root}/.smallpond/users/{uid}/publishing/{sha256 of realpath(job
folder)}.json`` (beside the records, ``sinks/``, of this user), naming the
job folder and the real paths of those destinations (:func:`mark`). The journal removed (the
publication carried out, or given up), the mark goes too (:func:`unmark`, by
:func:`~smallpond.execution.ops.sink_journal.roll_forward`). The nesting checks read the marks of
the other jobs (:func:`pending`) at planning and again at publication, under the publication
locks, and refuse a destination inside or around a marked one, naming the job, its journal and
what to do.

Invariants:

* **A mark is there before the first step moves anything, and counts only while its journal
  exists.** It is written (atomically; fsynced where the journal is: where a power loss could
  keep a step and lose the journal, see :mod:`~smallpond.execution.ops.sink`) before the journal,
  so a job killed at any instant of its publication has one. A mark whose job has no journal is
  stale (the job was killed after removing its journal and before its mark, or before writing
  its journal; or its folder was removed, or its journal removed by hand to give the publication
  up) and is ignored. A job has one mark, rewritten by each of its publications: a stale mark of
  an earlier publication never counts again when the job publishes elsewhere later. A rerun
  finishing an earlier run's journal writes the mark again first (a journal of a smallpond
  without marks has none).
* **A dead job's mark still blocks.** Whether the job is running is said, not decided on: the
  mark of a job that stopped before finishing its publication (killed, or failed: a step's error
  leaves the journal too) stays until its rerun finishes (or gives up) the publication, and the
  refusal tells the user to rerun it (same job id and data root), or to remove its journal to give it up.
* **A mark goes with its job.** ``smallpond clean`` removes the marks of job folders that are gone
  (:func:`prune`): a job writes its mark while its folder exists, and a folder that is gone never
  has a journal again (a job started anew gets a folder of another name). A mark of a job folder
  still there stays, stale or not; so does a mark written after the one prune read (the job
  folder made again meanwhile, by a rerun of the same job id and time): only the file read is
  removed (:func:`~smallpond.execution.user_folder.remove_if_same`), and one that a killed
  ``clean`` left set aside is put back first. A mark's temp file that a kill -9 of its writer left goes too,
  never one being written (its writer holds it locked).
* **Only refusals.** A mark never makes anything be removed or trusted: it is not signed, only
  checked to be of the job it is named after. Like the records, marks are this user's, of this data
  root: the nesting checks hold for the jobs of one data root and user.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import List, NamedTuple, Optional, Sequence

from smallpond.execution import user_folder
from smallpond.execution.ownership import PUBLICATION_JOURNAL
from smallpond.io.filesystem import atomic_write_bytes, remove_abandoned_temps, remove_path

#: the folder of the marks, in this user's folder of the data root, beside its records (``sinks/``)
PENDING_DIRNAME = "publishing"
_FORMAT = "smallpond-publishing-1"


def job_journal(job_folder: str) -> str:
    """Where the job in ``job_folder`` keeps its publication journal."""
    return os.path.join(job_folder, "config", PUBLICATION_JOURNAL)


def _name(job_root: str) -> str:
    return hashlib.sha256(os.path.realpath(job_root).encode("utf-8", "surrogateescape")).hexdigest() + ".json"


def marks_dir(records_dir: str) -> str:
    """The folder of the publication marks of the jobs whose records are in ``records_dir``: beside it."""
    return os.path.join(os.path.dirname(records_dir), PENDING_DIRNAME)


def mark_path(records_dir: str, job_root: str) -> str:
    """The publication mark of the job in ``job_root``, of the jobs whose records are in ``records_dir``."""
    return os.path.join(marks_dir(records_dir), _name(job_root))


def mark(records_dir: str, job_root: str, dests: Sequence[str], fsync: bool = False) -> None:
    """Write the mark of the job in ``job_root``: it is publishing into ``dests`` (folders outside
    its own), before its journal is written. ``fsync``: durable before the call returns."""
    path = mark_path(records_dir, job_root)
    user_folder.prepare(records_dir)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    data = {"format": _FORMAT, "job": os.path.realpath(job_root), "destinations": sorted(os.path.realpath(d) for d in dests)}
    atomic_write_bytes(path, json.dumps(data, sort_keys=True).encode(), fsync=fsync, hold=True)  # (its folder too)


def unmark(records_dir: str, job_root: str) -> None:
    """Remove the mark of the job in ``job_root`` (its journal is gone)."""
    remove_path(mark_path(records_dir, job_root))


class Pending(NamedTuple):
    """A publication another job began and has not finished: its job folder, its journal, and
    the destinations it publishes into (real paths)."""

    job: str
    journal: str
    destinations: List[str]


def _read(path: str) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pending(records_dir: str, exclude: Optional[str] = None) -> List[Pending]:
    """The publications begun and not finished by jobs of the records in ``records_dir``, other
    than the job in folder ``exclude``: the marks whose job's journal exists (module docstring)."""
    folder = marks_dir(records_dir)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return []
    skip = _name(exclude) if exclude else None
    out = []
    for name in names:
        if name == skip:
            continue
        data = _read(os.path.join(folder, name))
        if data is None or data.get("format") != _FORMAT:
            continue
        job, dests = data.get("job"), data.get("destinations")
        if not isinstance(job, str) or _name(job) != name or not isinstance(dests, list):
            continue
        journal = job_journal(job)
        if os.path.lexists(journal):
            out.append(Pending(job, journal, [d for d in dests if isinstance(d, str)]))
    return out


def describe(p: Pending, folder: str) -> str:
    """Who began publishing into ``folder`` (one of ``p``'s destinations) and what to do about it,
    for a refusal: ``"job ... began publishing a result into {folder} and has not finished ..."``."""
    from smallpond.execution.ownership import lock_state

    state, holder = lock_state(p.job)
    who = f"process {holder.get('pid', '?')} on host {holder.get('host') or '?'}" if holder else "an unknown process"
    if state == "alive":
        now = (
            f"the job is running ({who} holds its job lock): it finishes that publication when it publishes "
            "again or is run again (same job id and data root)"
        )
    elif state in ("elsewhere", "unreadable"):  # a lock of another host's, or torn: its holder may be gone
        now = (
            f"the job may be running ({who} holds its job lock, which cannot be told from this host): if it is, "
            "it finishes that publication when it publishes again or is run again; if it is not, rerun that job "
            "(same job id and data root) to finish its publication"
        )
    else:
        now = (
            "the job is not running: it stopped before finishing its publication (it was killed, or it failed). "
            "Rerun that job (same job id and data root) to finish its publication"
        )
    return (
        f"job {p.job} began publishing a result into {folder} and has not finished (its publication journal "
        f"{p.journal} is still there); {now}, or remove that journal to give the publication up"
    )


def _is_mark_name(name: str) -> bool:
    return len(name) == 69 and name.endswith(".json") and all(c in "0123456789abcdef" for c in name[:64])


def prune(data_root: str) -> int:
    """Remove this user's marks (under ``data_root``) of job folders that are gone; how many went.
    Through the checked user folder (:func:`~smallpond.execution.user_folder.open_own`), as the
    records are pruned. The temp file of a mark that a kill -9 interrupted goes too, once its
    writer is gone (:func:`~smallpond.io.filesystem.remove_abandoned_temps`)."""
    try:
        folder = user_folder.open_own(data_root, PENDING_DIRNAME)
    except FileNotFoundError:
        return 0
    removed = 0
    try:
        user_folder.put_back_set_aside(folder, _is_mark_name)  # a killed clean's: judged again below
        remove_abandoned_temps(folder, _is_mark_name)
        for name in sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith(".")):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            except OSError:
                continue  # gone, or not a file smallpond wrote: left alone
            with os.fdopen(fd, "rb") as f:  # (held open until judged: its inode is not reused meanwhile)
                try:
                    data = json.loads(f.read().decode("utf-8"))
                except ValueError:
                    continue
                job = data.get("job") if isinstance(data, dict) else None
                # only the mark read: a job folder made again since writes its new mark before its
                # journal, and that one stays (set aside, seen to be another file, put back)
                if isinstance(job, str) and _name(job) == name and not os.path.lexists(job):
                    removed += user_folder.remove_if_same(folder, name, os.fstat(f.fileno()))
    finally:
        os.close(folder)
    return removed
