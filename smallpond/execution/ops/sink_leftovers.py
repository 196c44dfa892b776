"""What publications leave beside a destination, who owns it, and removing it once its job is gone.

A sink stages its result in ``{dest}.staging-{job}-{task}`` and a publication moves the previous
result aside to ``{dest}.old-{id}`` before discarding it (:mod:`~smallpond.execution.ops.sink`).
A job killed on the way leaves them behind, and the next sink that publishes into the same
destination removes them (:func:`remove_stale_siblings`). But two jobs may publish into one
destination at the same time: a job's sink must never remove what another job that still runs
has staged (it waits for its other tasks, or is publishing) or set aside (its publication is
discarding it), or that job fails ("its prepared result ... is missing; nothing was published").

So each such folder has an **owner record** beside it, ``{folder}.owner`` (:func:`owner_path`):
never inside it, since a staged folder becomes the destination as it is and nothing of the record
may ever be published (results stay byte-identical between runs). The record is written before
its folder is made and removed after the folder is gone, so a folder of this layout never lacks
one. It names the job folder and the process holding that job's lock when the record was written
(host, PID, process start id). A leftover, with its record, is removed only if

* its job is this very job (an earlier run of it, or the folder about to be made again), or
* its job provably no longer runs: its job lock (``config/job.lock``,
  :func:`~smallpond.execution.ownership.lock_state`) is gone or held by a process of this host that
  is gone; where the job folder is not visible from here, the recorded process is checked instead.

It is kept while that job runs on this host, and kept too (with a warning naming it and how to
remove it) when that cannot be told: the job runs on another host, or its record or lock cannot be
read. A staged folder without an owner record (written by an older smallpond) is removed as before.
Nothing else beside a destination is ever touched: only the exact names a publication gives.

A set-aside previous result may hold more than smallpond wrote: a file a user dropped into the
destination while the job ran is swapped out with it. So its owner record also lists the files
the publication may remove (name -> identity, :func:`aside_record`), and whoever removes it
discards it as the publication would (:func:`discard_aside`): those files go, anything else goes
back into the destination, or is kept in ``{dest}.kept-*``. One without that list (an older
smallpond's) is kept whole in ``{dest}.kept-*``, with a warning: nothing in it is proven ours.

An atomic swap (``renameat2(RENAME_EXCHANGE)``) leaves the previous result, for an instant, at
the staged folder's name, until it is renamed aside. So before exchanging, the publication
rewrites the staged folder's owner record as a set-aside one that also names the staged folder's
inode (:func:`exchange_record`): a folder of that name with another inode is the previous result,
discarded as a set-aside one is (:func:`left_by_exchange`), never removed whole.

A publication journal that a crash interrupted relies on this: its staged folders stay while a
rerun of its job runs (and may finish it), and are removed once no run of that job is alive, so
that a journal that can no longer be finished is abandoned (:mod:`~smallpond.execution.ops.sink_journal`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from typing import Dict, Optional, Sequence, Tuple

from smallpond.common import logger
from smallpond.execution.ops import sink_record
from smallpond.execution.ownership import holder_alive, lock_state
from smallpond.io.filesystem import atomic_write_text, remove_path
from smallpond.processes import process_start_id, process_start_time

OWNER_SUFFIX = ".owner"
#: what an owner record says it is (a file by its name in another form is not ours)
_KIND = "smallpond publication leftover"

#: the names a publication gives its folders, after ``{destination's name}``; nothing else beside
#: a destination is ours (a user's ``results.old-2025`` is theirs)
_LEFTOVER = re.compile(r"\.(?:staging-[0-9a-f]{8}-[0-9]+|old-[0-9a-f]{8})")
_ASIDE = re.compile(r"\.old-[0-9a-f]{8}")


def aside_path(dest: str) -> str:
    """Where a publication moves the previous result of ``dest`` before discarding it."""
    return f"{dest.rstrip(os.sep)}.old-{uuid.uuid4().hex[:8]}"


def owner_path(folder: str) -> str:
    """The owner record of a staged or set-aside folder: beside it, never inside."""
    return folder.rstrip(os.sep) + OWNER_SUFFIX


def is_leftover_name(path: str) -> bool:
    """Whether ``path`` is named as a publication names its staged and set-aside folders."""
    return _LEFTOVER.search(os.path.basename(path.rstrip(os.sep))) is not None


def owner_record(job_root: str) -> str:
    """The owner record of a folder job ``job_root`` makes beside a destination: the job folder and
    the process holding its job lock (this process where there is no lock, e.g. a bare runtime)."""
    job_root = os.path.abspath(job_root)
    _, holder = lock_state(job_root)
    if not holder or not holder.get("pid"):
        pid = os.getpid()
        holder = {"host": socket.gethostname(), "pid": pid, "started": process_start_time(pid), "start_id": process_start_id(pid)}
    record = {"kind": _KIND, "job_root": job_root}
    record.update({k: holder.get(k) for k in ("host", "pid", "started", "start_id")})
    return json.dumps(record, sort_keys=True) + "\n"


def aside_record(record: str, ours) -> str:
    """The owner record (:func:`owner_record`) of a previous result set aside, with the files its
    publication may remove (``ours``: name -> identity, None: by name; or a list of names)."""
    data = json.loads(record)
    data["discard"] = ours if isinstance(ours, dict) else dict.fromkeys(ours or ())
    return json.dumps(data, sort_keys=True) + "\n"


def exchange_record(record: str, ours, staged_ino: int) -> str:
    """The owner record a staged folder (inode ``staged_ino``) gets just before it is exchanged
    with the previous result: :func:`aside_record` (``ours``: what the publication may remove of
    the previous result), with the staged folder's inode, which tells which of the two is there
    (:func:`left_by_exchange`)."""
    data = json.loads(aside_record(record, ours))
    data["staged_ino"] = staged_ino
    return json.dumps(data, sort_keys=True) + "\n"


def left_by_exchange(folder: str, record: Optional[dict]) -> bool:
    """Whether ``folder``, named as a staged folder, holds the previous result an exchange left
    there: its owner record (:func:`exchange_record`) names another inode than the folder's."""
    ino = record.get("staged_ino") if record else None
    if not isinstance(ino, int):
        return False
    try:
        return os.lstat(folder).st_ino != ino
    except FileNotFoundError:
        return False


