"""Which job folders a published result still reads from: what ``smallpond clean`` must keep.

A ``DataSinkNode(type="manifest")`` publishes only a ``.MANIFEST.txt`` that lists the files it
was given, where they are: a task's output in the job folder (``staging/``, or ``output/``).
Removing that job folder leaves the result unreadable. So, before a job folder is removed, the
manifests of the results published from this data root (the destinations of the records under it,
:mod:`~smallpond.execution.ops.sink_record`) are read, and a job folder any of them lists a
file of is kept (:func:`results_listing`; :func:`~smallpond.execution.catalog.remove_job` refuses
it, naming the manifest and saying what to do).

Invariants:

* **Only keeping is decided here.** A record is used unverified (a planted one can only make a
  job folder stay), and the manifest read is the one in the destination now, whatever its record
  says: a result overwritten since lists the new job's files, and the old job can go.
* **Every user's records this user can read**: this user's, and another user's whose records
  folder it may read (root reads all; a user folder is ``0700``): such a user's result may list
  files of this user's job folders that were made readable to it, or that it read as root. A
  records folder this user cannot read is not consulted; ``smallpond clean`` removes only the
  cleaning user's own job folders, so no other user's result can lose a file to it. Reading
  another user's records writes nothing there (their index is not brought up to date).
* Cost: one read of each recorded manifest and one ``realpath`` per folder it lists, once for all
  the job folders a clean removes.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, NamedTuple, Optional

from smallpond.execution.ops import sink_record
from smallpond.execution.runtime import every_sink_records_dir
from smallpond.io.paths import MANIFEST_NAME, manifest_paths


class Listing(NamedTuple):
    """A published result that lists files of a job folder: its manifest, and those files."""

    manifest: str
    files: List[str]


def results_listing(data_root: str, job_paths: Iterable[str], write_index: bool = True) -> Dict[str, List[Listing]]:
    """job folder (as given in ``job_paths``) -> the recorded published results whose manifests
    list files in it; job folders no result lists are left out. Without ``write_index`` (a dry
    run), the records folder's index of destinations is not brought up to date: nothing is written."""
    roots = {os.path.abspath(data_root), os.path.realpath(data_root)}
    jobs: Dict[str, str] = {}
    for path in job_paths:
        jobs[os.path.abspath(path)] = path
        jobs[os.path.realpath(path)] = path
    out: Dict[str, List[Listing]] = {}
    if not jobs:
        return out
    folders: Dict[str, Optional[str]] = {}  # a listed file's folder -> the job folder holding it

    def job_of(folder: str) -> Optional[str]:
        for candidate in dict.fromkeys((os.path.normpath(folder), os.path.realpath(folder))):
            for root in roots:
                if candidate.startswith(root.rstrip(os.sep) + os.sep):
                    name = candidate[len(root.rstrip(os.sep)) + 1 :].split(os.sep, 1)[0]
                    job = jobs.get(os.path.join(root, name))
                    if job is not None:
                        return job
        return None

    mine, *others = every_sink_records_dir(data_root)
    claimed = sink_record.claimed_destinations(mine, write_index)
    for records in others:  # read only: their index is theirs to write
        claimed += sink_record.claimed_destinations(records, write_index=False)
    for dest in sorted(set(claimed)):
        try:
            listed = manifest_paths(dest) or []
        except (OSError, UnicodeDecodeError):
            continue  # not readable as a list of paths: nothing a reader could read either
        hits: Dict[str, List[str]] = {}
        for path in listed:
            folder = os.path.dirname(path)
            if folder not in folders:
                folders[folder] = job_of(folder)
            job = folders[folder]
            if job is not None:
                hits.setdefault(job, []).append(path)
        for job, files in hits.items():
            out.setdefault(job, []).append(Listing(os.path.join(dest, MANIFEST_NAME), files))
    return out


def pending_publication(job_path: str) -> Optional[str]:
    """Why job folder ``job_path`` must stay because its publication was interrupted (its journal,
    ``config/publication.journal``, is still there), or None. A rerun of the job finishes or rolls
    back that publication from the journal and the job's staged files; with the folder gone, a
    result already swapped in (a manifest listing the job's files) would no longer read, and its
    destination would keep the staged leftovers."""
    from smallpond.execution.ops.sink_journal import job_journal

    journal = job_journal(job_path)
    if not os.path.lexists(journal):
        return None
    return (
        f"its publication was interrupted ({journal} is still there): rerun the job (same job id and "
        "data root) to finish it, then clean again; or, to give that publication up, remove that journal "
        "and clean again (its staged leftovers beside the destinations go with the next publication there)"
    )


def why_kept(listings: List[Listing]) -> str:
    """Why a job folder that ``listings`` read from stays, and what to do (for ``smallpond clean``)."""
    first = listings[0]
    also = f" (and {len(listings) - 1} more published result(s))" if len(listings) > 1 else ""
    return (
        f"the published result {first.manifest} lists {len(first.files)} file(s) in it (e.g. {first.files[0]}){also}, "
        "and would no longer read. Remove or overwrite that result first (or publish it again with type='copy' or "
        "'link_or_copy', which puts files of its own there), then clean again"
    )
