"""Which files of a destination smallpond published there: one record per destination, kept under the data root.

A destination's ``.MANIFEST.txt`` names the files a publication wrote (:mod:`~smallpond.execution.ops.sink`),
but a name is not a file: a user may put a file of their own in place of ``part-0.parquet``, append
to it, or write a ``.MANIFEST.txt`` of absolute paths by hand. ``mode="overwrite"`` must remove
none of these. So every publication into a folder outside the job's own also writes a record of
what it put there: the **identity** of each file (size, modification time in nanoseconds, inode,
device: what a rename keeps and a rewrite or a replacement changes; not the change time, which
hard links coming and going change) and of the manifest itself.

Invariants:

* **The result folder is unchanged by the record.** It is kept outside it, in the user's own
  folder of the data root (:mod:`~smallpond.execution.user_folder`), at
  ``{data_root}/.smallpond/users/{uid}/sinks/{sha256 of realpath(dest)}.record``
  (:func:`record_path`), so two runs of the same job still publish byte-identical folders holding
  only their files and ``.MANIFEST.txt``. Each user of a shared data root has records of their own:
  another user's result has no record of this user's, and is refused like any unrecorded one.
* **A file is smallpond's only if the record proves it** (:func:`owned`): the record names the
  destination, the destination's manifest has the identity recorded (so a hand-written or
  user-edited manifest is not ours, and nor is anything it lists), and the file has the identity
  recorded for its name. Anything else is treated as a user's: an overwrite is refused at plan
  time, naming the files.
* **No record, no ownership.** A result written by an older smallpond, or by a job with another
  data root, has no record here; its files cannot be told from a user's, so an overwrite of it is
  refused with a message saying so (the user removes it, or chooses another folder). So is an
  append into it: an append rewrites the manifest (keeping its lines), and a manifest smallpond
  cannot prove it wrote is a user's file. (An append beside files no manifest lists leaves them
  alone and unrecorded; only the new ones are recorded.)
* **Written right after the files it describes, from identities taken before.** The record's
  bytes are computed from the staged files when the publication is planned (a rename keeps
  every identity), and written by the journal step that follows the swap. A crash between the
  two leaves a record whose manifest identity does not match the folder: the folder is then
  "not recorded" (refused, never removed), and a rerun of the job rolls the journal forward and
  writes the record. A file a user changes in the meantime no longer matches the record.
* **Signed, or no record.** A record is a signed record of :mod:`smallpond.io.filesystem`
  (``SPSIG2``, HMAC-SHA256) under the user's key ``{data_root}/.smallpond/users/{uid}/secret``
  (:func:`key`: 32 random bytes, ``0600``, made and checked by
  :func:`~smallpond.io.filesystem.private_key`, as the task cache's key is). The data root may
  be writable by others (a shared root gets a warning, not a refusal), and a record decides
  what an overwrite deletes: a record planted there could name a user's manifest and files and
  have them removed. A record that is damaged, signed with another key (planted, or the key was
  lost), or of the earlier unsigned format (``{sha256}.json``) counts as no record; the refusal
  says which (:func:`examine`).
* **Records of results that are gone go.** :func:`prune` (``smallpond clean``) removes a record
  whose destination no longer holds the manifest it recorded (removed, replaced, moved), and
  never one whose destination still does: the result it vouches for is still there. It prunes
  this user's records only, through the checked user folder (:func:`~smallpond.execution.user_folder.open_own`),
  and then the publication lock files (``{sha256}.lock``, :mod:`~smallpond.execution.ops.sink_lock`) of
  destinations left without a record that no job holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from smallpond.errors import ParameterError
from smallpond.execution import user_folder
from smallpond.execution.runtime import SINKS_DIRNAME, sink_records_dir
from smallpond.io.filesystem import (
    READ_FLAGS,
    CorruptRecord,
    SignatureError,
    atomic_write_bytes,
    private_key,
    remove_abandoned_temps,
    remove_path,
    signed_bytes,
    unverified_payload,
    verified_payload,
)
from smallpond.io.paths import MANIFEST_NAME

#: the manifest's name in a destination (named once, in smallpond.io.paths, where readers find it too)
MANIFEST = MANIFEST_NAME
_FORMAT = "smallpond-sink-record-2"
_LEGACY_FORMAT = "smallpond-sink-record-1"  # unsigned JSON in {sha256}.json: never trusted
_SUFFIX, _LEGACY_SUFFIX = ".record", ".json"

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


def key_path(records_dir: str) -> str:
    """The key for the records in ``records_dir``: ``secret`` beside it, in the user's folder."""
    return os.path.join(os.path.dirname(records_dir), "secret")


