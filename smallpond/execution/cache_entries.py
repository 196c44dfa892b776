"""Task-cache entries on disk: a record file with the entry's files beside it, no folder of their
own (the folders of earlier releases are still read), see :mod:`smallpond.execution.cache`.

In a shard folder ``entries/{k[:2]}/`` of the cache, the entry of key ``k`` is::

    {k}                   its record (format 2): signed with the cache's secret; usually the task's
                          commit record, linked (one file for both)
    {k}.{s}.{i}{ext}      its i-th file as the record lists them: a hard link to the task's output
                          (a copy across filesystems); ``s``: a token of the insertion, named in the
                          record; ``ext``: the file's extension, for whoever looks
    {k}/                  an entry of an earlier release (format 1): a folder holding ``.record``
                          and the files under their paths relative to the task's output folder

Invariants:

* **An entry is visible once whole.** Its files are linked first, under names that no other
  insertion uses (its token); its record is published last, by a link that fails if the name
  exists: of two jobs inserting one key, the first wins and the other removes its files. A crash
  leaves only files that no record names, which :func:`smallpond.execution.cache.clean` removes
  once they are an hour old (:func:`orphan_files`).
* **Never misread.** A record's format says where its files are and must match what holds it:
  format 2 in a file, format 1 in a folder. Any other record is of another format: not served.
* **Removal hides first.** A record file is unlinked before its files; a folder is renamed away
  before it is emptied.

Why no folder: an entry in a folder of its own was a folder made under ``tmp/`` (a new inode),
two links and a rename per task; it is now two links. On the ext4 this project is measured on (no
journal, many files deleted), 2,000 insertions of a one-file output took 46-117 us of CPU each the
old way and 27-41 us this way, in interleaved runs (the gap grows as the disk churns).
"""

from __future__ import annotations

import os
import pickle
import stat
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from smallpond.io.filesystem import folder_size, read_file, remove_path, verified_payload

#: the format of the entries this release writes: a record file, its files beside it
CACHE_FORMAT = 2
#: entries of earlier releases: a folder holding the record (:data:`RECORD`) and the files
FOLDER_FORMAT = 1
#: the record's name in an entry folder (format 1; a task never writes dot files)
RECORD = ".record"
#: files of an insertion that no record names are left by a crash once they are this old
ORPHAN_SECONDS = 3600.0


def stored_name(record_path: str, store: str, i: int, rel: str) -> str:
    """Where an entry of format 2 keeps its ``i``-th file (``rel``: its path in the task's output)."""
    ext = os.path.splitext(rel)[1]
    if len(ext) > 16 or not ext[1:].replace("_", "").isalnum():
        ext = ""
    return f"{record_path}.{store}.{i}{ext}"


@dataclass
class Entry:
    """A verified cache entry: its key, where it is (the record file, or an earlier release's
    folder) and its (signed) record."""

    key: str
    path: str
    record: Dict[str, Any]

    @property
    def in_folder(self) -> bool:
        return self.record.get("format") == FOLDER_FORMAT

    @property
    def record_path(self) -> str:
        return os.path.join(self.path, RECORD) if self.in_folder else self.path

    def file_path(self, i: int, rel: str) -> str:
        """Where the ``i``-th file of the record's list (``rel``) is."""
        if self.in_folder:
            return os.path.join(self.path, rel)
        return stored_name(self.path, self.record["store"], i, rel)

    def files(self) -> List[Tuple[str, str]]:
        """(path relative to the task's output folder, where it is in the entry) of each file."""
        return [(f[0], self.file_path(i, f[0])) for i, f in enumerate(self.record.get("files", []))]

    def stored_paths(self) -> Dict[str, str]:
        """{path of a file as the record's dataset names it: where the file is in the entry}."""
        base = self.record["base"]
        return {f"{base}{os.sep}{rel}": where for rel, where in self.files()}

    @property
    def job(self) -> str:
        return str(self.record.get("job", ""))

    @property
    def task(self) -> str:
        return str(self.record.get("task", ""))

    @property
    def bytes(self) -> int:
        return int(self.record.get("bytes", 0))


class Unreadable(Exception):
    """An entry's record exists but cannot be trusted or read (its message says why)."""


