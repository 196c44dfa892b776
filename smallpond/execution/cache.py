"""The task cache: task outputs shared by jobs, found by what produced them.

A task whose key (its parameters, code, partition, seed, the engine's versions and the content of
its inputs, see :mod:`smallpond.execution.cache_keys`) matches an entry written by an earlier job
is not run: the entry's files are linked into the job and committed as the task's output.

Layout of the cache folder (default ``task_cache`` in the user's own folder of the data root,
``{data_root}/.smallpond/users/{uid}/task_cache``, see :mod:`~smallpond.execution.user_folder`;
``init(task_cache=...)``, ``SP_TASK_CACHE``, the Driver's ``--task_cache``; ``off`` turns it off)::

    secret                    32 random bytes (0600) that sign every record
    entries/{k[:2]}/{k}       one entry per key: its record, the task's commit record, linked
                              (signed with the cache's secret too, see insert)
    entries/{k[:2]}/{k}.*     beside it, the task's output files (hard links to the committed
                              files, copies across filesystems): no folder per entry, see
                              :mod:`~smallpond.execution.cache_entries` (which still reads the
                              folders ``{k}/`` of earlier releases)
    locks/{k}.lock            a claim: the job computing key k right now (a symbolic link whose
                              target names host, pid, process start time and job)
    index/{p[:2]}/{p}         per node position: for each partition, the key and fingerprint
                              components of its last build (what a dry run compares with)
    tmp/                      entries of earlier releases being removed

Invariants:

* **Only complete entries are visible.** An entry's files are linked under names of their own
  and its signed record is published last, by a link that fails if an entry exists; a crash
  leaves only files no record names, removed by :func:`clean` (see
  :mod:`~smallpond.execution.cache_entries`).
* **Only verified entries are served.** The record is signed with the cache's secret (a record is
  a pickle: code to whoever loads it), and every file must have the size, modification time and
  head/tail digest the record holds: the first and last 64 KiB, and at least the whole Parquet
  footer (its length is read from the file's end). Hard links share the inode with the files of
  the job that wrote them, so a job output edited in place changes the entry too: its time and
  size catch an append or a rewrite, the digests catch a truncation or a replaced block at either
  end. A full hash is not taken on reuse (it would read every byte of every reused output). An
  entry that fails is removed and the task runs. Damage in the middle of a file that keeps its
  size and time (bit rot) is not seen here: the consumer's read fails, the scheduler recomputes
  the producer without the cache (:func:`~smallpond.execution.attempt_files.unreadable_intermediates`)
  and its new output replaces the entry.
* **A reused file is never published as a link.** :meth:`TaskCache.link_into` marks the output
  directory it links (:data:`LINKED_MARKER`); a sink copies the files it finds there
  (:mod:`~smallpond.execution.ops.sink`), so two jobs' results are never one inode.
* **Every backend fills it.** Insertion happens where the attempt commits
  (:func:`insert_after_commit`, called by ``execute_attempt``): a worker process embedded, a Ray
  task, a queue executor on any host that sees the cache folder. Reuse, claims and waiting are
  the scheduler's (driver side), whatever the backend.
* **The cache never fails a task.** Insertion errors are warnings; a missing or unreadable entry
  is a miss.
* **The folder is the user's.** It is created ``0700``; a folder owned by someone else or
  writable by group or others is refused (its entries could be forged), as is a readable secret.
  The default one is in the user's own folder, so each user of a shared data root has theirs.
* **A task is computed once among jobs running at once.** Before submitting a task the scheduler
  claims its key (a symbolic link created exclusively, naming host, pid, process start time and job);
  a job that finds a live claim waits for the entry and reuses it, and computes the task itself
  if the claimant dies or fails. A claim is stale when its process is gone (same host) or it has
  not been refreshed for :data:`LOCK_STALE_SECONDS` (another host; holders refresh theirs).
  A claim costs a file per task, so a job alone on the cache takes none: at its first task it
  announces itself in ``jobs/`` (the same kind of link) and looks for other live jobs. While it
  is alone it looks again every few tenths of a second; when another job appears it claims the
  tasks it is running and every later one, and the newcomer waits a grace period
  (``cache_keys.PRESENCE_GRACE_SECONDS``) before its first claim, which covers that delay. (A
  job whose scheduler loop stalls longer than the grace period may compute a task the newcomer
  computes too; both write the same bytes.)

:func:`clean` bounds the cache's size (least recently used entries go first) and drops old ones.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import socket
import stat
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from smallpond.common import logger
from smallpond.errors import ParameterError
from smallpond.execution import user_folder
from smallpond.execution.cache_check import file_check, stat_and_check, verify_files  # noqa: F401 (file_check: its API)
from smallpond.execution.cache_entries import (  # noqa: F401 (Entry, RECORD: their API here)
    CACHE_FORMAT,
    RECORD,
    Entry,
    Unreadable,
    entry_usage,
    orphan_files,
    read_entry,
    remove_entry,
    shard_entries,
    stored_name,
)
from smallpond.execution.ownership import is_zombie
from smallpond.execution.task import crash_point
from smallpond.io.filesystem import (
    CorruptRecord,
    SignatureError,
    atomic_write_bytes,
    create_whole,
    folder_clock,
    link_or_copy,
    private_key,
    remove_abandoned_temps,
    remove_path,
    signed_bytes,
    unique_suffix,
    write_file,
)
from smallpond.logical.dataset import DataSet, PartitionedDataSet
from smallpond.processes import process_start_id, process_start_time, same_process_start

#: in an output directory that :meth:`TaskCache.link_into` filled with links to an entry's files
LINKED_MARKER = ".linked-from-task-cache"
#: a claim by a process on another host is stale after this long without a refresh
LOCK_STALE_SECONDS = 600.0
#: holders refresh their claims this often
LOCK_REFRESH_SECONDS = 60.0


@dataclass
class Claim:
    """Who holds a key's lock: host, process, its start time, job, and when it was refreshed."""

    host: str
    pid: int
    started: float
    job: str
    refreshed: float = 0.0
    path: str = ""
    inode: int = 0
    start_id: str = ""  # the process's start as processes.process_start_id gives it ("" if unknown)

    def describe(self) -> str:
        return f"job {self.job} (pid {self.pid} on {self.host})"


