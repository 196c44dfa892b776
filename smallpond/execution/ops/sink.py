"""Publishing results into user folders (``DataSinkNode``, ``write_parquet``) without losing data.

Guarantees:

* **Nothing we did not write is deleted or overwritten.** A destination's ``.MANIFEST.txt`` lists
  the files of an earlier publication, in the form publications write, one absolute path per line
  (:func:`_load_manifest`); a file by that name in any other form is a user's like any other. A
  name is only a claim: each publication outside the job's folder also records the identity
  (size, modification time, inode, device) of the manifest and of every file it wrote, under the
  data root, never in the result folder (:mod:`~smallpond.execution.ops.sink_record`). With the
  default ``mode="overwrite"``, a destination is refused *at plan time*, before any task runs,
  naming the files (:func:`check_destination`), if it holds any file no manifest lists, any listed
  file that is no longer the one recorded (replaced or modified by a user), or a manifest the
  record does not vouch for (written by hand, or by an older smallpond or a job with another data
  root: the user removes that result). ``"append"`` adds files under names that cannot collide
  (``{stem}.{token}{suffix}``) and leaves every other file alone (it rewrites ``.MANIFEST.txt``, so
  one not in smallpond's form, or one the record does not vouch for, is refused); ``"error"`` (or ``"errorifexists"``) refuses a non-empty
  destination; ``"ignore"`` keeps a non-empty destination as it is and computes nothing for it. A
  manifest-only sink (``type="manifest"``) follows the same rules; it publishes by replacing
  ``.MANIFEST.txt`` in place (atomically) rather than by swapping folders, since its folder may
  hold the files it lists (a named output's task folders).
* **Results of two jobs never share a file.** A sink hard-links the files this job computed (a
  link is free, and those inodes are this job's and, if cached, its cache entry's: a result edited
  in place then fails the entry's verification and is not served again, see
  :mod:`~smallpond.execution.cache`). A file the job took from the task cache is that entry's
  inode, and so possibly another job's published result: it is copied (a reflink where the
  filesystem has them), so editing one result in place never changes another
  (:func:`~smallpond.execution.ops.sink_sources.linked_from_cache`; a
  manifest lists such a file once it is this job's own copy: :func:`~smallpond.execution.ops.sink_sources.own_copies`). Likewise a user's input file that a ``"link_or_copy"`` sink
  (``write_parquet``) publishes as is: the result is a copy, never the input itself.
* **No output overlaps an input**, the data root or a job folder, and no result is published
  inside (or around) another, of this session or of any job of the data root, nor over a result
  the computation reads: refused at plan time (:mod:`~smallpond.execution.ops.sink_overlap`).
* **A computation publishes all its sinks or none, and never a part of one.** This is a two-phase
  publication:

  1. *prepare* (:class:`DataSinkTask`, on a worker): the sink's files are hard-linked or copied into
     ``{dest}.staging-{job}-{task}`` beside the destination (same filesystem, so renames work), with
     the new ``.MANIFEST.txt``. Nothing in the destination changes. The task's output describes the
     staged files, so tasks downstream of a sink in the same computation can read them.
  2. *publish* (:func:`publish`, in the job's process, once every task of the computation
     succeeded): the steps for every prepared sink are planned (:func:`plan_steps`) and written to
     a signed **publication journal** ``config/publication.journal``, together with the sinks'
     commit records. Then the steps run (:func:`~smallpond.execution.ops.sink_journal.roll_forward`)
     and the journal is removed. A sink's commit record is written by the journal's last steps: a
     sink is complete if and only if its result is published. Where a destination exists already
     (a previous result to swap out, files to append beside), the journal is fsynced before the
     first step and the destinations' folders after the last, so that even a power loss cannot
     leave a user's files moved aside with no journal to finish the move. Publishing into new destinations, or into
     the job's own folder (named outputs, ``FinalResults``), skips these fsyncs: those steps move
     only files this job wrote, a re-run redoes them whatever survived
     (resume checks that a commit record's files exist), and an fsync right after a large write
     waits for its writeback (0.04-0.3 s on this project's test machine).

  The commit records outlive the job's intermediates: a session removes ``staging/`` at shutdown,
  after moving its sinks' records to ``config/published/`` (:func:`park_publication_records`),
  and a rerun of the job brings them back, so it does not publish the same sink twice.

  Jobs publishing into one destination take turns: a publication holds that destination's lock
  from before it plans its steps until the last one (:mod:`~smallpond.execution.ops.sink_lock`),
  and those of the folders above it, shared; holding them, it checks again that no result of the
  data root nests with its destination (published since the job was planned:
  :func:`~smallpond.execution.ops.sink_overlap.nested_since_planned`), else it publishes nothing.
  Before its journal is written, it leaves a mark naming the job and its destinations outside the
  job's folder, removed with the journal, so that a job killed half way, its record not written
  yet, is still seen by other jobs' nesting checks (:mod:`~smallpond.execution.ops.sink_pending`).

  An append finished by a rerun is merged into the manifest in place (another job may have
  appended since), and one its journal can no longer finish is rolled back, never left half
  there (:mod:`~smallpond.execution.ops.sink_append`).

  Every step is idempotent and knows from the filesystem whether it already happened (a swapped
  directory is recognised by its inode and its manifest's identity), so a job killed at any
  instant of step 2 finishes the publication when it is started again (:meth:`Job.start <smallpond.execution.job.Job.start>`
  rolls a journal it finds forward before anything else); a job killed before the journal exists
  published nothing, and its staged folders are removed by the next sink that publishes there once
  that job no longer runs (never while it runs: :mod:`~smallpond.execution.ops.sink_leftovers`). A journal whose
  staged files were removed since (by another job publishing into the same destination) can no
  longer be finished: it is abandoned (only the sinks already swapped in are finished, and those
  still intact count as published) and the other sinks run again (:mod:`~smallpond.execution.ops.sink_journal`). Replacing a previous result swaps the two
  directories with one atomic ``renameat2(RENAME_EXCHANGE)`` where Linux
  allows it (readers see the old result or the new one, never a missing or mixed folder), else by
  two renames. Until it is renamed aside, an exchanged previous result sits at the staged folder's
  name, whose owner record says so first: a job killed then leaves it to be discarded, never
  removed whole nor published (:mod:`~smallpond.execution.ops.sink_leftovers`). The record of what was published follows at once. The previous result's files are
  then removed, only those the record proves smallpond wrote (checked again as they go): anything
  else found there (a file a user dropped in or changed during the job) is moved back, or kept in
  ``{dest}.kept-*`` if the new result has a file by its name.

``SP_TEST_PUBLISH_STEP_DELAY`` (seconds), ``SP_TEST_PUBLISH_KILL_AT_STEP`` (a step index) and
``SP_TEST_PUBLISH_KILL_AT_POINT`` (``exchanged``: inside a swap, right after the exchange) let tests
kill a job in the middle of publishing; all are inert when unset.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from smallpond.common import logger
from smallpond.errors import ParameterError, PlanError
from smallpond.execution.ops import sink_record
from smallpond.execution.ops.sink_append import load_manifest
from smallpond.execution.ops.sink_journal import (
    PublicationError,
    Step,
    interrupted_publications,
    journal_path,
    outside_destinations,
    roll_forward,
)
from smallpond.execution.ops.sink_leftovers import aside_path, owner_record, remove_stale_siblings, write_owner
from smallpond.execution.ops.sink_lock import destinations_locked
from smallpond.execution.ops.sink_overlap import check_nested_results, nested_since_planned, published_by, recorded_result
from smallpond.execution.ops.sink_overlap import inside as _inside
from smallpond.execution.ops.sink_pending import mark, unmark
from smallpond.execution.ops.sink_sources import (
    dest_names,
    linked_from_cache,
    manifest_files,
    own_copies,
    source_files,
    sources_of,
    without_empty_parquet,
    write_rows,
)
from smallpond.execution.runtime import sink_records_dir
from smallpond.execution.task import Task
from smallpond.io.filesystem import (
    atomic_write_text,
    clone_or_copy,
    dump,
    link_or_copy,
    remove_path,
)
from smallpond.io.paths import unlistable
from smallpond.logical.base import created_at
from smallpond.logical.dataset import DataSet, FileSet, ParquetDataSet, PartitionedDataSet
from smallpond.logical.structural import unlistable_refusal

MANIFEST = sink_record.MANIFEST
_SHOWN = 5


# -- what is in a destination ---------------------------------------------------------------------


def _load_manifest(dest: str) -> Tuple[bool, Optional[List[str]]]:
    """Whether ``dest`` holds a ``.MANIFEST.txt``, and the paths it lists if smallpond wrote it.

    The manifest is the record of what smallpond wrote into a folder, and it vouches for itself
    by its form: every publication writes one absolute path per line (no blank line; an empty
    result writes an empty file). Anything else found under that name (free text, the relative
    paths a user listed for ``read_parquet``, bytes that are not UTF-8, a folder) is a user's
    file like any other: it lists nothing of ours, and no mode replaces it.
    """
    return load_manifest(os.path.join(dest, MANIFEST))


def read_manifest(dest: str) -> Optional[List[str]]:
    """The paths listed by ``dest/.MANIFEST.txt``, or None if there is none or smallpond did not
    write it (:func:`_load_manifest`)."""
    return _load_manifest(dest)[1]


def _same_dir(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or os.path.realpath(a) == os.path.realpath(b)


def _listed_here(dest: str) -> Optional[List[str]]:
    """The names of the files ``dest``'s manifest (if in smallpond's form) lists in ``dest`` itself."""
    listed = read_manifest(dest)
    if listed is None:
        return None
    return sorted({os.path.basename(p) for p in listed if _same_dir(os.path.dirname(p), dest)})


def our_names(dest: str) -> List[str]:
    """Names in ``dest`` that its manifest (if in smallpond's form) claims: itself and the files
    it lists there. Only a claim: :func:`ownership` says which of them smallpond really wrote."""
    names = _listed_here(dest)
    return [] if names is None else sorted(set(names) | {MANIFEST})


def ownership(dest: str, records_dir: Optional[str]) -> sink_record.Ownership:
    """Which files of ``dest``'s earlier result smallpond wrote, by the record of what it
    published there (:mod:`~smallpond.execution.ops.sink_record`)."""
    return sink_record.owned(records_dir, dest, _listed_here(dest) or [])


def foreign_entries(dest: str) -> List[str]:
    """Names in ``dest`` that no manifest in smallpond's form lists (a missing destination has
    none); a ``.MANIFEST.txt`` that is not in smallpond's form is among them."""
    try:
        entries = os.listdir(dest)
    except (FileNotFoundError, NotADirectoryError):
        return []
    ours = set(our_names(dest))
    return sorted(e for e in entries if e not in ours)