def read_entry(path: str, key: str, secret: bytes) -> Optional[Entry]:
    """The entry at ``path`` (a record file, or a folder of an earlier release), unverified files;
    None if there is none; :class:`Unreadable` if its record cannot be trusted, is of another
    format or key. Raises what :func:`~smallpond.io.filesystem.verified_payload` raises for a
    torn or forged record."""
    try:
        data = read_file(path)
        where = path
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:  # an entry of an earlier release
        where = os.path.join(path, RECORD)
        try:
            data = read_file(where)
        except FileNotFoundError:
            return None
    record = pickle.loads(verified_payload(data, secret, where))
    if isinstance(record, dict) and isinstance(record.get("cache"), dict):  # a commit record, linked
        record = {**record["cache"], "dataset": record.get("dataset")}
    if not isinstance(record, dict) or record.get("key") != key:
        raise Unreadable("its record is of another key")
    expected = FOLDER_FORMAT if where != path else CACHE_FORMAT
    if record.get("format") != expected or (expected == CACHE_FORMAT and not isinstance(record.get("store"), str)):
        raise Unreadable("its record is of another format")
    return Entry(key, path, record)


def remove_entry(path: str, trash: str, secret: Optional[bytes]) -> bool:
    """Remove the entry at ``path``, hidden first: a record file is unlinked before its files
    (found from the record, if it can be read with ``secret``; else left to :func:`orphan_files`),
    a folder renamed to ``trash`` before it is emptied. False if there was none."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISDIR(st.st_mode):
        away = f"{trash}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, away)
        except OSError:
            return False
        remove_path(away)
        return True
    files = _stored_files(path, secret)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    for p in files:
        _unlink_quietly(p)
    return True


def _stored_files(path: str, secret: Optional[bytes]) -> List[str]:
    """The files of the record file at ``path``, [] if it cannot be read and trusted."""
    if secret is None:
        return []
    try:
        key = os.path.basename(path)
        entry = read_entry(path, key, secret)
    except Exception:
        return []
    return [] if entry is None or entry.in_folder else [where for _, where in entry.files()]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def shard_entries(shard_dir: str) -> Iterator[Tuple[str, str, bool]]:
    """(key, path, is a folder of an earlier release) of every entry of a shard folder."""
    try:
        names = sorted(os.listdir(shard_dir))
    except OSError:
        return
    for name in names:
        if "." not in name:
            path = os.path.join(shard_dir, name)
            yield name, path, os.path.isdir(path)


def orphan_files(shard_dir: str, secret: bytes, now: Optional[float] = None) -> List[str]:
    """Files of a shard folder that no entry's record names (left by an insertion that crashed or
    lost), changed (linked) more than :data:`ORPHAN_SECONDS` ago: an insertion under way is younger."""
    now = time.time() if now is None else now
    try:
        names = os.listdir(shard_dir)
    except OSError:
        return []
    named: Dict[str, set] = {}
    out = []
    for name in sorted(names):
        key, dot, _ = name.partition(".")
        if not dot:
            continue
        if key not in named:
            named[key] = set(_stored_files(os.path.join(shard_dir, key), secret))
        path = os.path.join(shard_dir, name)
        if path in named[key]:
            continue
        try:
            if now - os.lstat(path).st_ctime > ORPHAN_SECONDS:
                out.append(path)
        except OSError:
            pass
    return out


def entry_usage(path: str, key: str, secret: bytes) -> Tuple[float, int]:
    """(last use, bytes) of the entry at ``path``: its record's modification time (0.0 for an
    entry whose record is missing or cannot be trusted: a broken one) and its files' sizes."""
    if os.path.isdir(path):  # an earlier release's folder
        try:
            used = os.stat(os.path.join(path, RECORD)).st_mtime
        except OSError:
            used = 0.0
        return used, folder_size(path)
    try:
        st = os.lstat(path)
        entry = read_entry(path, key, secret)
    except Exception:
        entry = None
    if entry is None:
        return 0.0, 0
    size = st.st_size
    for _, where in entry.files():
        try:
            size += os.lstat(where).st_size
        except OSError:
            pass
    return st.st_mtime, size
