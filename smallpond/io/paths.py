"""Files as DuckDB and checkpoints see them: exact SQL literals, and a cheap identity.

* :func:`duckdb_file_literal` names exactly one file for DuckDB's readers, which glob every path
  they are given: glob characters are escaped, so ``a*.parquet`` is read once and only it.
* :func:`user_path` is a path a user gave, as the filesystem sees it (``~`` expanded).
* :func:`file_identity` tells one version of an input file from another without reading it, for
  the fingerprints that decide whether a checkpoint may be reused (within
  :func:`one_version_per_file`, a planning, each file is looked at once); :func:`schema_identity`
  the versions of a Parquet file's schema only (its columns' names and types, and its key-value
  metadata, not its rows).
* :func:`manifest_paths` reads the paths a result folder's ``.MANIFEST.txt`` lists, one a line:
  a line ends at ``\n`` only (so a name holding ``\r``, which an older smallpond published, reads
  back whole), a ``\r`` before it is dropped (a manifest written on Windows), and a relative path
  is relative to the folder. Nothing is escaped: no path a publication lists holds a character a
  line cannot (:func:`unlistable`; published files are named by :func:`listable_name`).
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Dict, Iterator, List, Optional

from smallpond.common import quote_literal
from smallpond.errors import ParameterError
from smallpond.io.parquet_footer import DIGEST_MAX_FOOTER_BYTES, read_footer, read_schema_bytes

_DUCKDB_GLOB_CHARS = re.compile(r"[\[*?]")

#: the file of a result folder that lists the files of its result, one path a line
MANIFEST_NAME = ".MANIFEST.txt"
# what ends a line for some reader of a manifest (str.splitlines, universal newlines), and lone
# surrogates: the bytes of a file name that is not UTF-8 (os.fsdecode's surrogateescape), which a
# manifest (UTF-8 text) cannot hold at all. A path holding one cannot be listed (a tab or another
# control character can: a data root or an input path holding one is read back as it is)
_LINE_BREAKING = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029\ud800-\udfff]")
# what a published file's own name is cleared of: those, and every control character (C0, DEL,
# C1), invisible in a manifest
_UNLISTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def user_path(path: str) -> str:
    """A path a user gave (an input, an output folder, a root), as the filesystem sees it: a
    leading ``~`` or ``~user`` is that home directory, as pandas, Polars and DuckDB read it.

    >>> import os; user_path("~/in.parquet") == os.path.join(os.path.expanduser("~"), "in.parquet")
    True
    >>> user_path("data/~x")
    'data/~x'
    """
    return os.path.expanduser(path)


def duckdb_file_literal(path: str) -> str:
    """A SQL literal naming exactly one file for DuckDB's readers, which glob every path again.

    Glob characters are escaped as one-character classes (``a*.parquet`` → ``a[*].parquet``), so a
    file whose name holds ``*``, ``?`` or ``[`` is read once, and only it. Paths without them (the
    usual case) are passed unchanged and cost DuckDB no directory listing. DuckDB's glob also takes
    a backslash for a path separator, so a path holding both is read through a symbolic link with
    a plain name (:func:`release_file_aliases` removes those).
    """
    if "*" in path or "?" in path or "[" in path:  # (three substring tests: cheaper than a regex)
        if "\\" in path:
            path = _file_alias(path)
        if _DUCKDB_GLOB_CHARS.search(path):
            path = _DUCKDB_GLOB_CHARS.sub(lambda m: "[" + m.group(0) + "]", path)
    return quote_literal(path)


_aliases: Dict[str, str] = {}
_alias_dir: Optional[str] = None


def _file_alias(path: str) -> str:
    global _alias_dir
    link = _aliases.get(path)
    if link is not None:
        return link
    if _alias_dir is None:
        import atexit
        import tempfile

        _alias_dir = tempfile.mkdtemp(prefix="smallpond-aliases-")
        atexit.register(release_file_aliases)
    ext = os.path.splitext(path)[1]
    link = os.path.join(_alias_dir, f"{len(_aliases)}{ext if ext.isalnum() or ext[1:].isalnum() else ''}")
    os.symlink(path, link)
    _aliases[path] = link
    return link


def release_file_aliases() -> None:
    """Remove the symbolic links :func:`duckdb_file_literal` made (call when the SQL that used them ended)."""
    global _alias_dir
    if _alias_dir is None:
        return
    import shutil

    shutil.rmtree(_alias_dir, ignore_errors=True)
    _alias_dir = None
    _aliases.clear()


def file_version(st: os.stat_result) -> tuple:
    """What tells two versions of a file apart without reading it: its size, modification and
    change times and inode (the change time cannot be set back by a user call, so a rewrite that
    restores the modification time is a new version too)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


#: the identities read so far in the current :func:`one_version_per_file` (None outside one)
_kept_identities: ContextVar[Optional[Dict[str, str]]] = ContextVar("smallpond_file_identities", default=None)


@contextmanager
def one_version_per_file() -> Iterator[None]:
    """Within it, :func:`file_identity` reads each path once and gives that identity again: a
    planning sees one version of each input file, and a file that two fingerprints cover (a
    source's, and that of the split of it a partition reads) costs one stat and one footer read.
    Nested uses share the outer one's."""
    token = _kept_identities.set({}) if _kept_identities.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _kept_identities.reset(token)


def file_identity(path: str) -> str:
    """What tells one version of an input file from another, without reading the file (the one
    already read, within :func:`one_version_per_file`).

    Size and modification time, plus:

    * the inode change time, which no user call can set back (a rewrite, a ``chmod`` or a new
      hard link changes it, so such a file is recomputed, never stale); except for a Parquet file
      with several hard links (a published result shares its inode with the job that wrote it and
      the task cache, whose links come and go without the content changing);
    * for Parquet files, a digest of the footer (the file's metadata: row groups, their offsets,
      sizes and column statistics), read from the end of the file: one small read. It is what
      tells apart two versions of a hard-linked Parquet file rewritten with its size and
      modification time kept, unless the rewrite keeps every row group's size and statistics
      (values swapped within a row group: only the change time shows that).
    """
    kept = _kept_identities.get()
    if kept is None:
        return _read_identity(path)
    ident = kept.get(path)
    if ident is None:
        ident = kept[path] = _read_identity(path)
    return ident


def schema_identity(path: str) -> str:
    """What tells apart the schemas of versions of a Parquet file (its path and a digest of the
    schema in its footer: the columns' names, types and nesting, and of its key-value metadata,
    by which readers type columns too; not the rows), read once within
    :func:`one_version_per_file`; where the schema cannot be read from the footer (not Parquet, a
    footer not understood, a missing file), the file's :func:`file_identity`."""
    kept = _kept_identities.get()
    key = "\x00schema:" + path  # (no path holds a NUL: no clash with a file identity's key)
    ident = None if kept is None else kept.get(key)
    if ident is None:
        ident = _read_schema_identity(path)
        if kept is not None:
            kept[key] = ident
    return ident


def _read_schema_identity(path: str) -> str:
    try:
        schema = read_schema_bytes(path)
    except OSError:
        schema = None
    if schema is None:
        return file_identity(path)
    return f"{path}:schema={hashlib.sha256(schema).hexdigest()[:32]};"


def _read_identity(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing;"
    ident = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if path.endswith(".parquet") or path.endswith(".parq"):
        footer = _parquet_footer_digest(path, st.st_size)
        if footer is not None:
            return f"{ident}:footer={footer};" if st.st_nlink > 1 else f"{ident}:footer={footer}:ctime={st.st_ctime_ns};"
    return f"{ident}:ctime={st.st_ctime_ns};"


def _parquet_footer_digest(path: str, size: int) -> Optional[str]:
    try:
        footer = read_footer(path, DIGEST_MAX_FOOTER_BYTES, size)
    except OSError:
        return None
    return None if footer is None else hashlib.sha256(footer).hexdigest()[:32]


def check_local_filesystem(filesystem, func: str) -> None:
    """Refuse a ``filesystem=`` these helpers cannot honour, rather than ignore it.

    Upstream's Parquet helpers took a filesystem object (for its 3FS client). Here every path is
    one of the local (shared) filesystem: None and a local filesystem object (pyarrow's or
    fsspec's ``LocalFileSystem``) are accepted; any other would be read past silently, so it is
    a :class:`~smallpond.errors.ParameterError` naming the function.
    """
    if filesystem is None:
        return
    protocol = getattr(filesystem, "protocol", None)
    protocols = protocol if isinstance(protocol, (tuple, list)) else (protocol,)
    local = type(filesystem).__name__ == "LocalFileSystem" or "file" in protocols or "local" in protocols
    if not local:
        raise ParameterError(
            f"{func}(filesystem={type(filesystem).__module__}.{type(filesystem).__name__}): only the local "
            "filesystem is supported (paths are read and written where this process sees them); "
            "pass filesystem=None and a local or mounted path"
        )


def unlistable(path: str) -> Optional[str]:
    r"""The first character of ``path`` that a manifest line cannot hold (one that ends a line for
    some reader, or a byte that is not UTF-8), or None.

    >>> unlistable("/out/part-0.parquet") is None
    True
    >>> unlistable("/in/new\nline.parquet")
    '\n'
    >>> unlistable("/data\troot/x.parquet") is None
    True
    """
    m = _LINE_BREAKING.search(path)
    return None if m is None else m.group()


def listable_name(name: str) -> str:
    r"""``name`` with each character a manifest line cannot hold, and each control character,
    replaced by ``_``.

    >>> listable_name("new\nline.parquet")
    'new_line.parquet'
    """
    return _UNLISTABLE.sub("_", name)


def manifest_paths(directory: str) -> Optional[List[str]]:
    """The paths ``directory/.MANIFEST.txt`` lists (relative ones joined to ``directory``), or None
    if there is no such file. Blank lines are skipped. OSError or UnicodeDecodeError if it cannot
    be read."""
    manifest = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(manifest):
        return None
    with open(manifest, encoding="utf-8", newline="\n") as f:
        lines = [line[:-1] if line.endswith("\n") else line for line in f]
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return [os.path.join(directory, line) for line in lines if line.strip()]
