"""Which files of a destination smallpond published there: one record per destination, kept under the data root.

A destination's ``.MANIFEST.txt`` names the files a publication wrote (:mod:`~smallpond.execution.ops.sink`),
but a name is not a file: a user may put a file of their own in place of ``part-0.parquet``, append
to it, or write a ``.MANIFEST.txt`` of absolute paths by hand. ``mode="overwrite"`` must remove
none of these. So every publication into a folder outside the job's own also writes a record of
what it put there: the **identity** of each file (size, modification time in nanoseconds, inode,
device: what a rename keeps and a rewrite or a replacement changes; not the change time, which
hard links coming and going change) and of the manifest itself.

Invariants:

* **The result folder is unchanged by the record.** It is kept outside it, at
  ``{data_root}/.smallpond/sinks/{sha256 of realpath(dest)}.json`` (:func:`record_path`), so two
  runs of the same job still publish byte-identical folders holding only their files and
  ``.MANIFEST.txt``.
* **A file is smallpond's only if the record proves it** (:func:`owned`): the record names the
  destination, the destination's manifest has the identity recorded (so a hand-written or
  user-edited manifest is not ours, and nor is anything it lists), and the file has the identity
  recorded for its name. Anything else is treated as a user's: an overwrite is refused at plan
  time, naming the files.
* **No record, no ownership.** A result written by an older smallpond, or by a job with another
  data root, has no record here; its files cannot be told from a user's, so an overwrite of it is
  refused with a message saying so (the user removes it, or chooses another folder). An append
  beside it is allowed; its files stay unrecorded, only the new ones are recorded.
* **Written right after the files it describes, from identities taken before.** The record's
  bytes are computed from the staged files when the publication is planned (a rename keeps
  every identity), and written by the journal step that follows the swap. A crash between the
  two leaves a record whose manifest identity does not match the folder: the folder is then
  "not recorded" (refused, never removed), and a rerun of the job rolls the journal forward and
  writes the record. A file a user changes in the meantime no longer matches the record.

The record is not signed: whoever can write the data root can already change a job's results.
Its folder is created owner-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Dict, Iterable, List, NamedTuple, Optional

from smallpond.io.filesystem import atomic_write_bytes

#: the manifest's name in a destination (the one place that names it)
MANIFEST = ".MANIFEST.txt"
_FORMAT = "smallpond-sink-record-1"

Identity = List[int]


def identity(path: str) -> Optional[Identity]:
    """``[size, mtime_ns, inode, device]`` of the regular file at ``path`` (not following a
    symlink), or None if there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def record_path(records_dir: str, dest: str) -> str:
    """Where the record of destination ``dest`` is kept: named after its real path."""
    key = hashlib.sha256(os.path.realpath(dest).encode("utf-8", "surrogateescape")).hexdigest()
    return os.path.join(records_dir, f"{key}.json")


class Record(NamedTuple):
    """What a publication into a destination left there: its manifest's identity and its files'."""

    manifest: Identity
    files: Dict[str, Identity]


def _is_identity(value) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(type(x) is int for x in value)


def load(records_dir: Optional[str], dest: str) -> Optional[Record]:
    """The record of ``dest``, or None if there is none (or it is not one this module wrote, or
    it names another folder)."""
    if not records_dir:
        return None
    try:
        with open(record_path(records_dir, dest), "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("dest") != os.path.realpath(dest):
        return None
    files, manifest = data.get("files"), data.get("manifest")
    if not _is_identity(manifest) or not isinstance(files, dict) or not all(_is_identity(v) for v in files.values()):
        return None
    return Record(manifest, files)


def render(dest: str, manifest: Optional[Identity], files: Dict[str, Identity]) -> Optional[bytes]:
    """The bytes of a record of ``dest`` (None when the manifest has no identity: nothing to vouch for)."""
    if manifest is None:
        return None
    data = {"format": _FORMAT, "dest": os.path.realpath(dest), "manifest": manifest, "files": files}
    return json.dumps(data, sort_keys=True).encode()


def record_of(dest: str, folder: str, names: Iterable[str], kept: Optional[Dict[str, Identity]] = None) -> Optional[bytes]:
    """The record a publication of ``folder`` (a staged result: its ``.MANIFEST.txt`` and files
    ``names``) into ``dest`` will leave, with ``kept``: the recorded identities of earlier files
    that stay there, listed again (an append). Identities are taken now; the renames that
    publish the files keep them."""
    files = dict(kept or {})
    for name in names:
        ident = identity(os.path.join(folder, name))
        if ident is not None:
            files[name] = ident
    return render(dest, identity(os.path.join(folder, MANIFEST)), files)


def save(path: str, data: bytes) -> None:
    """Write a record (atomically: a reader sees the previous record or this one)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write_bytes(path, data)


class Ownership(NamedTuple):
    """What of a destination's earlier result is smallpond's.

    ``record``: the destination's record, if any; ``recorded``: it vouches for the manifest now
    there; ``owned``: name -> identity of the files that are still the ones it wrote (the
    manifest among them when ``recorded``); ``unproven``: names the manifest lists in the folder
    that are there but not owned (replaced, modified, or never recorded).
    """

    record: Optional[Record]
    recorded: bool
    owned: Dict[str, Identity]
    unproven: List[str]


def owned(records_dir: Optional[str], dest: str, listed: Iterable[str]) -> Ownership:
    """Which of ``listed`` (the names the manifest of ``dest`` lists in it) smallpond wrote there."""
    rec = load(records_dir, dest)
    manifest = identity(os.path.join(dest, MANIFEST))
    recorded = rec is not None and manifest is not None and rec.manifest == manifest
    ours: Dict[str, Identity] = {MANIFEST: manifest} if recorded else {}
    unproven = []
    for name in sorted(set(listed)):
        path = os.path.join(dest, name)
        now = identity(path)
        if now is None and not os.path.lexists(path):
            continue  # gone: nothing to protect, nothing to remove
        if recorded and now is not None and rec.files.get(name) == now:
            ours[name] = now
        else:
            unproven.append(name)
    return Ownership(rec, recorded, ours, unproven)
