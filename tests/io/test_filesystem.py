"""smallpond.io.filesystem: atomic writes and signed pickles."""

from __future__ import annotations

import os
import threading
from datetime import datetime

import pytest

from smallpond.execution.task import JobId, RuntimeContext
from smallpond.io.filesystem import (
    CorruptRecord,
    SignatureError,
    atomic_write_bytes,
    close_quietly,
    dump,
    link_or_copy,
    load,
    private_key,
    read_file,
    remove_abandoned_temps,
    remove_path,
    remove_tree_written_into,
    rename_noreplace,
    write_file,
)

SECRET = b"s" * 32


def test_signed_roundtrip(tmp_path):
    path = str(tmp_path / "obj.pickle")
    obj = {"a": [1, 2, 3], "b": "text"}
    dump(obj, path, secret=SECRET)
    assert load(path, secret=SECRET) == obj


def test_runtime_context_roundtrip(tmp_path):
    rt = RuntimeContext(JobId.new(), datetime(2024, 1, 2, 3, 4, 5), str(tmp_path), num_executors=2)
    path = str(tmp_path / "rt.pickle")
    dump(rt, path, secret=SECRET)
    loaded = load(path, secret=SECRET)
    assert loaded.job_root == rt.job_root and loaded.job_id == rt.job_id
    assert os.path.basename(loaded.job_root) == f"2024-01-02-03-04-05.{rt.job_id}"


def test_tampered_pickle_is_refused(tmp_path):
    """An attacker rewrites the payload and its plain digest; only the HMAC gives it away."""
    import hashlib

    path = str(tmp_path / "obj.pickle")
    dump({"cmd": "harmless"}, path, secret=SECRET)
    data = open(path, "rb").read()
    head, payload = data[:6], bytearray(data[6 + 64 :])
    payload[-5] ^= 0xFF
    forged = head + hashlib.sha256(bytes(payload)).digest() + data[6 + 32 : 6 + 64] + bytes(payload)
    open(path, "wb").write(forged)
    with pytest.raises(SignatureError, match="signature does not match") as info:
        load(path, secret=SECRET)
    assert not isinstance(info.value, CorruptRecord)


@pytest.mark.parametrize("damage", ["empty", "truncated", "bit_flip", "zeros"])
def test_torn_or_damaged_record_is_corrupt_not_forged(tmp_path, damage):
    path = str(tmp_path / "obj.pickle")
    dump({"cmd": "harmless"}, path, secret=SECRET)
    data = bytearray(open(path, "rb").read())
    if damage == "empty":
        data = bytearray()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bit_flip":
        data[-5] ^= 0xFF
    else:
        data = bytearray(len(data))
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptRecord):
        load(path, secret=SECRET)


def test_pickle_signed_with_another_secret_is_refused(tmp_path):
    path = str(tmp_path / "obj.pickle")
    dump([1], path, secret=b"other secret")
    with pytest.raises(SignatureError):
        load(path, secret=SECRET)