def _show(names: Sequence[str], where: str) -> str:
    more = f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return f"{len(names)} file(s) in {where}: {', '.join(repr(n) for n in names[:_SHOWN])}{more}"


def _also_unlisted(foreign: Sequence[str], named: str) -> str:
    """The clause a refusal naming ``named`` adds for the folder's other unlisted entries."""
    rest = [n for n in foreign if n != named]
    return f"; it also holds {_show(rest, 'it')} that no smallpond result lists" if rest else ""


def _nonempty(dest: str) -> bool:
    try:
        return bool(os.listdir(dest))
    except (FileNotFoundError, NotADirectoryError):
        return False


def check_destination(node, committed: bool, job_root: Optional[str] = None, records_dir: Optional[str] = None) -> str:
    """Decide at plan time what a sink does with its destination: ``"write"`` or ``"skip"``.

    Raises :class:`PlanError` (naming the node, its call site and the files) when the mode forbids
    writing there. Every type of sink gets the same rules; a manifest-only sink writes only
    ``.MANIFEST.txt``, but that file may be a user's. ``committed``: this very sink already
    published in this job (a resume), so the destination holds its own result and nothing needs
    deciding. ``job_root``: the job's folder; a destination inside it (a named output) holds only
    what this job wrote, such as the task folders a named output's manifest lists.
    ``records_dir``: where the data root keeps what publications wrote (:mod:`~smallpond.execution.ops.sink_record`);
    an overwrite removes only what that record proves smallpond wrote; and no destination is
    inside or around a folder holding a result recorded there (:func:`~smallpond.execution.ops.sink_overlap.check_nested_results`).
    """
    if committed or not records_dir or (job_root and in_job_folder(node.output_path, job_root)):
        return _decide(node, committed, job_root, records_dir)
    # read while no other job publishes there: half way, its files are in and its manifest not yet
    # (unlisted files), or its manifest is in and its record not yet (a manifest not vouched for)
    with contextlib.ExitStack() as locked:
        try:
            locked.enter_context(destinations_locked([node.output_path], records_dir, job_root))
        except ParameterError as e:  # this user's folder under the data root cannot be used
            raise PlanError(node._msg(str(e))) from None
        decision = _decide(node, committed, job_root, records_dir)
    if decision == "write":
        check_nested_results(node, records_dir, job_root)
    return decision


