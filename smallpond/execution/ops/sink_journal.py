"""The publication journal: how a job's prepared sinks are published all at once, and how a
publication that a crash interrupted is finished, or given up when it no longer can be.

:func:`~smallpond.execution.ops.sink.publish` plans the steps of every prepared sink and writes
them, signed, to ``config/publication.journal`` before the first one runs; :func:`roll_forward`
runs them and removes the journal. Every step is idempotent and knows from the filesystem whether
it already happened (a swapped folder by its inode and its manifest's identity, a moved file by its
identity), so a job killed at any instant finishes the publication when it starts again. A staged
folder is known by its inode too: killed right after an exchange, a swap leaves the previous result
at the staged folder's name (with an owner record that says so, see
:mod:`~smallpond.execution.ops.sink_leftovers`), and that folder is never published as the new one.

Before any step runs, each append not yet visible is merged into its destination's manifest as
it is now (another job may have appended there since the crash), and the journal written again
(:func:`~smallpond.execution.ops.sink_append.rebase_appends`): finishing it never puts an older
manifest over a newer one.

A journal can only be finished while what it moves in still exists. Another job with the same
destinations may have published there since the crash (its sinks' preparation removes the
staged folders it finds beside a destination, and its swap replaces a result this job had
already swapped in), or a user may have removed a staged folder. Then a step finds neither its
result in place nor the staged files it would move there. Every step is checked so before any
runs (:func:`blocked_steps`); if one is blocked, the journal is **abandoned**. All-or-nothing can
no longer hold then: the sinks whose result was already swapped in (or whose manifest was moved
in) are visible to every reader, and undoing that would need the previous result, which may hold
a user's files and is being discarded. So finishing them is the only consistent choice: their
remaining steps run (the record of what was published, without which every later overwrite of
that destination is refused; the discard of the previous result, which keeps a user's file that
arrived during the job in ``{dest}.kept-*``, not back in the destination: the rerun publishes
there again at once, and its check would refuse that file). The other sinks' steps do not run:
their destinations hold what was published there last. A finished sink whose result is still
intact (:func:`_intact`: the folder it swapped in, or the files it moved in, have the identities
the journal holds, and the files of a swapped-in folder those its record names) counts as
published: its commit record, which the journal holds, is written if the crash came before it
and kept, so its rerun does not compute and publish it again; so does a finished sink that
appended its files beside the destination's, intact or not (a user removed one of them since):
publishing it again would add them a second time. So does an append whose files the manifest in
place lists while that manifest is not the one it moved (another job's append kept its lines
since): its steps do not run (they would put back a manifest, and a record, older than the ones
there), and nothing appends those files again. An append that no manifest lists (killed between
its files' moves and its manifest's) is rolled back: its files that moved in, proved smallpond's
by the identities the journal holds, are removed, and its sink runs again
(:mod:`~smallpond.execution.ops.sink_append`). The other commit records the
journal wrote are removed (only those still holding exactly its bytes) and the journal goes, with
a warning naming the destinations. Those sinks then count as not published and run again from
their committed inputs, and publish through the same checks as any publication, all at once (a
finished sink's destination that is no longer intact holds a result the checks may refuse, never
one they remove unchecked). A sink given up is never hidden from the rerun by what was computed
from it (a sink kept downstream of it, or a committed task): a sink not published is needed
wherever it is (:func:`~smallpond.execution.sched_state.unpublished_sinks`). A crashed job is
never left unable to run again.
"""

from __future__ import annotations

import os
import time
from typing import List, NamedTuple, Optional, Tuple

from smallpond.common import logger
from smallpond.execution.ops import sink_record
from smallpond.execution.ops.sink_append import PublicationError, own_lines, published_by_lines, rebase_appends, roll_back
from smallpond.execution.ops.sink_leftovers import (
    aside_record,
    discard_aside,
    exchange_record,
    is_leftover_name,
    owner_path,
    owner_record,
    write_owner,
)
from smallpond.execution.ops.sink_lock import destinations_locked
from smallpond.execution.ops.sink_overlap import JOB_FOLDER, inside
from smallpond.execution.ops.sink_pending import job_journal, mark, unmark
from smallpond.execution.ownership import PUBLICATION_JOURNAL
from smallpond.execution.runtime import sink_records_dir
from smallpond.io.filesystem import atomic_write_bytes, dump, exchange_paths, fsync_dir, load, read_file, remove_path
from smallpond.io.paths import manifest_paths

