"""Publishing task outputs into a user directory (``DataSinkNode``, ``write_parquet``).

The result directory is built beside its destination and renamed into place, so a reader sees
either the previous content or the complete new result, never a part of it.
"""

from __future__ import annotations

import os
import uuid
from typing import List

from smallpond.common import logger
from smallpond.execution.task import Task
from smallpond.io.filesystem import atomic_write_text, link_or_copy, remove_path
from smallpond.logical.dataset import DataSet, FileSet, ParquetDataSet, PartitionedDataSet

MANIFEST = ".MANIFEST.txt"


def _source_files(inputs: List[DataSet]) -> List[str]:
    files: List[str] = []
    for ds in inputs:
        if isinstance(ds, PartitionedDataSet):
            files.extend(ds.paths)
        else:
            files.extend(ds.resolved_paths)
    return files


def _dest_names(files: List[str]) -> List[str]:
    names = [os.path.basename(f) for f in files]
    if len(set(names)) == len(names):
        return names
    out = []
    for idx, n in enumerate(names):
        stem, suffix = os.path.splitext(n)
        out.append(f"{stem}.{idx}{suffix}")
    return out


def publish_directory(staging: str, output_path: str) -> None:
    """Move the finished ``staging`` directory to ``output_path`` without exposing a partial result."""
    if not os.path.lexists(output_path):
        os.makedirs(os.path.dirname(output_path) or ".", exist_ok=True)
        os.rename(staging, output_path)
        return
    if os.path.isdir(output_path) and not os.listdir(output_path):
        os.rmdir(output_path)
        os.rename(staging, output_path)
        return
    if os.path.isdir(output_path) and os.path.exists(os.path.join(output_path, MANIFEST)):
        # a previous result of ours: swap whole directories
        old = f"{output_path}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output_path, old)
        os.rename(staging, output_path)
        remove_path(old)
        return
    # the user's own directory with other files in it: move ours in, manifest last
    for name in sorted(os.listdir(staging)):
        if name == MANIFEST:
            continue
        dst = os.path.join(output_path, name)
        if os.path.exists(dst):
            logger.warning("replacing existing file {}", dst)
        os.replace(os.path.join(staging, name), dst)
    os.replace(os.path.join(staging, MANIFEST), os.path.join(output_path, MANIFEST))
    remove_path(staging)


def remove_stale_siblings(output_path: str) -> None:
    """Remove the ``.staging-*`` / ``.old-*`` directories a crashed publication left beside ``output_path``."""
    parent, base = os.path.split(output_path.rstrip(os.sep))
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith((base + ".staging-", base + ".old-")):
            remove_path(os.path.join(parent, name))


class DataSinkTask(Task):
    writes_output = False

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        output_path = node.output_path
        files = _source_files(inputs)
        if node.type == "manifest":
            os.makedirs(output_path, exist_ok=True)
            atomic_write_text(os.path.join(output_path, MANIFEST), "".join(f + "\n" for f in files))
            return _as_dataset(files)
        remove_stale_siblings(output_path)
        staging = f"{output_path.rstrip(os.sep)}.staging-{uuid.uuid4().hex[:8]}"
        os.makedirs(staging)
        try:
            final = []
            for src, name in zip(files, _dest_names(files)):
                dst = os.path.join(staging, name)
                if node.type == "copy":
                    link_or_copy(src, dst, allow_link=False)
                else:
                    # "link" falls back to a copy across filesystems rather than a symlink that
                    # would dangle once the job's staging area is cleaned
                    link_or_copy(src, dst, allow_link=True)
                final.append(os.path.join(output_path, name))
            atomic_write_text(os.path.join(staging, MANIFEST), "".join(f + "\n" for f in final))
            self.inject_fault()
            publish_directory(staging, output_path)
        finally:
            remove_path(staging)
        return _as_dataset(final)


def _as_dataset(files: List[str]) -> DataSet:
    if all(f.endswith(".parquet") for f in files):
        return ParquetDataSet.from_files(files)
    return FileSet.from_files(files)