def _decide(node, committed: bool, job_root: Optional[str], records_dir: Optional[str]) -> str:
    dest = node.output_path
    if committed:
        return "write"
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise PlanError(node._msg(f"output path {dest} exists and is not a directory"))
    mode = node.mode
    if mode == "ignore":
        return "skip" if _nonempty(dest) else "write"
    if mode in ("error", "errorifexists"):
        if _nonempty(dest):
            raise PlanError(
                node._msg(
                    f"output path {dest} already exists and is not empty (mode={mode!r}); remove it or use mode='overwrite'"
                )
            )
        return "write"
    if job_root and in_job_folder(dest, job_root):
        return "write"
    foreign = foreign_entries(dest)
    if MANIFEST in foreign:  # overwrite and append both replace .MANIFEST.txt
        also = _also_unlisted(foreign, MANIFEST)
        raise PlanError(
            node._msg(
                f"refusing to write into {dest}: {os.path.join(dest, MANIFEST)} was not written by smallpond (a smallpond "
                f"manifest lists one absolute path per line), and mode={mode!r} would replace it{also}. "
                "Move or rename that file, or choose another folder"
            )
        )
    if records_dir:
        try:
            sink_record.key(records_dir)  # made now: a key that is not private is refused before anything runs
        except ParameterError as e:
            raise PlanError(node._msg(str(e))) from None
    _check_owned(node, dest, records_dir, job_root)
    if mode == "overwrite" and foreign:
        _refuse_nested_result(node, dest, foreign, records_dir)
        # a manifest-only sink would leave them in place, but beside a manifest that does not list
        # them: the folder would no longer be one result, and the next overwrite would refuse it
        why = (
            "mode='overwrite' replaces only an earlier smallpond result"
            if node.type == "manifest"
            else "overwriting would lose them"
        )
        raise PlanError(
            node._msg(
                f"refusing to write into {dest}: it holds {_show(foreign, 'it')} that no earlier smallpond result "
                f"(.MANIFEST.txt) lists, and {why}. Remove them, choose an empty folder, "
                "or use mode='append' to add files beside them"
            )
        )
    return "write"


