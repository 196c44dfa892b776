"""Each user's own folder under a data root: the key, records of published results and task cache.

A data root may be shared by several users (each job folder is ``0700``, its user's own). What a
user's jobs keep from one job to the next lives in that user's folder, never in one that users
share (:func:`~smallpond.execution.runtime.user_dir` names it)::

    {data_root}/.smallpond/               0711: anyone passes through; only its maker lists or changes it
    {data_root}/.smallpond/users/         1733: anyone adds a folder; the sticky bit keeps others' in place
    {data_root}/.smallpond/users/{uid}/   0700, this user's own (:func:`ensure`)
        secret       the key that signs the records below (io.filesystem.private_key)
        sinks/       the records of published results (ops/sink_record.py)
        publishing/  the marks of publications begun and not finished (ops/sink_pending.py)
        task_cache/  the task cache, unless task_cache= says otherwise (cache.py)

Invariants:

* **A user keeps their things only in a folder that is theirs.** ``users/{uid}`` must be a folder
  (not a symbolic link; nor may ``.smallpond`` or ``users`` be one), owned by this user and not
  writable by group or others; anything else is refused with a
  :class:`~smallpond.errors.ParameterError` naming it and what to do.
* **Whoever owns a shared folder can take things away, never vouch for them.** The owner of
  ``.smallpond`` or ``users/`` (the first user, or whoever can write the data root) can remove
  or swap the folders in it, but cannot make a folder owned by another user: a folder put in
  place of this user's is refused, and one taken away leaves no records (an overwrite of an
  earlier result is then refused, nothing is removed) and an empty cache. Nothing in the folder
  is trusted for where it is: the key must be private (``private_key``), and records and cache
  entries verify against keys only their user can read.
* **Removal goes through the checked folder.** :func:`open_own` opens the user folder one level
  at a time without following a symbolic link and checks the folder it opened, so pruning
  (``smallpond clean``) removes files only inside this user's folder, even if a folder on the
  way is swapped while it runs; and a file there only if it is still the one it judged
  (:func:`remove_if_same`): a newer one written under its name meanwhile stays.
* **An earlier single-user layout moves in, by its owner.** Before this layout the data root kept
  ``.smallpond/secret`` and ``.smallpond/sinks/`` in a ``0700`` ``.smallpond``, and the task cache
  in ``{data_root}/.task_cache``. Their owner's next job renames them into its user folder
  (records still verify with the key that moved with them; cache entries still serve) and opens
  ``.smallpond`` to ``0711``. Another user meanwhile finds ``.smallpond`` closed and is told that
  its owner's next job opens it. Something of the old layout that cannot move (its new place is
  taken) stays where it is, with a warning.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable, Optional

from smallpond.common import logger
from smallpond.errors import ParameterError
from smallpond.execution.ownership import describe_owner
from smallpond.execution.runtime import (
    LEGACY_TASK_CACHE_DIRNAME,
    SINKS_DIRNAME,
    SMALLPOND_DIRNAME,
    TASK_CACHE_DIRNAME,
    USERS_DIRNAME,
    this_uid,
    user_dir,
)
from smallpond.io.filesystem import unique_suffix

_TOP_MODE, _USERS_MODE = 0o711, 0o1733
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_PATH = getattr(os, "O_PATH", 0)  # opens a folder to pass through, which needs no right to read it
_warned: set = set()


def _refusal(path: str, problem: str) -> ParameterError:
    return ParameterError(
        f"{path} {problem}: refusing to keep this user's key, records of published results and task cache in it "
        "(whoever controls it could read or replace them)"
    )


def _check_mine(path: str, st: os.stat_result) -> None:
    """Refuse ``path`` (with status ``st``, not following a link) as this user's folder unless it is one."""
    if stat.S_ISLNK(st.st_mode):
        raise _refusal(path, "is a symbolic link, not a folder of this user's own; remove it")
    if not stat.S_ISDIR(st.st_mode):
        raise _refusal(path, "is not a folder; remove it")
    if st.st_uid != this_uid():
        raise _refusal(
            path,
            f"is owned by {describe_owner(st.st_uid)}, not by this user ({describe_owner(this_uid())}); another user "
            "made it in this user's place: its owner or an administrator must remove it",
        )
    if st.st_mode & 0o022:
        raise _refusal(path, f"is writable by group or others (mode {st.st_mode & 0o777:o}); run 'chmod 700 {path}'")


def _shared_folder(path: str, mode: int, inside: str) -> None:
    """Make the shared folder ``path`` with ``mode`` (or check the one there): a folder, not a link;
    this user's own is given ``mode`` if it lacks some of it (a crash between mkdir and chmod,
    or an earlier smallpond's ``0700``)."""
    _make_folder(path, inside)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise _refusal(path, "is not a folder (a symbolic link or a file); its owner or an administrator must remove it")
    if st.st_uid == this_uid() and (st.st_mode & mode) != mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) | mode)