def key(records_dir: str, create: bool = True) -> Optional[bytes]:
    """The key that signs the records in ``records_dir`` (made if there is none and ``create``;
    else None). Refused with a ParameterError if it, or the user folder holding it, is not private
    to this user."""
    if create:
        user_folder.prepare(records_dir)
    return private_key(
        key_path(records_dir),
        "the data root's key for its records of published results",
        "refusing to trust or write records under it (remove it, or make it a file only this user can read)",
        create=create,
    )


def record_path(records_dir: str, dest: str) -> str:
    """Where the record of destination ``dest`` is kept: named after its real path."""
    return os.path.join(records_dir, _record_name(os.path.realpath(dest)))


#: the publication lock of a destination (ops/sink_lock.py) is its record's name with this suffix
LOCK_SUFFIX = ".lock"


def lock_path(records_dir: str, dest: str) -> str:
    """The publication lock file of destination ``dest``: beside its record, named after its real path."""
    return record_path(records_dir, dest)[: -len(_SUFFIX)] + LOCK_SUFFIX


def _legacy_path(path: str) -> str:
    return path[: -len(_SUFFIX)] + _LEGACY_SUFFIX


class Record(NamedTuple):
    """What a publication into a destination left there: its manifest's identity and its files',
    and the job folder of the job that published it (None in records written before it was kept)."""

    manifest: Identity
    files: Dict[str, Identity]
    job: Optional[str] = None


def _is_identity(value) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(type(x) is int for x in value)


