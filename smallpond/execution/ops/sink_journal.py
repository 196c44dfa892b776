"""The publication journal: how a job's prepared sinks are published all at once, and how a
publication that a crash interrupted is finished, or given up when it no longer can be.

:func:`~smallpond.execution.ops.sink.publish` plans the steps of every prepared sink and writes
them, signed, to ``config/publication.journal`` before the first one runs; :func:`roll_forward`
runs them and removes the journal. Every step is idempotent and knows from the filesystem whether
it already happened (a swapped folder by its inode and its manifest's identity, a moved file by its
identity), so a job killed at any instant finishes the publication when it starts again.

A journal can only be finished while what it moves in still exists. Another job with the same
destinations may have published there since the crash (its sinks' preparation removes the
staged folders it finds beside a destination, and its swap replaces a result this job had
already swapped in), or a user may have removed a staged folder. Then a step finds neither its
result in place nor the staged files it would move there. Every step is checked so before any
runs (:func:`blocked_steps`); if one is blocked, the journal is **abandoned** as a whole: no step
runs, the commit records it wrote are removed (only those still holding exactly its bytes), and
the journal goes, with a warning naming the destinations. The job's sinks then count as not
published and run again from their committed inputs, and publish through the same checks as any
publication (the overwrite checks still apply, nothing smallpond cannot prove it wrote is
removed), all at once. A crashed job is never left unable to run again.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

from smallpond.common import logger
from smallpond.errors import SmallpondError
from smallpond.execution.ops import sink_record
from smallpond.execution.ops.sink_leftovers import is_leftover_name, owner_path, owner_record, write_owner
from smallpond.io.filesystem import atomic_write_bytes, exchange_paths, fsync_dir, load, read_file, remove_path

JOURNAL = "publication.journal"

Step = Tuple


class PublicationError(SmallpondError):
    """A prepared result could not be published (the destination changed, a staged folder vanished)."""


class Abandoned(NamedTuple):
    """A publication journal given up (see the module docstring)."""

    destinations: List[str]  # every destination the journal publishes into
    missing: List[Tuple[str, str]]  # (destination, its staged file or folder that is gone)
    records_removed: int  # commit records it had written, removed so that its sinks run again

    def describe(self) -> str:
        gone = "; ".join(f"{dest}: {staged} is gone" for dest, staged in self.missing[:3])
        more = f" (and {len(self.missing) - 3} more)" if len(self.missing) > 3 else ""
        into = ", ".join(self.destinations[:5]) + (
            f" (and {len(self.destinations) - 5} more)" if len(self.destinations) > 5 else ""
        )
        return (
            f"abandoned the publication an earlier run of this job began into {into}: it can "
            f"no longer be finished, since what it would move in was removed ({gone}{more}), most likely by another "
            "job publishing into the same destination since. Nothing of it is carried out; this job's sinks run "
            "again and publish afresh (all at once, through the usual checks). Those destinations hold what was "
            "published there last until then"
        )


def _ino(path: str) -> Optional[int]:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


def _swapped(step: Step) -> bool:
    """Whether a swap step's new result is in ``dest``: the staged folder's inode, and (in a journal
    of smallpond since 0.16.x) its manifest's identity. The inode alone does not tell: once another
    job removed the staged folder, the next folder made (that job's own staged result, swapped in
    there) may get its inode number."""
    _, _staging, dest, _aside, new_ino, *manifest = step
    if _ino(dest) != new_ino:
        return False
    return not manifest or sink_record.identity(os.path.join(dest, sink_record.MANIFEST)) == manifest[0]


def _step(step: Step, owner: Optional[str] = None) -> None:
    """Carry out one step. ``owner``: the owner record this job gives a previous result it sets
    aside (:mod:`~smallpond.execution.ops.sink_leftovers`), so that no other job's sink removes it
    while this publication discards it."""
    kind = step[0]
    if kind == "mkdir":
        os.makedirs(step[1], exist_ok=True)
    elif kind == "move":
        src, dst = step[1], step[2]  # a journal of smallpond before 0.16.x has no identity after them
        if os.path.lexists(src):
            os.replace(src, dst)
    elif kind == "remove":
        remove_path(step[1])
        if is_leftover_name(step[1]):  # a staged folder: its owner record goes after it
            remove_path(owner_path(step[1]))
    elif kind == "write":
        _, path, data = step
        atomic_write_bytes(path, data)
    elif kind == "swap":
        staging, dest, aside = step[1:4]
        done = _swapped(step)  # the new result is in place
        if not done and not os.path.lexists(staging):
            raise PublicationError(f"cannot publish {dest}: its prepared result {staging} is gone")
        if owner and os.path.lexists(dest) and os.path.lexists(staging):
            write_owner(aside, owner)  # before a previous result is set aside there
        if done:
            if os.path.lexists(staging):  # an exchange left the previous result here
                os.rename(staging, aside)
        elif not os.path.lexists(dest):
            os.rename(staging, dest)
        elif exchange_paths(staging, dest):
            os.rename(staging, aside)
        else:
            os.rename(dest, aside)
            os.rename(staging, dest)
        remove_path(owner_path(staging))  # the staged folder is gone (it is the destination now)
    elif kind == "record":
        _, path, data = step
        sink_record.save(path, data)
    elif kind == "remove_owned":
        _, path, ident = step
        if ident is None or sink_record.identity(path) == ident:
            remove_path(path)
        elif os.path.lexists(path):
            logger.warning("kept {}: it changed since smallpond wrote it", path)
    elif kind == "discard":
        _, aside, dest, ours = step
        _discard(aside, dest, ours if isinstance(ours, dict) else dict.fromkeys(ours))
        remove_path(owner_path(aside))
    else:
        raise PublicationError(f"unknown publication step {kind!r}")


def _discard(aside: str, dest: str, ours: Dict[str, Optional[list]]) -> None:
    """Remove the previous result (moved to ``aside``): only its files smallpond wrote (``ours``:
    name -> identity, checked again now; None: by name, in the job's folder).

    Anything else goes back into ``dest``; what cannot (the new result has a file by its name) is
    kept in ``{dest}.kept-*``, which no clean-up removes (``.old-*`` folders are removed as
    leftovers of interrupted publications, once their job no longer runs:
    :func:`~smallpond.execution.ops.sink_leftovers.remove_stale_siblings`).
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
        if not os.path.lexists(target):
            os.rename(path, target)
            logger.warning("kept {} (not written by smallpond) in {}", name, dest)
        else:
            left = True
    try:
        os.rmdir(aside)
    except OSError:
        if left:
            kept = f"{dest.rstrip(os.sep)}.kept-{aside.rsplit('.old-', 1)[-1]}"
            os.rename(aside, kept)
            logger.warning("kept files not written by smallpond in {}: {} holds files by their names", kept, dest)


def _test_hooks(index: int) -> None:
    """Tests only, inert when unset: ``SP_TEST_PUBLISH_STEP_DELAY`` (seconds) pauses before each
    step; ``SP_TEST_PUBLISH_KILL_AT_STEP=n`` SIGKILLs this process before step ``n`` (0-based)."""
    delay = os.environ.get("SP_TEST_PUBLISH_STEP_DELAY")
    if delay:
        time.sleep(float(delay))
    kill_at = os.environ.get("SP_TEST_PUBLISH_KILL_AT_STEP")
    if kill_at is not None and int(kill_at) == index:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def journal_path(runtime_ctx) -> str:
    return os.path.join(runtime_ctx.config_root, JOURNAL)


def destinations(journal: dict) -> List[str]:
    """The destinations a journal publishes into (told by its steps in a journal that does not list them)."""
    if journal.get("destinations"):
        return list(journal["destinations"])
    found = [s[2] for s in journal["steps"] if s[0] == "swap"]
    found += [os.path.dirname(s[2]) for s in journal["steps"] if s[0] == "move"]
    return sorted(set(found))


def blocked_steps(steps: List[Step]) -> List[Tuple[str, str]]:
    """(destination, staged path) of the steps that are neither done nor can be done: what they
    would move into the destination is gone, and the destination does not hold it."""
    out = []
    for step in steps:
        if step[0] == "swap":
            staging, dest = step[1:3]
            if not _swapped(step) and not os.path.lexists(staging):
                out.append((dest, staging))
        elif step[0] == "move" and len(step) > 3 and step[3] is not None:
            _, src, dst, ident = step
            if not os.path.lexists(src) and sink_record.identity(dst) != ident:
                out.append((os.path.dirname(dst), src))
    return out


def _abandon(runtime_ctx, journal: dict, missing: List[Tuple[str, str]]) -> Abandoned:
    """Give the journal up: remove the commit records it wrote (those still holding its bytes:
    their sinks are not published now) and then the journal itself."""
    removed = 0
    for step in journal["steps"]:
        if step[0] != "write":
            continue
        _, path, data = step
        try:
            same = read_file(path) == data
        except OSError:
            continue
        if same:
            remove_path(path)
            removed += 1
    remove_path(journal_path(runtime_ctx))
    job_root = os.path.realpath(runtime_ctx.job_root) + os.sep
    # the user's destinations first: the job's own (named outputs, FinalResults) matter less
    dests = sorted(destinations(journal), key=lambda d: os.path.realpath(d).startswith(job_root))
    return Abandoned(dests, missing, removed)


def roll_forward(runtime_ctx, journal: Optional[dict] = None):
    """Carry out (or finish) the publication in the job's journal.

    Returns False if there is none, True once it is carried out, or an :class:`Abandoned` when
    it could not be finished and was given up (nothing of it was carried out now; see the module
    docstring). ``journal``: one just written (a publication in progress), else the job's is read.
    """
    from smallpond.io.filesystem import CorruptRecord

    path = journal_path(runtime_ctx)
    earlier = journal is None
    if earlier:
        if not os.path.exists(path):
            return False
        try:
            journal = load(path, secret=runtime_ctx.secret)
        except CorruptRecord as e:
            # written atomically before any step ran: a torn journal means no step ran
            logger.warning("{}; no publication step had started, so there is nothing to finish", e)
            remove_path(path)
            return False
    missing = blocked_steps(journal["steps"])
    if missing:
        return _abandon(runtime_ctx, journal, missing)
    if earlier:
        logger.warning("finishing the publication an earlier run of this job began ({} step(s))", len(journal["steps"]))
    owner = owner_record(runtime_ctx.job_root) if any(s[0] == "swap" for s in journal["steps"]) else None
    for index, step in enumerate(journal["steps"]):
        _test_hooks(index)
        _step(step, owner)
    for folder in journal.get("sync", []):
        fsync_dir(folder)
    remove_path(path)
    return True
