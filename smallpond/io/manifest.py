"""The files a result folder's manifest lists, as a reader takes them: where a copied or moved
folder's files are now, and a listed file that is gone refused, naming the manifest and the file.

``write_parquet`` and a Driver job's outputs list their files in ``.MANIFEST.txt``
(:func:`~smallpond.io.paths.manifest_paths` reads it); a Parquet dataset of such a folder reads
those files (see :class:`~smallpond.logical.dataset_files.ParquetDataSet`).
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

from smallpond.errors import ListedFileMissing
from smallpond.io.paths import MANIFEST_NAME


def relocated(directory: str, listed: List[str]) -> List[str]:
    """The files a manifest lists, or, for a result folder copied or moved since it was published
    (``cp -r out out2``, ``mv out final``), the same names in ``directory``: its manifest lists
    absolute paths in the folder it was written in, so the copy read the original's files (and
    changed when they did) and a moved folder could not be read at all. That is the case when every
    listed file is in one other folder, ``directory`` holds a file of one of their names, and that
    folder is a published result too (it holds a manifest: the original of a copy) or its files are
    gone (a move). A ``type="manifest"`` result lists the files of a job's task (a folder without a
    manifest) or of its inputs: files of the same names beside it (copied there by hand, from an
    earlier run) are not what it lists. A copy missing a file is then refused naming it."""
    parents = {os.path.dirname(p) for p in listed}
    if len(parents) != 1:
        return listed
    (parent,) = parents
    if os.path.realpath(parent) == os.path.realpath(directory):
        return listed
    try:
        here = set(os.listdir(directory))
    except OSError:
        return listed
    names = [os.path.basename(p) for p in listed]
    if not any(n in here for n in names):
        return listed
    if not os.path.isfile(os.path.join(parent, MANIFEST_NAME)) and any(os.path.lexists(p) for p in listed):
        return listed
    return [os.path.join(directory, n) for n in names]


def check_listed(directory: str, listed: List[str]) -> None:
    """Refuse a result whose manifest lists a file that is gone (:class:`ListedFileMissing`), naming
    the manifest and the file: the reader's own error would name only the file, and a
    ``type="manifest"`` result lists files outside its folder (the job's, or the sources')."""
    missing = gone(listed)
    if missing:
        more = f" ({len(missing)} of its {len(listed)} files are gone)" if len(missing) > 1 else ""
        raise ListedFileMissing(
            f"cannot read the result in {directory}: its manifest {os.path.join(directory, MANIFEST_NAME)} lists "
            f"{missing[0]}, which no longer exists{more}. A result published with type='manifest' holds only that "
            "list: its files stay where the job wrote them (its job folder, or the inputs), and removing them "
            "(smallpond clean, or by hand) leaves it unreadable. Publish it again"
        )


#: A folder of which a manifest lists more files than this is listed once (one ``scandir``) rather
#: than each of its files looked up (one ``stat`` each). Checking a manifest of 100,000 files on
#: local disk took 0.155 s of CPU (and 0.25 to 0.75 s of wall time on a busy machine); listing
#: takes 0.07 s (16 folders) to 0.11 s (one folder of 100,000), the listing itself about half.
_STAT_EACH_UP_TO = 16


def gone(listed: List[str]) -> List[str]:
    """The paths of ``listed`` that do not exist (as ``os.path.exists`` says), in their order."""
    by_folder: Dict[str, List[Tuple[str, str]]] = {}
    sep = os.sep
    for path in listed:
        folder, slash, name = path.rpartition(sep)
        by_folder.setdefault(folder or (sep if slash else os.curdir), []).append((path, name))
    out = set()
    for folder, entries in by_folder.items():
        if len(entries) > _STAT_EACH_UP_TO:
            try:
                with os.scandir(folder) as listing:
                    names, links = set(), set()
                    for entry in listing:
                        names.add(entry.name)
                        if entry.is_symlink():  # (from the listing's file type: no system call)
                            links.add(entry.name)
            except OSError:
                pass  # not a folder this can list: each file is looked up
            else:
                out.update(path for path, name in entries if name not in names)
                # a link is there if its target is; a name such as "." or "" is not in a listing
                entries = [(p, n) for p, n in entries if n in links or n in ("", os.curdir, os.pardir)]
        out.update(path for path, _ in entries if not os.path.exists(path))
    return [p for p in listed if p in out] if out else []