def _refuse_nested_result(node, dest: str, foreign: List[str], records_dir: Optional[str]) -> None:
    """Refuse an overwrite of ``dest`` that holds, among the entries no manifest lists, a folder
    with a smallpond result published earlier, naming it, the job that published it and its record
    (a user's folder is refused by the general message)."""
    for name in foreign if records_dir else []:
        inner = os.path.join(dest, name)
        record = recorded_result(inner, records_dir) if os.path.isdir(inner) and not os.path.islink(inner) else None
        if record is None:
            continue
        also = _also_unlisted(foreign, name)
        raise PlanError(
            node._msg(
                f"refusing to write into {dest}: {inner} in it holds a smallpond result published earlier "
                f"{published_by(inner, records_dir)} (its record: {record}) that the result in {dest} does not list, "
                f"and overwriting would lose it{also}. "
                f"Move that result out of {dest}, or choose another folder"
            )
        )


def _check_owned(node, dest: str, records_dir: Optional[str], job_root: Optional[str] = None) -> None:
    """Refuse an overwrite of an earlier result that smallpond cannot prove it wrote, in whole or
    in part, and an append into one whose manifest it cannot prove it wrote (an append rewrites
    that manifest, keeping its lines)."""
    if read_manifest(dest) is None:
        return  # no earlier result (a manifest not in smallpond's form was refused already)
    own = ownership(dest, records_dir)
    record = sink_record.record_path(records_dir, dest) if records_dir else "the data root"
    what = f"; it lists {_show(own.unproven, 'it')}" if own.unproven else ""
    if not own.recorded:
        if own.record is not None:
            why = (
                "the manifest was replaced or modified since smallpond wrote it, or a job with another data root "
                f"published there since; the record is {record}"
            )
        elif own.problem:
            why = f"{own.problem}, so it counts as no record"
        else:
            why = (
                f"there is no record of it under {records_dir}: an earlier result written by another user, by an "
                "older smallpond or by a job with another data root, or a manifest written by hand"
            )
        does = (
            "mode='overwrite' removes only files smallpond wrote"
            if node.mode == "overwrite"
            else f"mode='append' rewrites that {MANIFEST} (keeping its lines), and a manifest smallpond did not "
            "write is a user's file"
        )
        pending = interrupted_publications(os.path.dirname(job_root), exclude=job_root) if job_root else []
        first = (
            f" First: the job(s) {', '.join(pending[:_SHOWN])}{' and more' if len(pending) > _SHOWN else ''} were "
            "interrupted while publishing (a journal is still there); if one of them published into this folder, its manifest is there without its record yet: rerun "
            "that job (same job id and data root), which finishes its publication and records it, then run this "
            "one again. Otherwise, if"
            if pending
            else ""
        )
        raise PlanError(
            node._msg(
                f"refusing to write into {dest}: smallpond cannot tell whether its {MANIFEST} and the files it lists "
                f"are the ones smallpond wrote ({why}){what}, and {does}.{first or ' If'} that earlier result may go, remove it "
                "(the manifest and its files) by hand once and run again; or choose another folder"
            )
        )
    if own.unproven and node.mode == "overwrite":
        raise PlanError(
            node._msg(
                f"refusing to write into {dest}: {_show(own.unproven, 'it')} that its {MANIFEST} lists are not "
                "the files smallpond wrote there (replaced or modified since: their size, modification time, inode "
                f"or device differ from the record {record}), and mode='overwrite' would remove them. Move them "
                "away (or remove them if they may go), choose another folder, or use mode='append' to add files "
                "beside them"
            )
        )