def kept_path(dest: str, aside: str) -> str:
    """Where files of ``aside`` that cannot go back into ``dest`` are kept (no clean-up removes it)."""
    name = os.path.basename(aside.rstrip(os.sep))
    token = name.rsplit(".old-", 1)[-1] if _ASIDE.search(name) else uuid.uuid4().hex[:8]
    return f"{dest.rstrip(os.sep)}.kept-{token}"


def discard_aside(aside: str, dest: str, ours: Dict[str, Optional[list]], back: bool = True) -> None:
    """Remove the previous result of ``dest`` (moved to ``aside``): only its files smallpond wrote
    (``ours``: name -> identity, checked again now; None: by name, in the job's folder).

    Anything else goes back into ``dest`` (``back``); what cannot (the new result has a file by
    its name, or ``dest`` is gone; or not ``back``) is kept in ``{dest}.kept-*`` (:func:`kept_path`),
    which no clean-up removes. The owner record stays: the caller removes it once this is done.
    """
    try:
        names = os.listdir(aside)
    except FileNotFoundError:
        return
    left = False
    for name in names:
        path = os.path.join(aside, name)
        if name in ours and (ours[name] is None or sink_record.identity(path) == ours[name]):
            remove_path(path)
            continue
        # not ours: a user's file that arrived during the job; it goes back, never away
        target = os.path.join(dest, name)
        if back and os.path.isdir(dest) and not os.path.lexists(target):
            os.rename(path, target)
            logger.warning("kept {} (not written by smallpond) in {}", name, dest)
        else:
            left = True
    try:
        os.rmdir(aside)
    except OSError:
        if left:
            kept = kept_path(dest, aside)
            os.rename(aside, kept)
            why = f"{dest} holds files by their names" if back else f"{dest} is published again at once"
            logger.warning("kept files not written by smallpond in {}: {}", kept, why)


def _discard_stale_aside(aside: str, dest: str, record: Optional[dict]) -> None:
    """A previous result its job set aside and did not discard: discarded as its publication would
    have (:func:`discard_aside`), by the list in its owner record; without one, kept whole."""
    ours = record.get("discard") if record else None
    if isinstance(ours, dict):
        discard_aside(aside, dest, ours)
    elif os.path.isdir(aside):
        kept = kept_path(dest, aside)
        os.rename(aside, kept)
        logger.warning(
            "kept {} (a previous result of {} that an interrupted publication set aside): its owner record does not "
            "say which of its files smallpond wrote, so none is removed; remove it by hand if nothing in it is yours",
            kept, dest,
        )  # fmt: skip
    remove_path(owner_path(aside))