@dataclass
class CleanReport:
    """What :func:`clean` removed (or would remove, in a dry run)."""

    removed: List[str] = field(default_factory=list)
    removed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    dry_run: bool = True

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{verb} {len(self.removed)} entr{'y' if len(self.removed) == 1 else 'ies'} "
            f"({self.removed_bytes} bytes); {self.kept} kept ({self.kept_bytes} bytes)"
        )


_caches: Dict[str, "TaskCache"] = {}


def open_cache(path: str) -> "TaskCache":
    """The task cache at ``path`` (created if needed; one object per folder and process).

    Raises :class:`ParameterError` if the folder is not safe to use (see the module docstring).
    """
    cache = _caches.get(path) if path.startswith(os.sep) else None  # (a worker asks twice an attempt)
    if cache is None:
        given, path = path, os.path.abspath(path)
        cache = _caches.get(path)
        if cache is None:
            cache = TaskCache(path)
            cache.check()
            _caches[path] = cache
        if given.startswith(os.sep):  # an absolute path means one folder wherever this process is
            _caches[given] = cache
    return cache


class TaskCache:
    """The cache folder: entries, claims and the position index (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._secret: Optional[bytes] = None
        self._process: Optional[Claim] = None
        self._held: Dict[str, int] = {}  # keys this process claimed
        self._releaser = None  # a thread removing released claims
        self._released: Dict[str, Any] = {}  # key -> the removal of its claim, under way
        self._shards: set = set()  # entry shard folders known to exist

    # -- the folder -----------------------------------------------------------------------------
    def check(self) -> None:
        """Create the folder (0700) and its secret; refuse a folder others could write."""
        user_folder.prepare_task_cache(self.path)  # the default place: the user's folder, made and checked first
        try:
            for sub in ("", "entries", "locks", "index", "jobs"):
                os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)
            st = os.stat(self.path)
        except OSError as e:  # a file in its place, a folder that cannot be made: say which setting
            what = str(e.filename or self.path).rstrip(os.sep)
            why = {
                errno.EEXIST: f"{what} is a file, not a folder",
                errno.ENOTDIR: f"a folder above {what} is a file",
            }.get(e.errno, f"{e.strerror or e}: {what}")
            raise ParameterError(
                f"task cache {self.path} cannot be used: {why}; point task_cache (init(task_cache=...), "
                "SP_TASK_CACHE, --task_cache) at a folder of yours or turn it off (task_cache='off')"
            ) from e
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise ParameterError(
                f"task cache {self.path} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()}): refusing to use "
                "it (its entries could be forged); point task_cache elsewhere or turn it off (task_cache='off')"
            )
        if st.st_mode & 0o022:
            raise ParameterError(
                f"task cache {self.path} is writable by group or others (mode {st.st_mode & 0o777:o}): refusing to use it "
                f"(its entries could be forged); run 'chmod 700 {self.path}' or turn it off (task_cache='off')"
            )
        _ = self.secret

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = private_key(os.path.join(self.path, "secret"), "task cache secret", "refusing to use the cache")
        return self._secret

    def entry_path(self, key: str) -> str:
        return os.path.join(self.path, "entries", key[:2], key)

    def lock_path(self, key: str) -> str:
        return os.path.join(self.path, "locks", f"{key}.lock")

    def index_path(self, position: str) -> str:
        return os.path.join(self.path, "index", position[:2], position)

    # -- entries --------------------------------------------------------------------------------
    def lookup(self, key: str, drop: bool = True) -> Optional[Entry]:
        """The entry for ``key`` if it exists and verifies; one that does not is removed (unless
        ``drop`` is False: a dry run changes nothing)."""
        path = self.entry_path(key)
        try:
            entry = read_entry(path, key, self.secret)
        except CorruptRecord as e:  # a crash or a full disk while it was written
            problem = f"its record is torn or damaged ({e})"
        except SignatureError as e:  # intact, but not written with this cache's secret
            problem = f"its record is not signed by this cache ({e})"
        except Unreadable as e:
            problem = str(e)
        except Exception as e:  # torn, or removed meanwhile by clean()
            if not os.path.lexists(path):
                return None
            problem = f"its record cannot be read ({type(e).__name__}: {e})"
        else:
            if entry is None:
                return None
            problem = verify_files(
                [(rel, where, *f[1:]) for (rel, where), f in zip(entry.files(), entry.record.get("files", []))]
            )
            if problem is None:
                return entry
        if drop:
            self._drop(path, problem)
        return None

    def _drop(self, path: str, why: str) -> None:
        logger.warning("task cache: entry {} is not served and is removed: {}", path, why)
        self._remove_entry(path)

    def _remove_entry(self, path: str) -> None:
        # hidden first: a reader sees the whole entry or nothing
        tmp = os.path.join(self.path, "tmp")
        if os.path.isdir(path):  # an earlier release's folder, renamed into tmp/ first
            os.makedirs(tmp, mode=0o700, exist_ok=True)
        remove_entry(path, os.path.join(tmp, f"drop-{os.path.basename(path)}"), self.secret)

    def entry_record(self, key: str, dataset: DataSet, output_dir: str, info: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The record of an entry of ``dataset``'s files, which lie in ``output_dir`` (each file's
        size, modification time and check, read where it lies: a link is the same inode), without
        the dataset; None if a file is outside ``output_dir`` (the output cannot be cached)."""
        files = _dataset_files(dataset)
        base = output_dir.rstrip(os.sep)
        prefix = base + os.sep
        if any(not p.startswith(prefix) for p in files):
            return None
        listed: List[Tuple[str, int, int, str]] = []
        for p in sorted(set(files)):
            listed.append((p[len(prefix) :], *stat_and_check(p)))
        # "base": the folder the dataset's paths are under (the task's output directory): a reader
        # rebases them from there to where it links the files (two rebases less per entry);
        # "store": the token in the names of the entry's files (cache_entries.stored_name)
        total = sum(f[1] for f in listed)
        return {
            "format": CACHE_FORMAT,
            "key": key,
            "base": base,
            "store": unique_suffix(),
            "files": listed,
            "bytes": total,
            "created": time.time(),
            **info,
        }

    def insert(
        self,
        key: str,
        dataset: DataSet,
        output_dir: str,
        info: Dict[str, Any],
        replace: bool = False,
        *,
        shared: Optional[Tuple[Dict[str, Any], str]] = None,
    ) -> Optional[str]:
        """Add the committed output of a task (``dataset``, whose files lie in ``output_dir``).

        ``shared``: (:meth:`entry_record`, the path of the task's commit record that carries it
        and is signed with this cache's secret too): that file is linked as the entry's record
        instead of writing one (a copy of a file, across filesystems, makes the entry write its own).
        Returns the entry's record path, or None if the output cannot be cached (a file outside
        ``output_dir``) or an entry exists (unless ``replace``).

        The files are linked beside the record's name first, under names of this insertion's own
        (:func:`~smallpond.execution.cache_entries.stored_name`), and the record last, by a link
        that fails if the name exists: of two insertions of one key the first wins, and the other
        removes its files.
        """
        final = self.entry_path(key)
        record = shared[0] if shared is not None else self.entry_record(key, dataset, output_dir, info)
        if record is None:
            return None
        shard = os.path.dirname(final)
        if shard not in self._shards:
            os.makedirs(shard, mode=0o700, exist_ok=True)
            self._shards.add(shard)
        store = record["store"]
        linked: List[str] = []
        try:
            listed = []
            for i, (rel, *checked) in enumerate(record["files"]):
                dst = stored_name(final, store, i, rel)
                linked.append(dst)  # (before: a copy that fails midway leaves a part)
                if link_or_copy(f"{record['base']}{os.sep}{rel}", dst) == "copy":  # its own time: checked again
                    checked = list(stat_and_check(dst))
                    shared = None
                listed.append((rel, *checked))
            if replace and os.path.lexists(final):
                self._remove_entry(final)
            crash_point("before_cache_record", str(record.get("task", "")))
            try:
                if shared is None or not _link_record(shared[1], final):
                    record = {**record, "files": listed, "dataset": dataset}
                    create_whole(final, _signed_entry(record, self.secret))
            except FileExistsError:  # another job inserted the same key first: its entry stays
                return None
            linked = []
            return final
        finally:
            for p in linked:
                _unlink_quietly(p)

    def link_into(self, entry: Entry, output_base: str, attempt: int) -> Tuple[DataSet, str]:
        """Link (or copy) the entry's files into a new output directory of the job; returns the
        entry's dataset rebased there, and the directory (``{output_base}.{attempt}.{token}``,
        holding :data:`LINKED_MARKER` if a file was linked)."""
        token = f"{attempt}.{uuid.uuid4().hex[:16]}"
        tmp = f"{output_base}.tmp-{token}"
        final = f"{output_base}.{token}"
        os.makedirs(tmp)
        try:
            linked = False
            for rel, where in entry.files():
                dst = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                linked = link_or_copy(where, dst) == "link" or linked
            if linked:  # its files are the entry's inodes: a sink publishes copies (ops/sink.py)
                write_file(os.path.join(tmp, LINKED_MARKER), entry.path.encode())
            os.rename(tmp, final)
            tmp = None
        finally:
            if tmp is not None:
                remove_path(tmp)
        ds = copy_dataset(entry.record["dataset"])
        ds._rebase(entry.record["base"], final)
        touch(entry.record_path)
        return ds, final

    # -- jobs using the cache -----------------------------------------------------------------------
    def presence_path(self, job: str) -> str:
        me = self.me(job)
        return os.path.join(self.path, "jobs", f"{me.host}.{me.pid}.{job}")

    def announce(self, job: str) -> None:
        """Say that ``job`` (in this process) uses the cache: a claim-like link in ``jobs/``."""
        mine = self.me(job)
        body = json.dumps({"host": mine.host, "pid": mine.pid, "started": mine.started, "start_id": mine.start_id, "job": job})
        os.makedirs(os.path.join(self.path, "jobs"), mode=0o700, exist_ok=True)
        try:
            os.symlink(body, self.presence_path(job))
        except FileExistsError:
            pass

    def refresh_presence(self, job: str) -> None:
        try:
            os.utime(self.presence_path(job), follow_symlinks=False)
        except OSError:
            pass

    def withdraw(self, job: str) -> None:
        _unlink_quietly(self.presence_path(job))

    def other_jobs(self, job: str) -> List[Claim]:
        """The live jobs other than ``job`` (of this process) that announced they use the cache."""
        folder = os.path.join(self.path, "jobs")
        mine = self.me(job)
        out = []
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            c = read_claim(os.path.join(folder, name))
            if c is None or (c.host == mine.host and c.pid == mine.pid and c.job == job):
                continue
            if claim_is_live(c):
                out.append(c)
        return out

    # -- claims -----------------------------------------------------------------------------------
    def me(self, job: str) -> Claim:
        if self._process is None:
            pid = os.getpid()
            self._process = Claim(socket.gethostname(), pid, process_start_time(pid), "", start_id=process_start_id(pid) or "")
        return Claim(self._process.host, self._process.pid, self._process.started, job, start_id=self._process.start_id)

    def claim(self, key: str, job: str) -> Optional[Claim]:
        """Claim ``key`` for ``job``. Returns None if the claim is now this process's, else the
        live claim of another process (a stale claim is broken and taken over)."""
        pending = self._released.pop(key, None)
        if pending is not None:  # claimed again before its last claim was removed: let that finish
            pending.result()
        path = self.lock_path(key)
        mine = self.me(job)
        body = json.dumps({"host": mine.host, "pid": mine.pid, "started": mine.started, "start_id": mine.start_id, "job": job})
        for _ in range(3):
            try:
                # a symbolic link whose target is the claim: created, with its content, in one
                # atomic call that fails if the name exists (a file would need four calls)
                os.symlink(body, path)
            except FileExistsError:
                holder = read_claim(path)
                if holder is None:
                    continue  # released meanwhile (or torn): try again
                if holder.host == mine.host and holder.pid == mine.pid:
                    self._held.setdefault(key, holder.inode)
                    return None  # ours (a retry, a speculative copy)
                if claim_is_live(holder):
                    return holder
                logger.info("task cache: breaking the stale claim of {} on {}", holder.describe(), key)
                _break(path, holder)
                continue
            self._held[key] = 0
            return None
        return read_claim(path) or Claim("?", 0, 0.0, "?")

    def release(self, key: str) -> None:
        """Give up this process's claim on ``key``.

        The lock is removed by a background thread (an unlink can take a millisecond on a shared
        filesystem, and the scheduler's loop should not wait for it): a job waiting for the key
        looks for the entry before it looks at the claim, so a claim removed a moment late
        delays nobody. :meth:`drain` waits until every released claim is gone.
        """
        if self._held.pop(key, None) is None:
            return
        if self._releaser is None:
            from concurrent.futures import ThreadPoolExecutor

            self._releaser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smallpond-cache-release")
        self._released[key] = self._releaser.submit(_unlink_quietly, self.lock_path(key))

    def drain(self) -> None:
        """Wait until the claims given up so far are removed."""
        released, self._released = self._released, {}
        for f in released.values():
            f.result()

    def refresh(self, keys) -> None:
        for key in keys:
            try:
                os.utime(self.lock_path(key), follow_symlinks=False)
            except OSError:
                pass

    # -- the position index -------------------------------------------------------------------------
    def read_index(self, position: str) -> Optional[Dict[str, Any]]:
        try:
            with open(self.index_path(position), "rb") as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    def update_index(self, position: str, builds: Dict[str, Any]) -> None:
        """Record the last build of some partitions of a node position (read, merge, replace: of
        two jobs updating one node at once, one's update may be lost; that only makes a later dry
        run's explanation vaguer)."""
        path = self.index_path(position)
        data = self.read_index(position) or {}
        data.update(builds)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic_write_bytes(path, json.dumps(data, sort_keys=True).encode())

    # -- walking ----------------------------------------------------------------------------------
    def shards(self) -> List[str]:
        """The shard folders of the entries."""
        root = os.path.join(self.path, "entries")
        return [os.path.join(root, shard) for shard in sorted(os.listdir(root))] if os.path.isdir(root) else []

    def entries(self) -> Iterator[Tuple[str, str]]:
        """(key, path: its record, or an earlier release's folder) of every entry."""
        for shard_dir in self.shards():
            for key, path, _ in shard_entries(shard_dir):
                yield key, path