def _make_folder(path: str, inside: str) -> None:
    """Make ``path`` (``0700``) unless it is there; a parent that does not let this user in is a
    :func:`_unreachable` error about making its folder ``inside``."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except PermissionError:
        if not os.path.lexists(path):
            raise _unreachable(os.path.dirname(path), inside) from None


def _unreachable(folder: str, inside: str) -> ParameterError:
    """This user cannot make its folder ``inside`` (under ``folder``): say whose folder stops it."""
    try:
        st = os.stat(folder)
        whose = f"owned by {describe_owner(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):o}"
    except OSError as e:
        whose = e.strerror or str(e)
    fix = "chmod 711" if os.path.basename(folder) == SMALLPOND_DIRNAME else "chmod 1733"
    return ParameterError(
        f"cannot make this user's folder {inside} for its key, records of published results and task cache: "
        f"{folder} ({whose}) does not let other users in. An earlier smallpond made it so; its owner's next smallpond "
        f"job opens it (or its owner runs '{fix} {folder}'); until then use another data_root"
    )


def ensure(data_root: str) -> str:
    """This user's folder under ``data_root``: made if missing (see the module docstring), checked
    (a :class:`ParameterError` if it is not this user's own), with an earlier single-user layout of
    this user's moved into it. Returns its path."""
    root = os.path.abspath(os.path.expanduser(data_root))
    top, mine = os.path.join(root, SMALLPOND_DIRNAME), user_dir(root)
    users = os.path.dirname(mine)
    os.makedirs(root, exist_ok=True)
    _shared_folder(top, _TOP_MODE, mine)
    _shared_folder(users, _USERS_MODE, mine)
    _make_folder(mine, mine)
    _check_mine(mine, os.lstat(mine))
    if os.lstat(top).st_uid == this_uid():  # what an earlier smallpond kept there is this user's
        for name in (SINKS_DIRNAME, "secret"):  # a crash between the two: the next job moves the other
            _move_in(os.path.join(top, name), os.path.join(mine, name))
    return mine


def migrate(data_root: str) -> None:
    """Move this user's key and records of an earlier single-user layout into its folder, if there
    are any (for commands that otherwise make nothing, such as ``smallpond clean``)."""
    top = os.path.join(os.path.abspath(os.path.expanduser(data_root)), SMALLPOND_DIRNAME)
    try:
        if os.lstat(top).st_uid != this_uid():
            return
    except FileNotFoundError:
        return
    if any(os.path.lexists(os.path.join(top, name)) for name in (SINKS_DIRNAME, "secret")):
        ensure(data_root)


def _move_in(old: str, new: str) -> None:
    """Move ``old`` (of the earlier layout) to ``new`` unless ``new`` is taken. A file is linked and
    then unlinked, so that a key already at ``new`` is never replaced; a folder is renamed (over an
    empty one: a job that started meanwhile, before writing anything)."""
    try:
        st = os.lstat(old)
    except FileNotFoundError:
        return
    if st.st_uid != this_uid():
        return  # put there by someone else: not this user's to move, and never trusted
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rename(old, new)
        else:
            os.link(old, new, follow_symlinks=False)
            os.unlink(old)
        logger.info("moved {} to {} (each user of a data root has a folder of their own)", old, new)
        return
    except FileNotFoundError:
        return  # moved by another job of this user meanwhile
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    try:
        if os.path.samestat(st, os.lstat(new)):  # linked by another job of this user meanwhile
            os.unlink(old)
            return
    except OSError:
        pass
    if old not in _warned:
        _warned.add(old)
        logger.warning(
            "kept {}, which an earlier smallpond wrote: {} is taken, so it is no longer used (move its content there "
            "by hand, or remove it)",
            old,
            new,
        )


def _data_root_of(path: str) -> Optional[str]:
    """The data root whose user folder (of this user) holds ``path`` directly, or None."""
    mine = os.path.dirname(os.path.abspath(path))
    users = os.path.dirname(mine)
    top = os.path.dirname(users)
    if (os.path.basename(mine), os.path.basename(users), os.path.basename(top)) == (
        str(this_uid()),
        USERS_DIRNAME,
        SMALLPOND_DIRNAME,
    ):
        return os.path.dirname(top)
    return None


def prepare(path: str) -> None:
    """Make the folder that will hold ``path`` (``sinks/`` or ``task_cache/``): this user's folder,
    made and checked by :func:`ensure`, when ``path`` is in one; else the parent, ``0700``."""
    root = _data_root_of(path)
    if root is None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    else:
        ensure(root)


def prepare_task_cache(path: str, create: bool = True) -> None:
    """Before the task cache at ``path`` is used: if it is a user folder's (the default place), make
    that folder (:func:`ensure`; only if an earlier layout is to move in, unless ``create``) and
    move this user's ``{data_root}/.task_cache`` of an earlier smallpond into it."""
    root = _data_root_of(path)
    if root is None or os.path.basename(path) != TASK_CACHE_DIRNAME:
        return
    old = os.path.join(root, LEGACY_TASK_CACHE_DIRNAME)
    try:
        legacy = os.lstat(old)
    except FileNotFoundError:
        legacy = None
    mine = legacy is not None and stat.S_ISDIR(legacy.st_mode) and legacy.st_uid == this_uid()
    if create or mine:
        ensure(root)
    if mine:
        _move_in(old, path)


def open_own(data_root: str, *names: str) -> int:
    """A descriptor of the folder ``names`` (e.g. ``sinks``) in this user's folder under
    ``data_root``, opened one folder at a time without following a symbolic link below the data
    root, the user folder checked as it was opened (a :class:`ParameterError` if it is not this
    user's own). ``FileNotFoundError`` if a folder is missing; the caller closes it."""
    path = os.path.abspath(os.path.expanduser(data_root))
    parts = (SMALLPOND_DIRNAME, USERS_DIRNAME, str(this_uid()), *names)
    fd = os.open(path, _DIR_FLAGS | _PATH)
    try:
        for i, name in enumerate(parts):
            path = os.path.join(path, name)
            try:  # the shared folders on the way may let this user through without letting it list them
                sub = os.open(name, _DIR_FLAGS | _NOFOLLOW | (_PATH if i < len(parts) - 1 else 0), dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refusal(path, "is not a folder (a symbolic link or a file)") from None
                raise
            os.close(fd)
            fd = sub
            if i == 2:
                _check_mine(path, os.fstat(fd))
        return fd
    except BaseException:
        os.close(fd)
        raise


#: what a file being pruned is renamed to, ``.{name}.prune-{suffix}``, until it is removed or put back
_ASIDE = ".prune-"


def exists_at(folder: int, name: str) -> bool:
    """Whether ``folder`` (a descriptor) has an entry ``name`` (a symbolic link is not followed)."""
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _unlink(folder: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass


def remove_if_same(folder: int, name: str, read: os.stat_result) -> bool:
    """Remove the file ``name`` of ``folder`` (a descriptor) if it is still the file read (``read``:
    its ``fstat``, taken while the caller holds it open, so that its inode is not another's yet):
    a job may have written a newer one under that name meanwhile (a record of the same
    destination, a mark of a job folder made again), which stays. The file is set aside first
    (``.{name}.prune-{suffix}``), then looked at: a newer one is put back, unless one newer still
    is there; a clean killed meanwhile leaves it for :func:`put_back_set_aside`."""
    aside = f".{name}{_ASIDE}{unique_suffix()}"
    try:
        os.rename(name, aside, src_dir_fd=folder, dst_dir_fd=folder)
    except FileNotFoundError:
        return False
    try:
        same = os.path.samestat(os.stat(aside, dir_fd=folder, follow_symlinks=False), read)
    except FileNotFoundError:
        return False  # put back meanwhile by another clean (put_back_set_aside): it judges it again
    if not same:  # a newer one: put it back
        try:
            os.link(aside, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            pass  # a newer one still is there
        except OSError:
            if not exists_at(folder, name):
                os.rename(aside, name, src_dir_fd=folder, dst_dir_fd=folder)
        _unlink(folder, aside)
        return False
    _unlink(folder, aside)
    return True


def put_back_set_aside(folder: int, is_name: Callable[[str], bool]) -> None:
    """Put back a file that a clean killed between setting it aside and removing it (or putting it
    back, as a newer one) left as ``.{name}.prune-{suffix}`` (:func:`remove_if_same`): under its
    name, unless a file is there (written since: it is newer, and stays), so that the pruning that
    follows judges it again; the copy set aside goes. Only a regular file of this user, of a name
    ``is_name`` accepts."""
    for aside in sorted(n for n in os.listdir(folder) if n.startswith(".") and _ASIDE in n):
        name = aside[1 : aside.rindex(_ASIDE)]
        if not is_name(name):
            continue
        try:
            st = os.stat(aside, dir_fd=folder, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            os.link(aside, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            pass  # a newer one is there
        except FileNotFoundError:
            continue  # another clean is done with it
        except OSError:  # no hard links here: renamed back, if its name is still free
            if not exists_at(folder, name):
                try:
                    os.rename(aside, name, src_dir_fd=folder, dst_dir_fd=folder)
                except OSError:
                    pass
        if exists_at(folder, name):  # put back, or a newer one there (else the one set aside stays)
            _unlink(folder, aside)