def in_job_folder(path: str, job_root: str) -> bool:
    """Whether ``path`` is inside the job's folder, whose files are all this job's (named outputs, ``FinalResults``)."""
    return _inside(os.path.realpath(path), os.path.realpath(job_root))


# -- phase 1: prepare --------------------------------------------------------------------------------


def staging_path(runtime_ctx, task: Task) -> str:
    """Where sink ``task`` prepares its result: beside the destination, named after job and task."""
    return f"{task.node.output_path.rstrip(os.sep)}.staging-{runtime_ctx.job_id.hex[:8]}-{int(task.id)}"


def published_place(runtime_ctx, path: str) -> str:
    """Where ``path``, a file another sink of this job staged, will be once published (the
    publication renames it into that sink's destination, after every task ran); any other path
    as it is. A manifest lists files where they will be: a sink's staged files are gone by then."""
    folder, name = os.path.split(path)
    dest, sep, rest = folder.rpartition(f".staging-{runtime_ctx.job_id.hex[:8]}-")
    return os.path.join(dest, name) if sep and dest and rest.isdigit() else path


class DataSinkTask(Task):
    """Phase 1 of a publication: stage the sink's files beside its destination (see module docstring)."""

    writes_output = False
    #: complete only once published: its commit record is written by the publication
    commits_on_publication = True

    def __init__(self, node, task_id, partition_infos, input_keys, skip: bool = False):
        super().__init__(node, task_id, partition_infos, input_keys)
        self.skip = skip

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        output_path = node.output_path
        if self.skip:  # mode="ignore" and the destination has content: leave it as it is
            listed = read_manifest(output_path)
            if listed is None:
                listed = sorted(os.path.join(output_path, n) for n in os.listdir(output_path) if not n.startswith("."))
            return _as_dataset(listed)
        files = (
            manifest_files(inputs, created_at(type(node).__name__, node.location))
            if node.type == "manifest"
            else source_files(inputs)
        )
        if runtime_ctx.remove_empty_parquet:
            files = [f for f, _ in without_empty_parquet([(f, None) for f in files])]
        staging = staging_path(runtime_ctx, self)
        # leftovers of jobs that no longer run (or of this job) go; another running job's stay
        remove_stale_siblings(output_path, job_root=runtime_ctx.job_root)
        write_owner(staging, owner_record(runtime_ctx.job_root))  # before the folder, never inside it
        os.makedirs(staging)
        if node.type == "manifest":
            bad = next((f for f in files if unlistable(f)), None)
            if bad is not None:  # a file that appeared after the plan check (check_listable)
                raise ParameterError(node._msg(unlistable_refusal(node, bad)))
            # a file the job took from the task cache is the entry's inode, and maybe another job's
            # result: the manifest lists it once the job's output holds a copy of its own instead
            copied = own_copies(files, runtime_ctx.job_root)
            if copied:
                logger.info("{}: copied {} file(s) reused from the task cache rather than listing them", node.label, copied)
            files = [published_place(runtime_ctx, f) for f in files]
            atomic_write_text(os.path.join(staging, MANIFEST), "".join(f + "\n" for f in files))
            self.inject_fault()
            return _as_dataset(files)
        token = uuid.uuid4().hex[:8] if node.mode == "append" else None
        sources = sources_of(inputs)
        if runtime_ctx.remove_empty_parquet:
            sources = without_empty_parquet(sources)
        staged, reused, memo = [], 0, {}
        for (src, spans), name in zip(sources, dest_names([p for p, _ in sources], token)):
            dst = os.path.join(staging, name)
            if spans is not None:
                write_rows(src, spans, dst)  # some rows of a file: only those are published
            elif node.type != "copy" and linked_from_cache(src, runtime_ctx.job_root, memo):
                clone_or_copy(src, dst)  # another job's result may be that very inode
                reused += 1
            elif node.type == "link_or_copy" and not _inside(os.path.abspath(src), os.path.abspath(runtime_ctx.job_root)):
                # a user's input file published as is (write_parquet straight after read_parquet):
                # a link would make the result and the input one file, and writing either in
                # place would change the other
                clone_or_copy(src, dst)
            else:
                # "link" falls back to a copy across filesystems rather than a symlink that would
                # dangle once the job's staging area is cleaned
                link_or_copy(src, dst, allow_link=node.type != "copy")
            staged.append(dst)
        if reused:
            logger.info("{}: copied {} file(s) reused from the task cache rather than linking them", node.label, reused)
        atomic_write_text(
            os.path.join(staging, MANIFEST), "".join(os.path.join(output_path, os.path.basename(f)) + "\n" for f in staged)
        )
        self.inject_fault()
        return _as_dataset(staged)