def test_unsigned_pickle_is_refused(tmp_path):
    import pickle

    path = str(tmp_path / "obj.pickle")
    with open(path, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(SignatureError, match="unsigned"):
        load(path, secret=SECRET)


def test_unpicklable_object_raises_type_error(tmp_path):
    with pytest.raises(TypeError):
        dump(threading.Lock(), str(tmp_path / "lock.pickle"), secret=SECRET)
    assert not os.path.exists(tmp_path / "lock.pickle")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = str(tmp_path / "f.txt")
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert open(path, "rb").read() == b"two"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_abandoned_temp_files_are_removed_never_a_write_in_progress_nor_a_foreign_file(tmp_path):
    """remove_abandoned_temps takes only a temp file of atomic_write_bytes (``.{name}.tmp-{12 hex}``)
    of a name the caller accepts, a regular file, untouched for long enough, that no process holds
    locked (a writer with ``hold`` holds it until the rename): a kill -9's leftover. A young one, a
    locked one (however old), one of another name, a link or a folder of that shape stay."""
    import fcntl

    folder = tmp_path / "records"
    folder.mkdir()
    old = os.path.getmtime(folder) - 7200

    def plant(name, locked=False, young=False):
        path = folder / name
        path.write_bytes(b"half")
        if not young:
            os.utime(path, (old, old))
        if locked:
            fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        return None

    plant(".a.json.tmp-0123456789ab")  # the leftover
    holder = plant(".b.json.tmp-0123456789ab", locked=True)  # its writer still runs
    plant(".c.json.tmp-0123456789ab", young=True)  # being written, on a filesystem without locks
    for foreign in (".notes.tmp-0123456789ab", ".a.json.tmp-0123456789aB", ".a.json.tmp-0123", "a.json.tmp-0123456789ab", "x"):
        plant(foreign)
    (folder / ".d.json.tmp-0123456789ab").mkdir()
    os.symlink(str(tmp_path / "elsewhere"), str(folder / ".e.json.tmp-0123456789ab"))
    (tmp_path / "elsewhere").write_bytes(b"not the engine's")
    os.utime(tmp_path / "elsewhere", (old, old))
    before = sorted(os.listdir(folder))
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        removed = remove_abandoned_temps(fd, lambda name: name.endswith(".json") and name != "notes.json")
    finally:
        os.close(fd)
        os.close(holder)
    assert removed == [".a.json.tmp-0123456789ab"]
    assert sorted(os.listdir(folder)) == [n for n in before if n != ".a.json.tmp-0123456789ab"]
    assert (tmp_path / "elsewhere").read_bytes() == b"not the engine's"


@pytest.mark.parametrize("skew", [2 * 3600.0, -2 * 3600.0], ids=["host-ahead", "host-behind"])
def test_an_abandoned_temp_files_age_is_told_by_its_folders_clock_not_this_hosts(tmp_path, monkeypatch, skew):
    """On NFS a file's times are the server's clock: "an hour old" is measured against a file made in
    the same folder (folder_clock), not against this host's clock. Faked here by skewing this host's
    clock (time.time) by 2 hours while the filesystem stamps files as it does: ahead, a temp file just
    written (by a writer between its create and its lock, or on a filesystem without locks) looked 2
    hours old and was removed; behind, one abandoned 90 minutes ago looked 30 minutes young and was
    never removed. A probe of that clock a killed cleaner left goes too; the cleaner's own goes."""
    import time

    folder = tmp_path / "records"
    folder.mkdir()
    fresh, abandoned = folder / ".a.json.tmp-0123456789ab", folder / ".b.json.tmp-0123456789ab"
    probe = folder / ".clock-probe-0123abc"  # of a cleaner killed while reading the clock
    for path in (fresh, abandoned, probe):
        path.write_bytes(b"half")
    stamp = os.path.getmtime(fresh) - 90 * 60  # by the filesystem's clock
    for path in (abandoned, probe):
        os.utime(path, (stamp, stamp))
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        removed = remove_abandoned_temps(fd, lambda name: name.endswith(".json"))
    finally:
        os.close(fd)
    assert sorted(removed) == sorted([abandoned.name, probe.name])
    assert os.listdir(folder) == [fresh.name] and fresh.read_bytes() == b"half"


def test_abandoned_temp_files_go_on_a_full_disk_too(tmp_path, monkeypatch):
    """A full disk (or quota) is when ``smallpond clean`` is run most: the clock probe's one-byte
    write fails there (a real full tmpfs: ENOSPC), and folder_clock read no clock, so nothing was
    removed, the abandoned temp files that fill the disk included. Now the probe's times are set
    instead (by the same clock, as ``touch`` does), or the folder's where no probe can be made (no
    inode or inode quota left); the probe goes all the same, and a fresh file stays."""
    import errno

    folder = tmp_path / "records"
    folder.mkdir()
    fresh, abandoned = folder / ".a.json.tmp-0123456789ab", folder / ".b.json.tmp-0123456789ab"
    for path in (fresh, abandoned):
        path.write_bytes(b"half")
    stamp = os.path.getmtime(fresh) - 90 * 60
    os.utime(abandoned, (stamp, stamp))
    real_write = os.write

    def full_disk(fd, data):  # (the probe's write only: pytest writes too)
        if ".clock-probe-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    real_open = os.open

    def no_inodes(path, flags, *args, **kwargs):  # (a full table of inodes, or an inode quota)
        if str(path).startswith(".clock-probe-"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real_open(path, flags, *args, **kwargs)

    for name, fake in (("write", full_disk), ("open", no_inodes)):
        if not fresh.exists():
            fresh.write_bytes(b"half")
        abandoned.write_bytes(b"half")
        os.utime(abandoned, (stamp, stamp))
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        monkeypatch.setattr(os, name, fake)
        try:
            removed = remove_abandoned_temps(fd, lambda name: name.endswith(".json"))
        finally:
            monkeypatch.undo()
            os.close(fd)
        assert removed == [abandoned.name], name
        assert os.listdir(folder) == [fresh.name], f"{name}: a file was left, or the fresh one removed"


def test_a_held_atomic_write_holds_its_temp_file_locked_until_it_has_its_name(tmp_path, monkeypatch):
    """``hold``: the temp file is locked from its creation to its rename (so remove_abandoned_temps
    never removes it while it is written, however long that takes); the data is whole at the rename."""
    import fcntl

    path = str(tmp_path / "f.json")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        fd = os.open(src, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("unlocked")
        except BlockingIOError:
            seen.append("locked")
        finally:
            os.close(fd)
        with open(src, "rb") as f:
            seen.append(f.read())
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(path, b"whole", hold=True)
    assert seen == ["locked", b"whole"] and open(path, "rb").read() == b"whole"
    assert os.listdir(tmp_path) == ["f.json"]


def test_a_temp_file_locked_by_a_live_writer_stays_where_flock_is_emulated_as_on_nfs(tmp_path, monkeypatch):
    """On NFS, flock is a byte-range lock of the whole file: an exclusive one needs the file open
    for writing (else EBADF). The remover must still see a live writer's lock there, and an error
    that does not say "no locks here" keeps the file; only a filesystem without locks (ENOLCK)
    leaves the age alone to decide."""
    import errno
    import fcntl
    import subprocess
    import sys

    folder = tmp_path / "records"
    folder.mkdir()
    old = os.path.getmtime(folder) - 7200
    held, free = folder / ".a.json.tmp-0123456789ab", folder / ".b.json.tmp-0123456789ab"
    for path in (held, free):
        path.write_bytes(b"half")
        os.utime(path, (old, old))
    writer = subprocess.Popen(  # a writer that still runs, holding its temp file locked
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(held),
        ],
        stdout=subprocess.PIPE,
    )
    real_flock = fcntl.flock
    failure = []

    def nfs_flock(fd, how):
        if failure:
            raise OSError(failure[0], os.strerror(failure[0]))
        if how & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")  # as NFS answers it
        return real_flock(fd, how)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert writer.stdout.readline() == b"held\n"
        assert remove_abandoned_temps(fd, lambda name: True) == [free.name]  # the writer's stays
        free.write_bytes(b"half")
        os.utime(free, (old, old))
        failure.append(errno.EIO)
        assert remove_abandoned_temps(fd, lambda name: True) == []  # cannot tell: both stay
        failure[0] = errno.ENOLCK
        assert remove_abandoned_temps(fd, lambda name: True) == sorted([held.name, free.name])  # no locks: by age
    finally:
        os.close(fd)
        writer.kill()
        writer.wait()


def test_a_held_write_whose_close_fails_leaves_the_name_as_it_was(tmp_path, monkeypatch):
    """NFS sends a file's data to the server when it is closed, and reports a write error (a full
    disk, a quota) there: the rename comes after the close, so such an error leaves the earlier
    file under the name, no temp file, and no copy of the temp file open (the lock's)."""
    import builtins

    import smallpond.io.filesystem as filesystem

    path = str(tmp_path / "f.json")
    atomic_write_bytes(path, b"old")
    real_open = builtins.open

    class FailingClose:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            raise OSError(28, "No space left on device (reported by the close)")

    monkeypatch.setattr(filesystem, "open", lambda *a, **k: FailingClose(real_open(*a, **k)), raising=False)
    fds = set(os.listdir("/proc/self/fd"))
    for hold in (True, False):
        with pytest.raises(OSError, match="reported by the close"):
            atomic_write_bytes(path, b"new, torn", hold=hold)
        assert real_open(path, "rb").read() == b"old" and os.listdir(tmp_path) == ["f.json"]
    assert set(os.listdir("/proc/self/fd")) <= fds


def test_write_file_and_read_file(tmp_path):
    path = str(tmp_path / "f.bin")
    big = os.urandom(300_000)  # more than one read
    write_file(path, big)
    assert read_file(path) == big
    write_file(path, b"short")  # truncates, as open(path, "wb")
    assert read_file(path) == b"short"
    with pytest.raises(FileExistsError):
        write_file(path, b"other", exclusive=True)
    assert read_file(path) == b"short"
    write_file(str(tmp_path / "empty"), b"")
    assert read_file(str(tmp_path / "empty")) == b""
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_rename_noreplace_never_replaces(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_file(a, b"first")
    if not rename_noreplace(a, b):
        pytest.skip("renameat2(RENAME_NOREPLACE) is not available here")
    assert not os.path.exists(a) and read_file(b) == b"first"
    write_file(a, b"second")
    with pytest.raises(FileExistsError):
        rename_noreplace(a, b)
    assert read_file(a) == b"second" and read_file(b) == b"first"


def test_rename_noreplace_asks_a_refusing_filesystem_once(tmp_path, monkeypatch):
    """Where renameat2 is refused (NFS, some FUSE filesystems), later renames into the same folder
    go straight to the caller's link fallback, without a refused call per commit."""
    import ctypes
    import errno

    import smallpond.io.filesystem as fs

    calls = []

    def refused(*args):
        calls.append(args)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(fs, "_renameat2", refused)
    monkeypatch.setattr(fs, "_no_noreplace", set())
    for i in range(3):
        write_file(str(tmp_path / f"a{i}"), b"x")
        assert rename_noreplace(str(tmp_path / f"a{i}"), str(tmp_path / f"b{i}")) is False
        assert os.path.exists(tmp_path / f"a{i}") and not os.path.exists(tmp_path / f"b{i}")
    assert len(calls) == 1


def test_link_or_copy_and_remove(tmp_path):
    src = tmp_path / "src"
    src.write_text("data")
    assert link_or_copy(str(src), str(tmp_path / "linked")) == "link"
    assert link_or_copy(str(src), str(tmp_path / "copied"), allow_link=False) == "copy"
    assert (tmp_path / "copied").read_text() == "data"
    (tmp_path / "d" / "e").mkdir(parents=True)
    remove_path(str(tmp_path / "d"))
    remove_path(str(tmp_path / "missing"))
    assert sorted(os.listdir(tmp_path)) == ["copied", "linked", "src"]


def test_private_key_is_made_once_owner_only_and_refused_when_not_private(tmp_path):
    from smallpond.errors import ParameterError

    path = str(tmp_path / "secret")
    assert private_key(path, "the key", "refusing", create=False) is None and not os.path.exists(path)
    key = private_key(path, "the key", "refusing")
    assert len(key) == 32 and os.stat(path).st_mode & 0o777 == 0o600
    assert private_key(path, "the key", "refusing") == key  # read back, not made again
    os.chmod(path, 0o640)
    with pytest.raises(ParameterError, match=r"the key .*secret is not private to this user .*: refusing"):
        private_key(path, "the key", "refusing")
    os.chmod(path, 0o600)
    link = str(tmp_path / "link")
    os.symlink(path, link)
    with pytest.raises(ParameterError, match="is a symbolic link"):
        private_key(link, "the key", "refusing")


def test_a_key_left_short_by_a_crash_is_replaced(tmp_path):
    """An empty key (a crash between creating and writing it) signs records anyone could forge."""
    path = str(tmp_path / "secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    key = private_key(path, "the key", "refusing")
    assert len(key) == 32 and read_file(path) == key


@pytest.mark.parametrize("damage", ["none", "truncated", "short_header", "bit_flip"])
def test_a_record_of_two_keepers_verifies_under_either_secret_only(damage):
    """``signed_bytes(payload, a, b)`` (a commit record that is also a task-cache entry's record)
    verifies under ``a`` and under ``b``, never under a third secret; damaged, it is corrupt, not forged."""
    from smallpond.io.filesystem import signed_bytes, unverified_payload, verified_payload

    other, third = b"o" * 32, b"t" * 32
    data = bytearray(signed_bytes(b"payload bytes", SECRET, other))
    assert data[:6] == b"SPSIG3" and unverified_payload(bytes(data)) == b"payload bytes"
    if damage == "none":
        assert verified_payload(bytes(data), SECRET) == verified_payload(bytes(data), other) == b"payload bytes"
        with pytest.raises(SignatureError) as info:
            verified_payload(bytes(data), third, "rec")
        assert not isinstance(info.value, CorruptRecord)
        return
    if damage == "truncated":
        data = data[:-3]
    elif damage == "short_header":
        data = data[: 6 + 80]
    else:
        data[-2] ^= 0xFF
    for secret in (SECRET, other):
        with pytest.raises(CorruptRecord):
            verified_payload(bytes(data), secret, "rec")


def test_a_record_of_two_keepers_with_one_forged_slot_is_refused_by_that_slots_keeper():
    """A slot holds one keeper's signature: a record whose first slot is forged (zeros) verifies
    for the second keeper only."""
    import hashlib

    from smallpond.io.filesystem import signed_bytes, verified_payload

    other = b"o" * 32
    data = signed_bytes(b"p", SECRET, other)
    forged = data[:38] + bytes(32) + data[70:]
    assert hashlib.sha256(b"p").digest() == forged[6:38]
    assert verified_payload(forged, other) == b"p"
    with pytest.raises(SignatureError):
        verified_payload(forged, SECRET)


def test_create_whole_names_an_unnamed_file_once_and_never_replaces(tmp_path, monkeypatch):
    import errno

    from smallpond.io import filesystem

    path = str(tmp_path / "T-1.commit")

    def no_named_temp(*args, **kwargs):
        raise AssertionError("a named temp file was written where O_TMPFILE works")

    with monkeypatch.context() as m:
        m.setattr(filesystem, "write_file", no_named_temp)
        filesystem.create_whole(path, b"first")
        with pytest.raises(FileExistsError):
            filesystem.create_whole(path, b"second")
    assert open(path, "rb").read() == b"first" and os.listdir(tmp_path) == ["T-1.commit"]
    assert os.stat(path).st_nlink == 1

    # a filesystem without O_TMPFILE: a temp file renamed without replacing, nothing left behind
    real_open = os.open

    def refusing_open(p, flags, *args, **kwargs):
        if flags & filesystem._TMPFILE == filesystem._TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not supported", p)
        return real_open(p, flags, *args, **kwargs)

    other = tmp_path / "nfs"
    other.mkdir()
    monkeypatch.setattr(os, "open", refusing_open)
    filesystem.create_whole(str(other / "a"), b"A")
    with pytest.raises(FileExistsError):
        filesystem.create_whole(str(other / "a"), b"B")
    assert open(other / "a", "rb").read() == b"A" and os.listdir(other) == ["a"]
    assert str(other) in filesystem._no_tmpfile  # not asked again


def test_close_quietly_closes_and_ignores_a_descriptor_closed_already(tmp_path):
    """The one helper for the logs' descriptors (joblog, attempt, sink locks after a fork)."""
    fd = os.open(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT, 0o600)
    close_quietly(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    close_quietly(fd)  # again: no error


def _tree_with_a_mount_point(tmp_path):
    """queue/ holding the engine's files, a symlink to a user's folder and a folder ``m`` that
    stands for a mount point (a user's file and empty folder in it); the user's folder."""
    user = tmp_path / "user"
    (user / "empty").mkdir(parents=True)
    (user / "theirs.txt").write_text("theirs")
    queue = tmp_path / "job" / "queue"
    (queue / "executors" / "e1").mkdir(parents=True)
    (queue / "executors" / "e1" / "heartbeat").write_text("1")
    (queue / "deep" / "m").mkdir(parents=True)
    os.symlink(user, queue / "link")
    return queue, user


def test_a_tree_is_removed_around_the_mount_points_in_it(tmp_path, monkeypatch):
    # remove_path (and remove_tree_written_into, for a job's queue/) used shutil.rmtree, which enters
    # a mount point: a folder mounted inside queue/ (a bind mount, checked as root) lost every file
    # and empty folder of the mounted filesystem. The mount table is stood in for here
    from smallpond.io import filesystem

    queue, user = _tree_with_a_mount_point(tmp_path)
    mount = queue / "deep" / "m"
    (mount / "mounted.txt").write_text("not the engine's")
    (mount / "sub").mkdir()
    real_mount = os.path.realpath(mount)
    monkeypatch.setattr(filesystem, "mount_points_in", lambda folder: {real_mount} if real_mount.startswith(folder) else set())
    remove_tree_written_into(str(queue))
    assert (mount / "mounted.txt").read_text() == "not the engine's" and (mount / "sub").is_dir()
    assert sorted(os.listdir(queue)) == ["deep"] and os.listdir(queue / "deep") == ["m"]  # only what holds the mount stays
    assert (user / "theirs.txt").read_text() == "theirs" and (user / "empty").is_dir()  # the symlink was not followed
    # where the mount table cannot be read, each folder is asked
    monkeypatch.setattr(filesystem, "mount_points_in", lambda folder: None)
    monkeypatch.setattr(os.path, "ismount", lambda p: os.path.realpath(p) == real_mount)
    (queue / "again.txt").write_text("x")
    remove_path(str(queue))
    assert (mount / "mounted.txt").exists() and not (queue / "again.txt").exists()
    monkeypatch.undo()
    os.unlink(mount / "mounted.txt")
    os.rmdir(mount / "sub")
    remove_path(str(queue))  # no mount point left: gone
    assert not queue.exists()


def test_a_bind_mount_inside_a_removed_tree_keeps_its_files(tmp_path):
    import subprocess

    queue, user = _tree_with_a_mount_point(tmp_path)
    mount = queue / "deep" / "m"
    source = tmp_path / "mounted"
    (source / "sub").mkdir(parents=True)
    (source / "mounted.txt").write_text("not the engine's")
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True).returncode:
        pytest.skip("bind mounts need root")
    try:
        remove_tree_written_into(str(queue))
        assert (source / "mounted.txt").read_text() == "not the engine's" and (source / "sub").is_dir()
        assert (user / "theirs.txt").exists() and not (queue / "executors").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_tree_a_writer_keeps_writing_into_is_removed_at_once(tmp_path, monkeypatch):
    # a job's queue/, removed while an executor started by hand still beats into it: removed in
    # place, a heartbeat written after a pass emptied its folder, before the folder's rmdir, kept
    # the tree (1 clean-up in 10 of test_retention's, its writer beating every millisecond on a
    # loaded machine). Here the writer always wins that race: it beats right before every rmdir
    # of its folder
    from smallpond.io import filesystem

    queue = tmp_path / "queue"
    member = queue / "executors" / "host-1"
    member.mkdir(parents=True)
    (member / "heartbeat").write_text("{}")
    beats, real_rmdir = [], os.rmdir

    def beat_then_rmdir(path, *args, **kwargs):
        if os.path.basename(os.fsdecode(path)) == "host-1":
            try:  # as an executor's heartbeat, by its path: into its folder only if it is there
                filesystem.atomic_write_bytes(str(member / "heartbeat"), b"{}")
                beats.append("written")
            except FileNotFoundError:
                beats.append("no folder")
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", beat_then_rmdir)
    remove_tree_written_into(str(queue))
    monkeypatch.undo()
    assert not queue.exists() and os.listdir(tmp_path) == [], (os.listdir(tmp_path), beats)
    assert beats == ["no folder"]
    # a tree an earlier removal renamed aside and did not finish goes with the next one
    monkeypatch.undo()
    (tmp_path / "queue.removing-abc" / "x").mkdir(parents=True)
    (tmp_path / "queue.removing-abc" / "x" / "f").write_text("1")
    (tmp_path / "queue.kept").write_text("not the engine's")
    remove_tree_written_into(str(queue))
    assert sorted(os.listdir(tmp_path)) == ["queue.kept"]