Step = Tuple


class Abandoned(NamedTuple):
    """A publication journal given up (see the module docstring)."""

    destinations: List[str]  # every destination the journal publishes into
    missing: List[Tuple[str, str]]  # (destination, its staged file or folder that is gone)
    records_removed: int  # commit records it had written, removed so that its sinks run again
    finished: List[str]  # destinations whose result was swapped in already: their publication was finished
    kept: List[str] = []  # of those, the ones still intact: their sinks count as published (records kept)
    rolled_back: List[str] = []  # destinations of unfinished appends whose moved-in files were removed

    def describe(self) -> str:
        gone = "; ".join(f"{dest}: {staged} is gone" for dest, staged in self.missing[:3])
        more = f" (and {len(self.missing) - 3} more)" if len(self.missing) > 3 else ""
        into = ", ".join(self.destinations[:5]) + (
            f" (and {len(self.destinations) - 5} more)" if len(self.destinations) > 5 else ""
        )
        if self.finished:
            done = (
                f"The results it had already swapped into {', '.join(self.finished)} stay (their publication was "
                "finished: recorded, and the previous result discarded); nothing else of it is carried out"
            )
        else:
            done = "Nothing of it is carried out"
        if self.kept:
            again = (
                f"; the sinks of {', '.join(self.kept)} count as published (their files are still the ones published), "
                "the job's other sinks run again"
            )
        else:
            again = "; this job's sinks run again"
        if self.rolled_back:
            again += f" (the unfinished appends into {', '.join(self.rolled_back)} were rolled back: they append once)"
        return (
            f"abandoned the publication an earlier run of this job began into {into}: it can "
            f"no longer be finished, since what it would move in was removed ({gone}{more}), most likely by another "
            f"job publishing into the same destination since. {done}{again} and publish afresh (all at once, "
            "through the usual checks). The other destinations hold what was published there last until then"
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


def _staged(step: Step) -> bool:
    """Whether a swap step's staged folder is still at its name: the folder there has its inode (an
    exchange that a crash interrupted leaves the previous result there instead)."""
    return _ino(step[1]) == step[4]


def _step(step: Step, owner: Optional[str] = None, discards: Optional[dict] = None) -> None:
    """Carry out one step. ``owner``: the owner record this job gives a previous result it sets
    aside (:mod:`~smallpond.execution.ops.sink_leftovers`), so that no other job's sink removes it
    while this publication discards it; ``discards``: aside -> what its discard step may remove,
    written into that record, so that another job's clean-up removes no more
    (:func:`~smallpond.execution.ops.sink_leftovers.discard_aside`)."""
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
        if not done and not _staged(step):
            raise PublicationError(f"cannot publish {dest}: its prepared result {staging} is gone or was swapped out")
        ours = (discards or {}).get(aside)
        if owner and os.path.lexists(dest) and os.path.lexists(staging):
            write_owner(aside, aside_record(owner, ours))  # before it is set aside there
        if done:
            if os.path.lexists(staging):  # an exchange left the previous result here
                os.rename(staging, aside)
        elif not os.path.lexists(dest):
            os.rename(staging, dest)
        else:
            if owner:  # the exchange leaves the previous result here for an instant: say so first
                write_owner(staging, exchange_record(owner, ours, step[4]))
            if exchange_paths(staging, dest):
                _test_point("exchanged")
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
        discard_aside(aside, dest, ours if isinstance(ours, dict) else dict.fromkeys(ours))
        remove_path(owner_path(aside))
    else:
        raise PublicationError(f"unknown publication step {kind!r}")


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


def _test_point(name: str) -> None:
    """Tests only, inert when unset: ``SP_TEST_PUBLISH_KILL_AT_POINT=name`` SIGKILLs this process
    at that point inside a step (``exchanged``: a swap exchanged the folders and has not yet renamed
    the previous result aside)."""
    if os.environ.get("SP_TEST_PUBLISH_KILL_AT_POINT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def journal_path(runtime_ctx) -> str:
    return os.path.join(runtime_ctx.config_root, PUBLICATION_JOURNAL)


def interrupted_publications(data_root: str, exclude: Optional[str] = None) -> List[str]:
    """Job folders under ``data_root`` (other than ``exclude``) whose publication was interrupted:
    their journal is still there, so their rerun will finish or roll it back. Only their presence
    is told (a journal is read only with its own job's secret)."""
    try:
        names = sorted(os.listdir(data_root))
    except OSError:
        return []
    skip = os.path.realpath(exclude) if exclude else None
    found = []
    for name in names:
        folder = os.path.join(data_root, name)
        if JOB_FOLDER.fullmatch(name) and os.path.lexists(job_journal(folder)) and os.path.realpath(folder) != skip:
            found.append(folder)
    return found


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
            if not _swapped(step) and not _staged(step):
                out.append((dest, staging))
        elif step[0] == "move" and len(step) > 3 and step[3] is not None:
            _, src, dst, ident = step
            if not os.path.lexists(src) and sink_record.identity(dst) != ident:
                out.append((os.path.dirname(dst), src))
    return out


def _sinks(steps: List[Step]) -> List[List[Step]]:
    """The steps of each sink, in journal order: each sink's end with its ``discard`` (a swap) or
    the removal of its staged folder (an append, a manifest-only sink). The job's commit records
    (``write``) come after them all and are in none."""
    groups: List[List[Step]] = [[]]
    for step in steps:
        if step[0] == "write":
            continue
        groups[-1].append(step)
        if step[0] in ("discard", "remove"):
            groups.append([])
    return [g for g in groups if g]


def _visible(sink: List[Step]) -> Optional[str]:
    """The destination of a sink whose new result readers already see (its swap happened, or its
    manifest was moved in), else None."""
    for step in sink:
        if step[0] == "swap":
            return step[2] if _swapped(step) else None
    moves = [s for s in sink if s[0] == "move"]
    if not moves or len(moves[-1]) < 4 or moves[-1][3] is None:
        return None  # an older journal's move cannot tell whether it happened
    _, _src, manifest, ident = moves[-1]
    return os.path.dirname(manifest) if sink_record.identity(manifest) == ident else None


def _intact(sink: List[Step], dest: str) -> bool:
    """Whether a finished sink's result in ``dest`` is still the one it published: the folder it
    swapped in, or each file it moved in, has the identity the journal recorded, and the files of
    a swapped-in result have those the record of what it published names (a destination in the
    job's folder has no record: the files its manifest lists exist)."""
    swapped = [s for s in sink if s[0] == "swap"]
    if any(not _swapped(s) for s in swapped):
        return False
    if any(len(s) < 4 or s[3] is None or sink_record.identity(s[2]) != s[3] for s in sink if s[0] == "move"):
        return False
    if not swapped:
        return True
    records = [s for s in sink if s[0] == "record"]
    if records:  # the record the sink's steps wrote (again, just now), signed
        rec = sink_record.load(os.path.dirname(records[0][1]), dest)
        return rec is not None and all(sink_record.identity(os.path.join(dest, n)) == i for n, i in rec.files.items())
    try:
        listed = manifest_paths(dest)
    except (OSError, UnicodeDecodeError):
        return False
    return listed is not None and all(os.path.lexists(p) for p in listed)


def _appended(sink: List[Step]) -> bool:
    """Whether a sink added its files beside a destination's (an append: moves, no swap). Once
    visible it counts as published, intact or not: publishing it again would add them twice."""
    return not any(s[0] == "swap" for s in sink) and any(s[0] == "move" for s in sink)


def _sinks_of(journal: dict) -> List[Tuple[List[Step], Optional[str], Optional[dict]]]:
    """Each sink's steps, the commit record the journal writes for it and its entry (None: not
    told, in a journal written before journals told it; its sinks are told apart by their steps alone)."""
    steps = journal["steps"]
    if "sinks" in journal:
        return [(steps[m["steps"][0] : m["steps"][1]], m["record"], m) for m in journal["sinks"]]
    return [(sink, None, None) for sink in _sinks(steps)]


def _abandon(runtime_ctx, journal: dict, missing: List[Tuple[str, str]]) -> Abandoned:
    """Give the journal up: finish the sinks readers already see (see the module docstring); of
    those, the ones whose result is still intact count as published (their commit records are
    written, if not yet, and kept), and so does an append the manifest in place lists; roll back
    an append no manifest lists; remove the other commit records it wrote (those still holding
    its bytes: their sinks are not published now) and then the journal itself."""
    finished, kept, owner, rolled_back = [], {}, None, []
    discards = {s[1]: s[3] for s in journal["steps"] if s[0] == "discard"}
    for sink, record, entry in _sinks_of(journal):
        dest = _visible(sink)
        appended = own_lines(sink, entry)
        if dest is None and appended is not None:
            listed = published_by_lines(sink, appended)
            if listed is not None and record is not None:
                kept[record] = listed  # counts as published; its steps do not run (a newer manifest is there)
            elif listed is None:
                undone = roll_back(sink)  # its files that moved in go; its sink runs again
                if undone is not None:
                    rolled_back.append(undone)
            continue
        if dest is None:
            continue
        owner = owner or owner_record(runtime_ctx.job_root)
        for step in sink:
            if step[0] == "discard":  # the rerun publishes there again, and would refuse a user's file in it
                _, aside, dest_, ours = step
                discard_aside(aside, dest_, ours if isinstance(ours, dict) else dict.fromkeys(ours), back=False)
                remove_path(owner_path(aside))
            else:
                _step(step, owner, discards)
        finished.append(dest)
        if record is not None and (_intact(sink, dest) or _appended(sink)):
            kept[record] = dest
    for folder in journal.get("sync", []) if finished else []:
        fsync_dir(folder)
    removed = 0
    for step in journal["steps"]:
        if step[0] != "write":
            continue
        _, path, data = step
        if path in kept:
            if not os.path.lexists(path):
                atomic_write_bytes(path, data)
            continue
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
    return Abandoned(dests, missing, removed, finished, sorted(kept.values()), sorted(rolled_back))


def roll_forward(runtime_ctx, journal: Optional[dict] = None):
    """Carry out (or finish) the publication in the job's journal.

    Returns False if there is none, True once it is carried out, or an :class:`Abandoned` when
    it could not be finished and was given up (only the sinks readers already saw were finished;
    see the module docstring). ``journal``: one just written (a publication in progress), else the job's is read.
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
    # another job publishing into a destination of this journal at the same time would plan from
    # the state before this one's steps, or this one from the state before its: they take turns
    records_dir = sink_records_dir(runtime_ctx.data_root)
    with destinations_locked(destinations(journal), records_dir, runtime_ctx.job_root):
        outside = outside_destinations(runtime_ctx, destinations(journal))
        if earlier and outside:  # a journal of a smallpond without publication marks has none
            mark(records_dir, runtime_ctx.job_root, outside, fsync=bool(journal.get("sync")))
        try:
            return _carry_out(runtime_ctx, journal, path, earlier)
        finally:
            if outside and not os.path.lexists(path):  # carried out or given up: no longer pending
                unmark(records_dir, runtime_ctx.job_root)


def outside_destinations(runtime_ctx, dests) -> List[str]:
    """Of ``dests``, those outside the job's own folder: the ones another job could nest with, which
    its publication mark names (:mod:`~smallpond.execution.ops.sink_pending`)."""
    root = os.path.realpath(runtime_ctx.job_root)
    return [d for d in dests if not inside(os.path.realpath(d), root)]


def _carry_out(runtime_ctx, journal: dict, path: str, earlier: bool):
    """:func:`roll_forward` once the journal's destinations are locked."""
    missing = blocked_steps(journal["steps"])
    if missing:
        return _abandon(runtime_ctx, journal, missing)
    if earlier:
        logger.warning("finishing the publication an earlier run of this job began ({} step(s))", len(journal["steps"]))
    if rebase_appends(journal):  # another job appended meanwhile: merged into its manifest, recorded first
        dump(journal, path, secret=runtime_ctx.secret, fsync=bool(journal.get("sync")))
    owner = owner_record(runtime_ctx.job_root) if any(s[0] == "swap" for s in journal["steps"]) else None
    discards = {s[1]: s[3] for s in journal["steps"] if s[0] == "discard"}
    for index, step in enumerate(journal["steps"]):
        _test_hooks(index)
        _step(step, owner, discards)
    for folder in journal.get("sync", []):
        fsync_dir(folder)
    remove_path(path)
    return True