def _as_dataset(files: List[str]) -> DataSet:
    if all(f.endswith(".parquet") for f in files):
        return ParquetDataSet.from_files(files)
    return FileSet.from_files(files)


# -- phase 2: publish ---------------------------------------------------------------------------------


def plan_steps(runtime_ctx, task: Task) -> List[Step]:
    """The publication steps of one prepared sink (it may still change its staged manifest)."""
    node = task.node
    dest = node.output_path
    staging = staging_path(runtime_ctx, task)
    if not os.path.isdir(staging):
        raise PublicationError(f"{node.label}: its prepared result {staging} is missing; nothing was published")
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise PublicationError(f"{node.label}: output path {dest} is not a directory; nothing was published")
    present, old = _load_manifest(dest)
    if node.mode in ("error", "errorifexists") and _nonempty(dest):
        raise PublicationError(
            f"{node.label}: output path {dest} was filled while the job ran (mode={node.mode!r}); nothing was published"
        )
    if present and old is None and not in_job_folder(dest, runtime_ctx.job_root):
        # every publication replaces dest/.MANIFEST.txt, and this one is a user's (see check_destination)
        raise PublicationError(
            f"{node.label}: {os.path.join(dest, MANIFEST)} appeared while the job ran and smallpond did not write it; "
            "nothing was published"
        )
    new_manifest = os.path.join(staging, MANIFEST)
    if node.mode == "append" and old:
        with open(new_manifest) as f:
            new = f.read()
        kept = "".join(p + "\n" for p in old if os.path.lexists(p) or not _same_dir(os.path.dirname(p), dest))
        atomic_write_text(new_manifest, kept + new)
    ours, record = _owned_and_record(runtime_ctx, task, staging)
    if node.type == "manifest":
        # the manifest replaces the earlier result in place, and then that result's files go (only
        # those its manifest lists there: files it lists elsewhere, as a manifest-only result
        # does, are not ours to remove); on append they stay, listed again
        steps: List[Step] = [("mkdir", dest), _move(new_manifest, os.path.join(dest, MANIFEST))] + record
        if node.mode != "append":
            with open(new_manifest) as f:
                listed = {line.rstrip("\n") for line in f}
            steps += [
                ("remove_owned", os.path.join(dest, n), ident)
                for n, ident in sorted(ours.items())
                if n != MANIFEST and os.path.join(dest, n) not in listed
            ]
        return steps + [("remove", staging)]
    if node.mode == "append" and os.path.isdir(dest):
        steps = []
        for name in sorted(os.listdir(staging)):
            if name == MANIFEST:
                continue
            target = os.path.join(dest, name)
            if os.path.lexists(target):
                raise PublicationError(f"{node.label}: {target} exists; appending would overwrite it; nothing was published")
            steps.append(_move(os.path.join(staging, name), target))
        return steps + [_move(new_manifest, os.path.join(dest, MANIFEST))] + record + [("remove", staging)]
    parent = os.path.dirname(dest.rstrip(os.sep)) or "."
    aside = aside_path(dest)
    # the record follows the swap at once; until it is written the folder is "not recorded", so
    # a crash between the two leaves files that are refused, never removed (ops/sink_record.py)
    # the staged folder's inode and its manifest's identity tell a rerun whether the swap happened
    swap = ("swap", staging, dest, aside, os.stat(staging).st_ino, sink_record.identity(new_manifest))
    return [("mkdir", parent), swap] + record + [("discard", aside, dest, ours)]


def _move(src: str, dst: str) -> Step:
    """A step that moves a staged file into place; the file's identity tells a rerun whether it
    moved already or is gone (:func:`~smallpond.execution.ops.sink_journal.blocked_steps`)."""
    return ("move", src, dst, sink_record.identity(src))


