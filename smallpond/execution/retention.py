"""Removing a finished job's intermediates without breaking a published result.

``--remove_output_root`` (Driver, ``run_job``) and a session's shutdown remove ``queue/``,
``temp/`` and ``staging/`` (a session's ``_remove_output_root`` ``output/`` too) once a job has
succeeded. A published result may still refer to files there: ``FinalResults`` and a
``type="manifest"`` sink are manifests of the files of the tasks they publish, and those are
intermediates unless the task is named. Invariants kept here:

* **No published result is left dangling.** A file that a surviving published sink lists (its
  commit record's dataset) is kept, with the rest of the attempt folder that holds it: only those
  folders of ``staging/`` (or ``output/``) stay, everything else goes. A sink survives when its
  destination is not itself being removed (a manifest under ``output/FinalResults`` goes with
  ``output/``, and so do the files only it listed).
* **A rerun of the job does not overwrite what was kept.** The commit record of every task whose
  files all survive is moved to ``config/published/`` (:func:`~smallpond.execution.ops.sink.park_publication_records`),
  and brought back when the job starts again: those tasks resume instead of running again. Were
  they run again, the new attempt's folder would replace the kept one (the old one is an orphan
  then) while the published manifest, whose sink resumes, still listed the old files.
* Only files of this job's folder are removed, as before.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Set, Tuple

from smallpond.execution.runtime import RuntimeContext
from smallpond.io.filesystem import remove_path, remove_tree_written_into


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _files(ds) -> Optional[List[str]]:
    """The files a record's dataset lists, or None if they cannot be told."""
    from smallpond.logical.dataset import PartitionedDataSet

    out: List[str] = []
    try:
        for d in ds.datasets if isinstance(ds, PartitionedDataSet) else [ds]:
            out.extend(os.path.abspath(p) for p in d.resolved_paths)
    except Exception:
        return None
    return out


def _attempt_dir(path: str, roots: Iterable[str]) -> Optional[str]:
    """The task output folder (``{root}/{name}/{key}.{attempt}.{token}``) that holds ``path``."""
    for root in roots:
        if _inside(path, root):
            parts = path[len(root) + 1 :].split(os.sep)
            if len(parts) < 3:  # not a task output (a manifest, a record): nothing to keep
                return None
            return os.path.join(root, parts[0], parts[1])
    return None


def _records(rt: RuntimeContext) -> Dict[str, dict]:
    from smallpond.execution.commit import _load_record

    try:
        names = [n for n in os.listdir(rt.completed_task_dir) if n.endswith(".commit")]
    except FileNotFoundError:
        return {}
    out = {}
    for name in names:
        record = _load_record(rt, os.path.join(rt.completed_task_dir, name))
        if record is not None:
            out[name] = record
    return out


def retained(rt: RuntimeContext, remove_output_root: bool) -> Tuple[Set[str], List[str]]:
    """What survives the clean-up: (task output folders kept, names of the records to park).

    Parked: a sink's record when every file it lists survives (so a rerun does not publish it
    again), and a task's record when the folder it wrote survives (so a rerun does not write a new
    one and remove this one as an orphan). A task that wrote no folder (metadata only) is cheap to
    redo and removes nothing when it is: its record goes with staging/.
    """
    roots = [os.path.abspath(rt.staging_root)] + ([os.path.abspath(rt.output_root)] if remove_output_root else [])

    def removed(path: str) -> bool:
        return any(_inside(path, r) for r in roots)

    from smallpond.execution.ops.sink import SINK_RECORD_PREFIX

    records = _records(rt)
    sinks = {name: _files(r.get("dataset")) for name, r in records.items() if name.startswith(SINK_RECORD_PREFIX)}
    keep: Set[str] = set()
    for name, files in sinks.items():
        dest = records[name].get("output_path")
        if dest is not None and removed(os.path.abspath(dest)):
            continue  # the published result is removed as a whole
        for f in files or ():
            d = _attempt_dir(f, roots)
            if d is not None:
                keep.add(d)
    park = []
    for name, record in records.items():
        if name in sinks:
            files = sinks[name]
            if files and all(not removed(f) or _attempt_dir(f, roots) in keep for f in files):
                park.append(name)
            continue
        folder = record.get("output_dir")
        if folder and (not removed(os.path.abspath(folder)) or os.path.abspath(folder) in keep):
            park.append(name)
    return keep, park


def _remove_except(root: str, keep: Set[str]) -> None:
    """Remove ``root`` but for the task output folders in ``keep`` (``{root}/{name}/{folder}``)."""
    if not any(_inside(k, root) for k in keep):
        remove_path(root)
        return
    for name in os.listdir(root):
        node_dir = os.path.join(root, name)
        if not any(_inside(k, node_dir) for k in keep):
            remove_path(node_dir)
            continue
        for entry in os.listdir(node_dir):
            path = os.path.join(node_dir, entry)
            if path not in keep:
                remove_path(path)


def remove_intermediates(rt: RuntimeContext, remove_output_root: bool = False) -> int:
    """Remove queue/, temp/ and staging/ (and output/ if asked) of a finished job, keeping the
    files a published result still lists and parking the records of the tasks that wrote them
    (see the module docstring). Returns how many task output folders were kept."""
    from smallpond.common import logger
    from smallpond.execution.ops.sink import park_publication_records

    keep, park = retained(rt, remove_output_root)
    park_publication_records(rt, park)  # a rerun resumes them rather than writing over them
    # executors started by hand (any host) may still beat into queue/ as it goes: removed until it is gone
    remove_tree_written_into(rt.queue_root)
    remove_path(rt.temp_root)
    _remove_except(rt.staging_root, keep)
    if remove_output_root:
        _remove_except(rt.output_root, keep)
    if keep:
        logger.info(
            "kept {} task output folder(s) of {} that published results list (the rest of the intermediates were removed)",
            len(keep),
            rt.job_root,
        )
    return len(keep)
