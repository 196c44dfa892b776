"""Appends in the publication journal: all or nothing for a reader, and never undoing another job's append.

An append (``mode="append"`` into a folder that exists) publishes by moving its files into the
destination, then a new ``.MANIFEST.txt`` (the lines of the one in place when the publication
was planned, then its own), then the record of what the folder holds
(:func:`~smallpond.execution.ops.sink.plan_steps`). Readers go by the manifest: until it is
moved in, the append is not there for them. Between a crash and the rerun that finishes the
journal, another job may append to the same folder. So:

* **Finishing an append merges it into the manifest in place** (:func:`rebase_appends`, before
  any step of a journal runs): when the staged manifest is not the lines of the destination's
  manifest now (those whose file is still there, or that lie elsewhere, as a plan keeps them) and
  this append's own lines, each once, it is rewritten so, and the record step is computed again
  from the destination's record (the files it vouches for, while it vouches for the manifest now
  there) and this append's files; the journal is written again with both, before they move. A
  journal carries each append's own lines (``"append"`` in its sink's entry; a journal written
  before tells them by its data moves). Moving the older staged manifest over a newer one would
  drop the other job's files out of it. A manifest there that smallpond did not write (not one
  absolute path per line, or, in a recorded destination, not the one its record vouches for: a
  user's file put in its place) is neither merged into nor replaced: the publication is refused,
  naming it and saying to move it away. A manifest removed since is not put back: the append
  lists its own files in a new one, as an append into a folder without a manifest does, and says so.
* **An append its journal cannot finish is rolled back** (:func:`roll_back`, when the journal is
  abandoned, see :mod:`~smallpond.execution.ops.sink_journal`) unless the manifest in place
  lists every file it appends (its own manifest was moved in, and maybe another job's append
  kept its lines since: it counts as published). Its files that moved in, and that no manifest
  lists, are removed, only those with the identity the journal recorded when it staged them (so
  smallpond wrote them), and its sink runs again: its rows are then appended once. Finishing it
  instead would need its staged files, and those that are gone are what made the journal
  unfinishable: a part of an append is never published.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from smallpond.common import logger
from smallpond.errors import SmallpondError
from smallpond.execution.ops import sink_record
from smallpond.io.filesystem import atomic_write_text, remove_path

MANIFEST = sink_record.MANIFEST

Step = Tuple


class PublicationError(SmallpondError):
    """A prepared result could not be published (the destination changed, a staged folder vanished)."""


def load_manifest(path: str) -> Tuple[bool, Optional[List[str]]]:
    """Whether a ``.MANIFEST.txt`` is at ``path``, and the paths it lists if smallpond wrote it
    (one absolute path per line; see :func:`~smallpond.execution.ops.sink._load_manifest`)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return os.path.lexists(path), None  # a dangling symlink by that name is not ours either
    except (OSError, UnicodeDecodeError):
        return True, None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last path
    if not all(os.path.isabs(line) for line in lines):
        return True, None
    return True, lines