def _owned_and_record(runtime_ctx, task: Task, staging: str) -> Tuple[Dict[str, Optional[list]], List[Step]]:
    """What of the earlier result in the sink's destination a publication may remove (name ->
    identity, None: by name), and the step that records what it publishes there.

    A destination in the job's folder holds only this job's files: names decide and nothing is
    recorded. Elsewhere an overwrite removes only what the record proves smallpond wrote; a file
    that changed since the plan's check (:func:`check_destination`) fails the publication, with
    nothing published.
    """
    node, dest = task.node, task.node.output_path
    if in_job_folder(dest, runtime_ctx.job_root):
        return {n: None for n in our_names(dest)}, []
    records_dir = sink_records_dir(runtime_ctx.data_root)
    own = ownership(dest, records_dir)
    listed = _listed_here(dest)
    if listed is not None and (not own.recorded or (own.unproven and node.mode != "append")):
        changed = ", ".join(repr(n) for n in ((own.unproven if node.mode != "append" else []) or [MANIFEST])[:_SHOWN])
        raise PublicationError(
            f"{node.label}: {changed} in {dest} changed while the job ran and smallpond can no longer tell it "
            "from a user's file; nothing was published"
        )
    staged = [] if node.type == "manifest" else [n for n in sorted(os.listdir(staging)) if n != MANIFEST]
    kept = {}
    if node.mode == "append" and own.recorded:
        # earlier files that stay, listed again: their recorded identities (a file a user changed
        # keeps the identity it had, so it stays refused as theirs)
        with open(os.path.join(staging, MANIFEST)) as f:
            again = {os.path.basename(p) for p in (line.rstrip("\n") for line in f) if _same_dir(os.path.dirname(p), dest)}
        kept = {n: ident for n, ident in own.record.files.items() if n in again and n not in staged}
    data = sink_record.record_of(records_dir, dest, staging, staged, kept, job=os.path.abspath(runtime_ctx.job_root))
    step = [("record", sink_record.record_path(records_dir, dest), data)] if data is not None else []
    return own.owned, step


def publish(runtime_ctx, prepared: Sequence[Tuple[Task, dict]]) -> None:
    """Publish every prepared sink at once (phase 2), then write their commit records.

    ``prepared``: (sink task, its signed commit record as ``{"path": ..., "data": ...}``) pairs.
    """
    if not prepared:
        return
    # planned and carried out while no other job publishes into these destinations (ops/sink_lock.py)
    dests = [task.node.output_path for task, _ in prepared if not task.skip]
    records_dir = sink_records_dir(runtime_ctx.data_root)
    with destinations_locked(dests, records_dir, runtime_ctx.job_root):
        for task, _ in prepared:  # checked when planned; another job may have published above or inside it since
            dest = task.node.output_path
            if not task.skip and not in_job_folder(dest, runtime_ctx.job_root):
                nested = nested_since_planned(dest, records_dir, runtime_ctx.job_root)
                if nested is not None:
                    raise PublicationError(f"{task.node.label}: {nested}; nothing was published")
        journal = journal_of(runtime_ctx, prepared)
        # until its record is written, a result moved in is seen by no other job's nesting check: this
        # job's mark says it is publishing there (ops/sink_pending.py), from before the journal exists
        outside = outside_destinations(runtime_ctx, journal["destinations"])
        if outside:
            mark(records_dir, runtime_ctx.job_root, outside, fsync=bool(journal["sync"]))
        else:  # an earlier publication's mark, left by a kill after its journal went, must not count again
            unmark(records_dir, runtime_ctx.job_root)
        # durable before any step only where a power loss could strand a user's files (module docstring)
        dump(journal, journal_path(runtime_ctx), secret=runtime_ctx.secret, fsync=bool(journal["sync"]))
        if roll_forward(runtime_ctx, journal) is not True:  # a staged folder went since the steps were planned
            into = ", ".join(journal["destinations"])
            raise PublicationError(f"cannot publish into {into}: a prepared result was removed; nothing was published")


def journal_of(runtime_ctx, prepared: Sequence[Tuple[Task, dict]]) -> dict:
    """The publication journal of ``prepared`` (as for :func:`publish`): every sink's steps, then
    the commit records; where each sink's steps are and its commit record; the folders to fsync
    (none where no destination exists outside the job's folder) and the destinations."""
    dests: Dict[str, Task] = {}
    for task, _ in prepared:
        dest = os.path.realpath(task.node.output_path)
        if dest in dests and not task.skip:
            raise PublicationError(f"{task.node.label} and {dests[dest].node.label} both publish into {task.node.output_path}")
        dests[dest] = task
    steps: List[Step] = []
    sinks = []  # each sink's steps (from, to) and its commit record: an abandoned journal keeps those of sinks it finished
    sync = set()
    existing = False  # a destination that exists: the steps move files that may not be ours
    job_root = os.path.realpath(runtime_ctx.job_root)
    for task, rec in prepared:
        if task.skip:
            continue
        # a destination in the job's own folder (a named output, FinalResults) holds only what
        # this job wrote, whatever it holds: like a new one, it needs no fsync
        existing = existing or (os.path.lexists(task.node.output_path) and not in_job_folder(task.node.output_path, job_root))
        first = len(steps)
        # an append's own manifest lines, read before plan_steps puts the destination's in front
        ours = read_manifest(staging_path(runtime_ctx, task)) if task.node.mode == "append" else None
        steps.extend(plan_steps(runtime_ctx, task))
        sinks.append({"steps": (first, len(steps)), "record": rec["path"], "append": ours})
        sync.add(os.path.dirname(task.node.output_path.rstrip(os.sep)) or ".")
        sync.add(task.node.output_path)
        sync.update(os.path.dirname(s[1]) for s in steps if s[0] == "record")
    steps.extend(("write", rec["path"], rec["data"]) for _, rec in prepared)
    dests = sorted(t.node.output_path for t, _ in prepared if not t.skip)
    return {"steps": steps, "sync": sorted(sync) if existing else [], "destinations": dests, "sinks": sinks}