def write_owner(folder: str, record: str) -> None:
    """Write ``folder``'s owner record (before the folder is made: see the module docstring),
    making the folders above it that are missing (a new destination's parent)."""
    os.makedirs(os.path.dirname(folder.rstrip(os.sep)) or ".", exist_ok=True)
    atomic_write_text(owner_path(folder), record)


def remove_with_owner(folder: str) -> None:
    """Remove a staged or set-aside folder, then its owner record (in that order: see the module docstring)."""
    remove_path(folder)
    remove_path(owner_path(folder))


def _read_owner(folder: str) -> Tuple[bool, Optional[dict]]:
    """Whether ``folder`` has an owner record, and the record if it is one smallpond wrote."""
    path = owner_path(folder)
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return os.path.lexists(path), None
    except (OSError, ValueError):
        return True, None
    if not isinstance(record, dict) or record.get("kind") != _KIND or not record.get("job_root"):
        return True, None
    return True, record


def _same_folder(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or os.path.realpath(a) == os.path.realpath(b)


def _kept_because(record: dict, job_root: Optional[str]) -> Tuple[Optional[str], bool]:
    """Why the leftover that ``record`` owns must stay, or None if it may go; and whether that
    is only because it cannot be told (worth a warning) rather than because its job runs here."""
    root = record["job_root"]
    if job_root and _same_folder(root, job_root):
        return None, False  # this job's own: an earlier run's, or the folder it is about to make
    who = f"process {record.get('pid', '?')} on host {record.get('host') or '?'}"
    if os.path.isdir(os.path.join(root, "config")):
        state, holder = lock_state(root)
        if state in ("none", "dead"):
            return None, False
        if state == "alive":
            return f"job {root} is running (process {holder.get('pid')} on this host)", False
        if state == "elsewhere":
            return (
                f"job {root} is run by process {holder.get('pid', '?')} on host {holder.get('host')}, which cannot be checked from here",
                True,
            )
        return f"the job lock of job {root} cannot be read", True
    # the job folder is not visible from here (another data root, not mounted here): its process
    if record.get("host") and record["host"] != socket.gethostname():
        return f"job {root} was run by {who}, which cannot be checked from here", True
    if holder_alive(record):
        return f"job {root} is running ({who})", False
    return None, False


def remove_stale_siblings(output_path: str, keep: Sequence[str] = (), job_root: Optional[str] = None) -> None:
    """Remove the ``.staging-*`` / ``.old-*`` folders that interrupted publications left beside
    ``output_path``, with their owner records: only names of exactly the form a publication gives
    them, and only those whose job no longer runs or is ``job_root`` (this job; see the module
    docstring). A set-aside previous result (or one an exchange left at a staged folder's name) is
    discarded as its publication would have, never removed whole (:func:`discard_aside`). ``keep``: paths to leave whatever they are."""
    parent, base = os.path.split(output_path.rstrip(os.sep))
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return
    present = set(names)
    for name in names:
        if not name.startswith(base):
            continue
        folder = name[: -len(OWNER_SUFFIX)] if name.endswith(OWNER_SUFFIX) else name
        if not _LEFTOVER.fullmatch(folder, len(base)) or os.path.join(parent, folder) in keep:
            continue
        if name != folder and folder in present:
            continue  # an owner record beside its folder: decided with the folder
        path = os.path.join(parent, folder)
        has_record, record = _read_owner(path)
        if has_record and record is None:
            if name == folder:
                logger.warning(
                    "kept {} beside {}: its owner record {} is not one smallpond wrote, so whether the job that "
                    "left it still runs cannot be told; remove both by hand if no job publishes there now",
                    path, output_path, owner_path(path),
                )  # fmt: skip
            continue
        why, unsure = _kept_because(record, job_root) if record is not None else (None, False)
        if why is None and (_ASIDE.fullmatch(folder, len(base)) or left_by_exchange(path, record)):
            _discard_stale_aside(path, output_path, record)  # its files smallpond wrote go, no other
        elif why is None:
            remove_with_owner(path)  # a record without its folder (the folder went first) goes too
        elif unsure and name == folder:
            logger.warning(
                "kept {} beside {}: {}; if that job no longer runs, remove {} and {} by hand",
                path, output_path, why, path, owner_path(path),
            )  # fmt: skip
        elif name == folder:
            logger.info("kept {} beside {}: {}", path, output_path, why)