def _parse(payload: bytes) -> Optional[dict]:
    try:
        data = json.loads(payload.decode("utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _valid(data: dict, dest: str) -> Optional[Record]:
    files, manifest = data.get("files"), data.get("manifest")
    if data.get("format") != _FORMAT or data.get("dest") != os.path.realpath(dest):
        return None
    if not _is_identity(manifest) or not isinstance(files, dict) or not all(_is_identity(v) for v in files.values()):
        return None
    job = data.get("job")
    return Record(manifest, files, job if isinstance(job, str) else None)


def examine(records_dir: Optional[str], dest: str) -> Tuple[Optional[Record], str]:
    """The record of ``dest``; or None and why there is no usable one: ``""`` when there is none
    at all, else a clause naming the record file and what is wrong with it (for refusals)."""
    if not records_dir:
        return None, ""
    path = record_path(records_dir, dest)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        legacy = _legacy_path(path)
        if os.path.lexists(legacy):
            return None, (
                f"its record {legacy} was written by an earlier smallpond, unsigned, and cannot be told from a "
                "forged one; smallpond signs its records since"
            )
        return None, ""
    except OSError as e:
        return None, f"its record {path} cannot be read ({e.strerror or e})"
    try:
        secret = key(records_dir, create=False)
    except (ParameterError, OSError) as e:
        return None, f"its record {path} cannot be verified: {e}"
    if secret is None:
        return None, f"its record {path} cannot be verified: the key that signed it, {key_path(records_dir)}, is gone"
    try:
        payload = verified_payload(data, secret, path)
    except CorruptRecord:
        return None, f"its record {path} is not an intact signed record (torn, truncated, or unsigned)"
    except SignatureError:
        return None, (
            f"its record {path} is not signed with this data root's key {key_path(records_dir)} "
            "(it was altered or planted, or signed with a key since lost)"
        )
    parsed = _parse(payload)
    rec = _valid(parsed, dest) if parsed is not None else None
    if rec is None:
        return None, f"its record {path} is not a record of this folder"
    return rec, ""


def load(records_dir: Optional[str], dest: str) -> Optional[Record]:
    """The record of ``dest``, or None if there is none that is signed, intact and of this folder."""
    return examine(records_dir, dest)[0]


def render(
    dest: str, manifest: Optional[Identity], files: Dict[str, Identity], secret: bytes, job: Optional[str] = None
) -> Optional[bytes]:
    """The bytes of a record of ``dest``, signed (None when the manifest has no identity: nothing
    to vouch for); ``job``: the job folder of the job publishing it (named by refusals)."""
    if manifest is None:
        return None
    data = {"format": _FORMAT, "dest": os.path.realpath(dest), "manifest": manifest, "files": files}
    if job:
        data["job"] = job
    return signed_bytes(json.dumps(data, sort_keys=True).encode(), secret)


def job_of(data: bytes) -> Optional[str]:
    """The job folder a record's bytes (as :func:`render` made them) name, unverified (this
    process's own record, being rewritten), or None."""
    parsed = _parse(unverified_payload(data)) if isinstance(data, bytes) else None
    job = parsed.get("job") if parsed is not None else None
    return job if isinstance(job, str) else None


def record_of(
    records_dir: str,
    dest: str,
    folder: str,
    names: Iterable[str],
    kept: Optional[Dict[str, Identity]] = None,
    job: Optional[str] = None,
) -> Optional[bytes]:
    """The record a publication of ``folder`` (a staged result: its ``.MANIFEST.txt`` and files
    ``names``) into ``dest`` by job folder ``job`` will leave, signed with the key of ``records_dir``, with ``kept``:
    the recorded identities of earlier files that stay there, listed again (an append).
    Identities are taken now; the renames that publish the files keep them."""
    files = dict(kept or {})
    for name in names:
        ident = identity(os.path.join(folder, name))
        if ident is not None:
            files[name] = ident
    return render(dest, identity(os.path.join(folder, MANIFEST)), files, key(records_dir), job)


def save(path: str, data: bytes) -> None:
    """Write a record (atomically: a reader sees the previous record or this one)."""
    user_folder.prepare(os.path.dirname(path))
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write_bytes(path, data, hold=True)  # (a kill -9's temp file is told from a write in progress)
    remove_path(_legacy_path(path))  # an unsigned record of the same folder, now replaced


class Ownership(NamedTuple):
    """What of a destination's earlier result is smallpond's.

    ``record``: the destination's record, if any; ``problem``: why a record file there is not
    one (damaged, unsigned, forged: :func:`examine`), ``""`` if there is none; ``recorded``: it vouches for the manifest now
    there; ``owned``: name -> identity of the files that are still the ones it wrote (the
    manifest among them when ``recorded``); ``unproven``: names the manifest lists in the folder
    that are there but not owned (replaced, modified, or never recorded).
    """

    record: Optional[Record]
    problem: str
    recorded: bool
    owned: Dict[str, Identity]
    unproven: List[str]


def owned(records_dir: Optional[str], dest: str, listed: Iterable[str]) -> Ownership:
    """Which of ``listed`` (the names the manifest of ``dest`` lists in it) smallpond wrote there."""
    rec, problem = examine(records_dir, dest)
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
    return Ownership(rec, problem, recorded, ours, unproven)


def _claim(data: bytes) -> Optional[dict]:
    """What a record file says (its destination and manifest identity), verified or not (an
    unsigned record of the earlier format too): pruning only decides what to keep, and keeping a
    record is always safe, since only a verified one is ever used."""
    payload = unverified_payload(data)
    parsed = _parse(payload)
    if parsed is None or not isinstance(parsed.get("dest"), str) or not _is_identity(parsed.get("manifest")):
        return None
    return parsed


#: the records folder's index of which destination each record names (record file name ->
#: destination), so that finding the records of folders inside a destination reads only the
#: records written since (a dot name: never taken for a record, nor pruned)
_INDEX = ".destinations.json"


def claimed_destinations(records_dir: str, write_index: bool = True) -> List[str]:
    """The destinations the records in ``records_dir`` claim to be of, unverified (a candidate
    only: :func:`load` verifies the record before anything relies on it).

    A record's file name is the hash of its destination (:func:`record_path`), so which
    destination a record names never changes: it is read once and kept in the folder's index
    (:data:`_INDEX`). An index entry is used only if its destination hashes to its record's name
    (an entry that does not, or a record the index lacks, is read from the record); the folder's
    listing says which records there are, so a removed record is never claimed. An index out of
    date is written again unless ``write_index`` is false (a dry run, which must write nothing)."""
    try:
        names = sorted(n for n in os.listdir(records_dir) if n.endswith(_SUFFIX) and not n.startswith("."))
    except OSError:
        return []
    index = _read_index(records_dir)
    out, known, fresh = [], {}, False
    for name in names:
        dest = index.get(name)
        if not isinstance(dest, str) or _record_name(dest) != name:
            dest, fresh = _read_claim(records_dir, name), True
            if dest is None:
                continue
        if _record_name(dest) == name:
            known[name] = dest
        out.append(dest)
    if write_index and (fresh or len(known) != len(index)):
        try:
            atomic_write_bytes(os.path.join(records_dir, _INDEX), json.dumps(known, sort_keys=True).encode(), hold=True)
        except OSError:
            pass  # only a cache: the next lookup reads those records again
    return out


def _record_name(real: str) -> str:
    """The file name of the record of the folder whose real path is ``real``."""
    return hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest() + _SUFFIX


def _read_index(records_dir: str) -> dict:
    try:
        with open(os.path.join(records_dir, _INDEX), "rb") as f:
            index = _parse(f.read())
    except OSError:
        return {}
    return index or {}


def _read_claim(records_dir: str, name: str) -> Optional[str]:
    """The destination record file ``name`` claims (unverified), or None if it cannot be read."""
    try:
        with open(os.path.join(records_dir, name), "rb") as f:
            claim = _claim(f.read())
    except OSError:
        return None
    return claim["dest"] if claim is not None else None


def _is_record_name(name: str) -> bool:
    """Whether ``name`` is a record's (which prune may set aside), not the index's."""
    return name != _INDEX and _is_written_here(name)


def prune(data_root: str, dry_run: bool = True) -> Tuple[List[str], int]:
    """Remove (unless ``dry_run``) this user's records under ``data_root`` whose destination no
    longer holds the manifest they recorded; returns the destinations (or record files, for a
    record too damaged to name one) whose record was or would be removed, and how many records stay.

    A record whose destination still holds its manifest is kept, whether or not it verifies:
    only a verified one is ever used, so keeping one is always safe. Files are read and removed
    through the user folder as checked when opened (a :class:`ParameterError` if it is not this
    user's own), never by a path that a swapped folder could send elsewhere. Unless ``dry_run``,
    the temp files of records (and of the index) whose writer a kill -9 interrupted go too, never
    one being written (:func:`~smallpond.io.filesystem.remove_abandoned_temps`), and a record that a
    clean killed while it removed it left set aside is put back first
    (:func:`~smallpond.execution.user_folder.put_back_set_aside`)."""
    records_dir = sink_records_dir(data_root)
    try:
        folder = user_folder.open_own(data_root, SINKS_DIRNAME)
    except FileNotFoundError:
        return [], 0
    try:
        return _prune(folder, records_dir, dry_run)
    finally:
        os.close(folder)


def _prune(folder: int, records_dir: str, dry_run: bool) -> Tuple[List[str], int]:
    if not dry_run:
        user_folder.put_back_set_aside(folder, _is_record_name)  # a killed clean's: judged again below
    names = sorted(n for n in os.listdir(folder) if n.endswith((_SUFFIX, _LEGACY_SUFFIX)) and not n.startswith("."))
    removed, kept = [], 0
    for name in names:
        try:
            fd = os.open(name, READ_FLAGS | getattr(os, "O_NOFOLLOW", 0), dir_fd=folder)
        except FileNotFoundError:
            continue
        except OSError:  # not a file (a link, a folder): not a record smallpond wrote; left alone
            kept += 1
            continue
        with os.fdopen(fd, "rb") as f:  # (held open until judged: its inode is not reused meanwhile)
            claim = _claim(f.read())
            if claim is not None and identity(os.path.join(claim["dest"], MANIFEST)) == claim["manifest"]:
                kept += 1
                continue
            if dry_run or user_folder.remove_if_same(folder, name, os.fstat(f.fileno())):
                removed.append(claim["dest"] if claim is not None else os.path.join(records_dir, name))
    if not dry_run:
        remove_abandoned_temps(folder, _is_written_here)  # of records and the index, whose writer was killed
        for name in sorted(n for n in os.listdir(folder) if n.endswith(LOCK_SUFFIX) and not n.startswith(".")):
            if not user_folder.exists_at(folder, name[: -len(LOCK_SUFFIX)] + _SUFFIX):
                _remove_unused_lock(folder, name)
    return removed, kept


def _is_written_here(name: str) -> bool:
    """Whether ``name`` is a file the engine writes with a temp file in the records folder: a
    record (or an unsigned one of the earlier format) or the index."""
    stem, dot, suffix = name.partition(".")
    return name == _INDEX or (
        len(stem) == 64 and "." + suffix in (_SUFFIX, _LEGACY_SUFFIX) and all(c in "0123456789abcdef" for c in stem)
    )


def _remove_unused_lock(folder: int, name: str) -> None:
    """Remove the publication lock file ``name`` of ``folder`` (a descriptor), of a destination with
    no record, unless a job holds it (:mod:`~smallpond.execution.ops.sink_lock`): removed while
    locked by this process, so a job that opened it meanwhile finds it gone once it has the lock,
    and locks the file then at its name."""
    import fcntl

    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(name, dir_fd=folder, follow_symlinks=False).st_ino:
            os.unlink(name, dir_fd=folder)
    except OSError:  # held by a publication, gone, or a filesystem without locks: it stays
        pass
    finally:
        os.close(fd)
