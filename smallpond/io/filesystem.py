"""Filesystem primitives with the guarantees the checkpoint model relies on.

Invariants:

* :func:`atomic_write_bytes` never leaves a partially written file under the final name: it writes
  a temp file in the same directory, fsyncs it and renames it.
* :func:`dump` / :func:`load` move signed pickles across the shared filesystem. A pickle is code
  to whoever loads it, so every pickle carries an HMAC-SHA256 of its bytes under a per-job secret;
  :func:`load` refuses a pickle whose signature does not match.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import shutil
import uuid
from typing import Any, Optional

HF3FS_MOUNT_POINT_PREFIX = "/hf3fs"
HF3FS_FSSPEC_PROTOCOL = "hf3fs://"

_SIG_MAGIC = b"SPSIG1"


class SignatureError(Exception):
    """A pickle's signature does not match this job's secret."""


def on_hf3fs(path: str) -> bool:
    return path.startswith(HF3FS_MOUNT_POINT_PREFIX)


def extract_hf3fs_mount_point(path: str) -> Optional[str]:
    if not on_hf3fs(path):
        return None
    parts = path.split("/")
    return "/".join(parts[:3]) if len(parts) >= 3 else None


def find_mount_point(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def remove_path(path: str) -> None:
    """Remove a file, a symlink or a directory tree. A missing path is a no-op."""
    if os.path.islink(path) or os.path.isfile(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def atomic_write_bytes(path: str, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file.

    The rename makes the write atomic against process crashes. ``fsync`` (off by default: it
    costs 10-300 ms per call on network and virtual disks) adds durability against power loss;
    the readers of our records do not need it, because every record is signed and a torn or
    empty record fails verification and is treated as absent (the task is recomputed).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), fsync=fsync)


def sign(data: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def signed(payload: bytes, secret: bytes) -> bytes:
    """``payload`` with this job's signature in front (the format :func:`verified` checks)."""
    return _SIG_MAGIC + hmac.digest(secret, payload, "sha256") + payload


def verified(data: bytes, secret: bytes, what: str = "data") -> bytes:
    """The payload of signed ``data``; raises :class:`SignatureError` naming ``what`` if the
    signature is missing or does not match ``secret``."""
    if not data.startswith(_SIG_MAGIC) or len(data) < len(_SIG_MAGIC) + 32:
        raise SignatureError(f"refusing to load unsigned pickle {what!r}")
    sig = data[len(_SIG_MAGIC) : len(_SIG_MAGIC) + 32]
    payload = data[len(_SIG_MAGIC) + 32 :]
    if not hmac.compare_digest(sig, hmac.digest(secret, payload, "sha256")):
        raise SignatureError(f"refusing to load pickle {what!r}: its signature does not match this job's secret")
    return payload


def dump(obj: Any, path: str, *, secret: Optional[bytes] = None, atomic_write: bool = True) -> int:
    """Pickle ``obj`` with cloudpickle (signed if ``secret`` is given) and write it to ``path``."""
    import cloudpickle

    payload = cloudpickle.dumps(obj)
    if secret is not None:
        payload = signed(payload, secret)
    if atomic_write:
        atomic_write_bytes(path, payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)
    return len(payload)


def load(path: str, *, secret: Optional[bytes] = None) -> Any:
    """Load a pickle written by :func:`dump`, verifying its signature when ``secret`` is given."""
    import pickle

    with open(path, "rb") as f:
        data = f.read()
    if secret is not None:
        data = verified(data, secret, path)
    return pickle.loads(data)


def link_or_copy(src: str, dst: str, *, allow_link: bool = True) -> str:
    """Hard-link ``src`` to ``dst`` if possible, else copy it. Returns "link" or "copy"."""
    if allow_link:
        try:
            os.link(src, dst)
            return "link"
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copyfile(src, dst)
    return "copy"