def _same_dir(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or os.path.realpath(a) == os.path.realpath(b)


def kept_lines(dest: str, lines: List[str]) -> List[str]:
    """Of a destination's manifest lines, those an append lists again: files still in ``dest``,
    and files elsewhere (a manifest-only result's)."""
    return [p for p in lines if os.path.lexists(p) or not _same_dir(os.path.dirname(p), dest)]


def own_lines(sink: List[Step], entry: Optional[dict]) -> Optional[List[str]]:
    """The lines an append sink adds to its destination's manifest, or None if the sink is not an
    append (it swaps a folder in) or its journal cannot tell (an older journal's manifest-only sink)."""
    if any(s[0] == "swap" for s in sink):
        return None
    if entry is not None and entry.get("append") is not None:
        return list(entry["append"])
    data = [s for s in sink if s[0] == "move"][:-1]  # the last move is the manifest
    return [s[2] for s in data] if data else None


def _manifest_step(sink: List[Step]) -> Optional[Step]:
    moves = [s for s in sink if s[0] == "move"]
    return moves[-1] if moves and len(moves[-1]) > 3 else None


def _vouched(records_dir: str, dest: str, path: str) -> bool:
    """Whether the data root's record of ``dest`` vouches for the manifest at ``path`` (smallpond wrote it)."""
    rec = sink_record.load(records_dir, dest)
    return rec is not None and rec.manifest == sink_record.identity(path)


def _merged(dest: str, ours: List[str], records_dir: Optional[str], planned: List[str]) -> str:
    """The manifest an append finishes with: the lines of ``dest``'s manifest now that stay, then
    ``ours``. Refused (PublicationError) when the manifest in place is not smallpond's: not one
    absolute path per line, or (``records_dir``: the destination is recorded) not the one the
    record vouches for. ``planned``: the earlier lines the append was planned with (for the warning
    when the manifest is gone)."""
    path = os.path.join(dest, MANIFEST)
    present, lines = load_manifest(path)
    if present and (lines is None or (records_dir is not None and not _vouched(records_dir, dest, path))):
        how = (
            "it does not list one absolute path per line"
            if lines is None
            else "the data root's record of the folder does not vouch for it"
        )
        raise PublicationError(
            f"cannot finish appending to {dest}: {path} was replaced or edited since the append was planned, "
            f"by a file smallpond did not write ({how}), and smallpond never replaces a user's file; nothing was "
            f"published. Move it out of {dest} and run the job again: the append then lists its own files in a "
            "new manifest (the files the earlier one listed stay in the folder, listed by none)"
        )
    if not present and planned:
        logger.warning(
            "{} has no {} any more (removed since this append was planned, when it listed {} file(s)): the append "
            "lists only its own {} file(s) in a new one, as an append into a folder without a manifest does; "
            "the files the removed manifest listed stay in the folder, listed by none",
            dest,
            MANIFEST,
            len(planned),
            len(ours),
        )
    out = kept_lines(dest, lines or [])
    seen = set(out)
    for p in ours:
        if p not in seen:
            out.append(p)
            seen.add(p)
    return "".join(p + "\n" for p in out)


def _record(step: Step, dest: str, manifest: List[int], names: Dict[str, Optional[list]], listed: str) -> Step:
    """The record step of an append rebased onto the manifest in place: the files the
    destination's record vouches for (while it vouches for that manifest) that the new manifest
    lists, and this append's files."""
    records_dir = os.path.dirname(step[1])
    rec = sink_record.load(records_dir, dest)
    now = sink_record.identity(os.path.join(dest, MANIFEST))
    in_dest = {os.path.basename(p) for p in listed.splitlines() if _same_dir(os.path.dirname(p), dest)}
    files = dict(rec.files) if rec is not None and now is not None and rec.manifest == now else {}
    files = {n: i for n, i in files.items() if n in in_dest}
    files.update({n: i for n, i in names.items() if i is not None})
    job = sink_record.job_of(step[2])  # this job's, as planned
    return ("record", step[1], sink_record.render(dest, manifest, files, sink_record.key(records_dir), job))


def rebase_appends(journal: dict) -> bool:
    """Merge each append whose manifest is not moved in yet into the destination's manifest as it
    is now (module docstring); True if the journal changed (it must be written again before any
    step runs)."""
    changed = False
    steps = journal["steps"]
    for first, last, entry in _slices(journal):
        sink = steps[first:last]
        ours = own_lines(sink, entry)
        move = _manifest_step(sink)
        if ours is None or move is None or not os.path.lexists(move[1]):
            continue
        staged, target = move[1], move[2]
        dest = os.path.dirname(target)
        try:
            with open(staged) as f:
                before = f.read()
        except (OSError, UnicodeDecodeError):
            before = None
        record = next((s for s in sink if s[0] == "record"), None)  # none: a destination in the job folder
        planned = [p for p in (before or "").splitlines() if p not in set(ours)]
        text = _merged(dest, ours, os.path.dirname(record[1]) if record else None, planned)
        same = before == text
        if not same:
            atomic_write_text(staged, text)
        ident = sink_record.identity(staged)
        if ident == move[3]:
            continue
        names = {os.path.basename(s[2]): (s[3] if len(s) > 3 else None) for s in sink if s[0] == "move" and s is not move}
        for i in range(first, last):
            if steps[i] is move:
                steps[i] = ("move", staged, target, ident)
            elif steps[i][0] == "record":
                steps[i] = _record(steps[i], dest, ident, names, text)
        changed = True
    return changed


def _slices(journal: dict) -> List[Tuple[int, int, Optional[dict]]]:
    # a journal that does not tell its sinks apart is of a smallpond that published no append of it differently
    return [(m["steps"][0], m["steps"][1], m) for m in journal.get("sinks", [])]


def published_by_lines(sink: List[Step], ours: List[str]) -> Optional[str]:
    """The destination of an append that the manifest in place lists wholly (it was moved in,
    and maybe another job's append kept its lines since), else None."""
    move = _manifest_step(sink)
    if move is None:
        return None
    dest = os.path.dirname(move[2])
    lines = load_manifest(move[2])[1]
    return dest if lines is not None and set(ours) <= set(lines) else None


def roll_back(sink: List[Step]) -> Optional[str]:
    """Remove the files an unfinished append moved into its destination that no manifest there
    lists (only those with the identity the journal recorded: smallpond wrote them); its
    destination if any were removed."""
    move = _manifest_step(sink)
    if move is None:
        return None
    dest = os.path.dirname(move[2])
    listed = set(load_manifest(move[2])[1] or [])
    removed = []
    for step in sink:
        if step[0] != "move" or step is move or len(step) < 4 or step[3] is None:
            continue
        dst = step[2]
        if dst not in listed and sink_record.identity(dst) == step[3]:
            remove_path(dst)
            removed.append(os.path.basename(dst))
    if removed:
        logger.warning(
            "rolled back the unfinished append into {}: removed {} file(s) it had moved in that no manifest lists "
            "({}); its sink runs again and appends them once",
            dest,
            len(removed),
            ", ".join(removed[:5]),
        )
        return dest
    return None