def touch(record_path: str) -> None:
    """Mark an entry used now (its record's modification time is its last use)."""
    try:
        os.utime(record_path)
    except OSError:
        pass


# -- claims -------------------------------------------------------------------------------------------


def read_claim(path: str) -> Optional[Claim]:
    """The claim at ``path`` (a symbolic link whose target is the claim, or a file holding it)."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            text = os.readlink(path)
        else:
            with open(path, "rb") as f:
                text = f.read().decode()
        data = json.loads(text or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        # created and not yet written: a claim in progress, live for a moment
        return Claim("?", 0, 0.0, "?", st.st_mtime, path, st.st_ino)
    return Claim(
        str(data.get("host", "?")),
        int(data.get("pid", 0)),
        float(data.get("started", 0.0)),
        str(data.get("job", "?")),
        st.st_mtime,
        path,
        st.st_ino,
        str(data.get("start_id") or ""),
    )


def claim_is_live(claim: Claim) -> bool:
    """True while the claimant may still finish: its process runs (this host), or its claim was
    refreshed recently (another host)."""
    if claim.host == "?":
        return time.time() - claim.refreshed < 5.0
    if claim.host != socket.gethostname():
        return time.time() - claim.refreshed < LOCK_STALE_SECONDS
    if is_zombie(claim.pid):
        return False  # killed, only not yet reaped by its parent: it never finishes
    if not claim.started and not claim.start_id:
        return process_start_time(claim.pid) is not None  # (the process exists)
    # by the start id where the claim has one: a step of the wall clock moves start times
    return bool(same_process_start(claim.pid, claim.started, claim.start_id))


def _unlink_quietly(path: str) -> None:
    # no check that the link is still this process's: it is taken over only when stale, and a
    # claim of a live process on this host never is (another host's, not while it is refreshed)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _break(path: str, holder: Claim) -> None:
    """Remove a stale claim, unless it was replaced meanwhile (then it is someone's live claim)."""
    try:
        if holder.inode and os.lstat(path).st_ino != holder.inode:
            return
        os.unlink(path)
    except OSError:
        pass


# -- helpers --------------------------------------------------------------------------------------------


def _dataset_files(ds: DataSet) -> List[str]:
    if isinstance(ds, PartitionedDataSet):
        return [p for d in ds.datasets for p in _dataset_files(d)]
    out = list(ds.resolved_paths)
    schema_path = getattr(ds, "_schema_path", None)
    if schema_path and not out:
        out.append(schema_path)
    return out


def _signed_entry(obj: Any, secret: bytes) -> bytes:
    """``obj`` as :func:`smallpond.io.filesystem.dump` would write it (signed), with plain pickle
    when it can carry it (cloudpickle costs ~0.2 ms more per record)."""
    try:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if b"__main__" in payload:  # a class of the user's script: only cloudpickle can carry it
            raise pickle.PicklingError("__main__")
    except Exception:
        import cloudpickle

        payload = cloudpickle.dumps(obj)
    return signed_bytes(payload, secret)


def copy_dataset(ds: DataSet) -> DataSet:
    """A deep copy of a dataset description (rebasing one must not change another)."""
    try:
        return pickle.loads(pickle.dumps(ds, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # a dataset holding something only cloudpickle can carry
        import cloudpickle

        return pickle.loads(cloudpickle.dumps(ds))


def commit_entry(rt, task, dataset: DataSet, output_dir: Optional[str]) -> Optional[Tuple[Dict[str, Any], bytes]]:
    """What a committing attempt puts in its commit record so that the record is also its task-cache
    entry's (:meth:`TaskCache.insert`'s ``shared``): the entry's record and the cache's secret to
    sign it with; None if the task gets no entry. Never raises (the insertion says what is wrong)."""
    key = getattr(task, "cache_key", None)
    if not key or not rt.task_cache or output_dir is None:
        return None
    try:
        cache = open_cache(rt.task_cache)
        record = cache.entry_record(key, dataset, output_dir, _info(rt, task))
        return None if record is None else (record, cache.secret)
    except Exception:
        return None


def _info(rt, task) -> Dict[str, str]:
    return {"task": task.key, "node": task.node_label, "job": str(rt.job_id)}


def insert_after_commit(rt, task, dataset: DataSet, output_dir: Optional[str], shared=None) -> None:
    """Put a committed attempt's output in the task cache (in the worker that ran it).

    ``shared``: (the entry's record, the path of the commit record that carries it), see
    :func:`commit_entry`. Does nothing for a task the scheduler gave no cache key. Never raises: a
    failure is a warning and the task's output stays committed.
    """
    key = getattr(task, "cache_key", None)
    if not key or not rt.task_cache or output_dir is None:
        return
    try:
        cache = open_cache(rt.task_cache)
        info = _info(rt, task) if shared is None else {}  # (the shared record has it)
        cache.insert(key, dataset, output_dir, info, replace=bool(getattr(task, "cache_replace", False)), shared=shared)
    except Exception as e:
        logger.warning("task cache: could not add the output of {} to {}: {}: {}", task.key, rt.task_cache, type(e).__name__, e)


def _link_record(record: str, dst: str) -> bool:
    """Link the commit record ``record`` as an entry's record ``dst``; False if it cannot be
    (another filesystem); :class:`FileExistsError` if ``dst`` exists."""
    try:
        os.link(record, dst)
        return True
    except FileExistsError:
        raise
    except OSError:
        return False


# -- cleaning -----------------------------------------------------------------------------------------


def clean(path: str, max_bytes: Optional[int] = None, older_than: Optional[float] = None, dry_run: bool = True) -> CleanReport:
    """Remove cache entries: those unused for ``older_than`` seconds, then the least recently used
    until the entries hold at most ``max_bytes``. With ``dry_run`` (the default) only report.

    Also removes leftovers of entries being built by processes that died, and claims of dead
    processes. Entries a running job links while they are removed stay intact in that job (a hard
    link keeps the file).

    Example::

        from smallpond.execution.cache import clean
        print(clean("/data/jobs/.smallpond/users/1000/task_cache", max_bytes=500 << 30, dry_run=False))
    """
    if max_bytes is not None and max_bytes < 0:
        raise ParameterError(f"max_bytes must be >= 0 or None, got {max_bytes!r}")
    if older_than is not None and older_than < 0:
        raise ParameterError(f"older_than must be a number of seconds >= 0 or None, got {older_than!r}")
    cache = TaskCache(path)
    user_folder.prepare_task_cache(cache.path, create=False)  # an earlier smallpond's {data_root}/.task_cache moves in
    if not os.path.isdir(os.path.join(cache.path, "entries")):
        raise ParameterError(f"{cache.path} is not a task cache (no entries/ folder)")
    cache.check()
    now = time.time()
    entries = []
    for key, path in cache.entries():
        used, size = entry_usage(path, key, cache.secret)  # used 0.0: a broken entry, first to go
        entries.append((used, key, path, size))
    entries.sort()
    report = CleanReport(dry_run=dry_run)
    total = sum(e[3] for e in entries)
    for used, key, folder, size in entries:
        too_old = older_than is not None and now - used > older_than
        too_big = max_bytes is not None and total > max_bytes
        if not (too_old or too_big or used == 0.0):
            report.kept += 1
            report.kept_bytes += size
            continue
        report.removed.append(key)
        report.removed_bytes += size
        total -= size
        if not dry_run:
            cache._remove_entry(folder)
    if not dry_run:
        _clean_leftovers(cache)
    return report


def _clean_leftovers(cache: TaskCache) -> None:
    # an hour by the clock that stamps the cache's files (on NFS, the server's), not this host's:
    # a host whose clock is ahead would take an insertion under way for one that crashed
    try:
        fd = os.open(cache.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        now = folder_clock(fd)
        remove_abandoned_temps(fd, lambda name: False)  # (none but a clock probe a killed clean left)
    finally:
        os.close(fd)
    tmp = os.path.join(cache.path, "tmp")
    for name in os.listdir(tmp) if os.path.isdir(tmp) and now is not None else ():
        p = os.path.join(tmp, name)
        try:
            if now - os.stat(p).st_mtime > 3600:
                remove_path(p)
        except OSError:
            pass
    for shard_dir in cache.shards() if now is not None else ():  # files of insertions that crashed or lost
        for p in orphan_files(shard_dir, cache.secret, now):
            _unlink_quietly(p)
    for sub in ("locks", "jobs"):  # claims and announcements of processes that are gone
        folder = os.path.join(cache.path, sub)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            holder = read_claim(os.path.join(folder, name))
            if holder is not None and not claim_is_live(holder):
                _break(os.path.join(folder, name), holder)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m smallpond.execution.cache clean PATH [--max_bytes N] [--older_than SECONDS] [--yes]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m smallpond.execution.cache", description="Manage a smallpond task cache.")
    sub = p.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("clean", help="remove least recently used entries (a dry run unless --yes)")
    c.add_argument("path", help="the task cache folder (e.g. {data_root}/.smallpond/users/{uid}/task_cache)")
    c.add_argument("--max_bytes", type=int, default=None, help="keep at most this many bytes of entries")
    c.add_argument("--older_than", type=float, default=None, help="remove entries unused for this many seconds")
    c.add_argument("--yes", action="store_true", help="remove them (default: only list what would go)")
    args = p.parse_args(argv)
    try:
        report = clean(args.path, max_bytes=args.max_bytes, older_than=args.older_than, dry_run=not args.yes)
    except ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