#: how a sink's commit record is named: a task's key is "{its class}-{its id}" (Task.__init__)
SINK_RECORD_PREFIX = f"{DataSinkTask.__name__}-"


def park_publication_records(runtime_ctx, names: Sequence[str]) -> int:
    """Move commit records out of ``staging/`` (which a finished job may remove) into
    ``config/published/``; :func:`restore_publication_records` brings them back when the job
    starts again. ``names``: the record files to move (the clean-up's choice, see
    :func:`~smallpond.execution.retention.retained`). Returns how many were moved.

    A sink is complete if and only if its record exists. Without it, a rerun of a session that
    finished (after a crash once its shutdown had removed the intermediates, as the README
    advises) would be a new job and publish its sinks again: ``mode="append"`` would add the rows
    twice. With it, the rerun finds those sinks published, as a Driver job rerun with the same
    ``--job_id`` does. A sink of a changed plan has another fingerprint and runs. The clean-up
    (:mod:`~smallpond.execution.retention`) also parks the records of the tasks whose files a
    published result lists, so that a rerun resumes them rather than replacing those files.
    Each record is moved by a rename, so a crash leaves it in one of the two places.
    """
    src = runtime_ctx.completed_task_dir
    if not names:
        return 0
    dst = runtime_ctx.published_records_dir
    os.makedirs(dst, mode=0o700, exist_ok=True)
    moved = 0
    for name in names:
        try:
            os.replace(os.path.join(src, name), os.path.join(dst, name))
            moved += 1
        except FileNotFoundError:
            pass
    return moved


def restore_publication_records(runtime_ctx) -> None:
    """Put the records :func:`park_publication_records` kept back among the commit records (a
    record found in both places is the later one in ``staging/``)."""
    src = runtime_ctx.published_records_dir
    try:
        names = os.listdir(src)
    except FileNotFoundError:
        return
    dst = runtime_ctx.completed_task_dir
    os.makedirs(dst, exist_ok=True)
    for name in names:
        if os.path.lexists(os.path.join(dst, name)):
            remove_path(os.path.join(src, name))
        else:
            os.rename(os.path.join(src, name), os.path.join(dst, name))


def staged_to_final(runtime_ctx, task: Task, ds: DataSet) -> DataSet:
    """The dataset of a sink's files at their published place (its staged files are renamed there)."""
    if task.skip or task.node.type == "manifest":
        return ds
    staging = staging_path(runtime_ctx, task) + os.sep
    paths = ds.resolved_paths
    if not all(p.startswith(staging) for p in paths):
        return ds
    final = type(ds).from_files([os.path.join(task.node.output_path, p[len(staging) :]) for p in paths])
    if ds.reads_by_name:  # (its commit record holds it: a resumed reader of the sink reads them by name too)
        final.mark_read_by_name()
    return final


def warn_results_without_columns(tasks: Dict[str, Task], results: Dict[str, DataSet]) -> None:
    """Say when a published result (a named output, FinalResults) of a finished job is empty and
    no partition could tell its columns: its folder gets no Parquet file, not one with a made-up
    column, and a reader finds no schema there. ``tasks`` and ``results``: the job's, by key."""
    from smallpond.execution.ops.sql import columns_unknown
    from smallpond.execution.ops.structural import RootTask

    same_inputs: Dict[tuple, List[str]] = {}
    for task in tasks.values():
        if not isinstance(task, DataSinkTask) or task.skip or not task.input_keys:
            continue
        if all(isinstance(tasks.get(k), RootTask) for k in task.input_keys):
            continue  # FinalResults over a root of the user's sinks: empty by design
        inputs = [results.get(k) for k in task.input_keys]
        if any(d is None for d in inputs):
            continue
        datasets = [d for ds in inputs for d in (ds.datasets if isinstance(ds, PartitionedDataSet) else [ds])]
        if datasets and all(columns_unknown(d) for d in datasets):
            same_inputs.setdefault(tuple(sorted(task.input_keys)), []).append(task.node.output_path)
    for paths in same_inputs.values():
        logger.warning(
            "the result in {} is empty and its columns are unknown: no partition wrote a file (a Python function "
            "upstream produced no rows and declares no output schema), so there is no Parquet file there. Pass "
            "output_schema= (a pyarrow.Schema) to that node, or schema= to that DataFrame map/flat_map/map_batches, "
            "to get an empty file with its columns.",
            " and ".join(paths),
        )
