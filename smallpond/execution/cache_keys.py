"""Task-cache keys: what a task will compute, from what it actually reads.

A task's plan fingerprint (resume within a job) digests the fingerprints of its input *tasks*,
so it changes when any file of a whole source changes, except in a split by files of sources of
files, whose partitions the plan fixes and fingerprints by their own files
(:mod:`~smallpond.execution.plan_splits`). The cache key is finer: it is computed by the scheduler
when the task is about to run, from the datasets the task will read:

* the plan components (task class, node parameters and code, partition, random seed; see
  ``Task.plan_components``), the engine's versions (:func:`engine_versions`) and the job's
  environment variables for its tasks, as keyed digests (:func:`env_components`);
* for each input dataset, its description (kind, columns, options, row ranges) and the identity
  of every file: an input file of the user by its path, size and modification time; a file
  written by a task of this job by that task's key and the file's path inside its output;
* or, for an input that is the whole output of a task of this job known by an identity (a
  cached task's key; for a pass-through task such as a shuffle's consumer, a digest of its plan
  and of its inputs' identities), that one identity (Merkle style; see
  ``JobCache._whole_identity``): a sort after a shuffle of P producers is keyed without
  looking at its P files.

So a partition task over files that did not change keeps its key when another file of the
source is rewritten, and a task downstream of a recomputed one changes key (its input's producer
did). The components are kept per task position in the cache's index, so a dry run can say why a
task will run: which file changed, which parameter, which upstream task (:func:`why_changed`).

:class:`JobCache` is the scheduler's side of the cache: keys, reuse, claims and the index.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import sys
import time
from itertools import repeat
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from smallpond.common import logger, some_of
from smallpond.execution.cache import LOCK_REFRESH_SECONDS, Claim, Entry, TaskCache, open_cache
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.task import Task
from smallpond.io.paths import file_identity, file_version
from smallpond.logical.dataset import DataSet, PartitionedDataSet
from smallpond.logical.dataset_composite import _InMemoryDataSet

# json.dumps with any option builds an encoder per call; these give the same text, built once
_SHAPE_JSON = json.JSONEncoder(default=str)
_SORTED_JSON = json.JSONEncoder(sort_keys=True)
_KEY_JSON = json.JSONEncoder(sort_keys=True, default=str)

_versions: Optional[str] = None
PRODUCED = "task:"
#: a task waiting for another job's entry says so again this often (seconds)
WAIT_WARNING_SECONDS = 60.0
#: a job alone on its cache takes no claims; it looks this often whether another job came
PRESENCE_CHECK_SECONDS = 0.2
#: how long a job that finds another one on the cache waits before its first claim: the time the
#: other job needs to notice it and claim the tasks it is running (its loop turns at least every 0.5 s)
PRESENCE_GRACE_SECONDS = 2.0


def engine_versions() -> str:
    """The versions that decide what a task writes: Python, DuckDB, pyarrow and smallpond (its
    release and a digest of its code, so a changed engine never serves results of the old one)."""
    global _versions
    if _versions is None:
        from smallpond.common import installed_version

        parts = [f"python={sys.version_info[0]}.{sys.version_info[1]}"]
        for dist in ("duckdb", "pyarrow", "smallpond"):
            parts.append(f"{dist}={installed_version(dist) or '?'}")
        parts.append(f"code={_package_digest()}")
        _versions = " ".join(parts)
    return _versions


def _package_digest() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the smallpond package
    h = hashlib.sha256()
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for n in sorted(names):
            if n.endswith(".py"):
                path = os.path.join(folder, n)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def external_identity(path: str) -> str:
    """What tells one version of a user's input file from another: :func:`~smallpond.io.paths.file_identity`
    (size, modification time, and the Parquet footer's digest or the inode change time: a rewrite
    that keeps the size and sets the time back is still seen), without the path (the label)."""
    ident = file_identity(path)
    return ident[len(path) + 1 :] if ident.startswith(path + ":") else ident


def input_components(
    ds: DataSet,
    identify: Callable[[str], Tuple[str, str]],
    whole: Optional[Tuple[str, str]] = None,
) -> Dict[str, Any]:
    """``{"desc": digest of the dataset's description, "files": {label: identity}, "files_digest":
    digest of the files}`` (the key and the index take the files through their digest).

    A file's label is its path for a user's file, ``task:{key}/{path inside the output}`` for a
    file a task of the job wrote (``identify`` decides); paths in the description are replaced by
    labels, so the same dataset over the same files has the same components in every job.

    ``whole``: ``(task key, identity)`` when the dataset is the output of a task of this job known
    as a whole (see ``JobCache._whole_identity``); its one label then stands for every file,
    and no file is looked at.
    """
    if whole is not None:
        files = {f"{PRODUCED}{whole[0]}": whole[1]}
        kind = type(ds).__name__
        desc = _whole_descs.get(kind)
        if desc is None:
            desc = _whole_descs[kind] = hashlib.sha256(json.dumps(["whole", kind]).encode()).hexdigest()
        # the key takes the identity alone: the label names the task (for a dry run's reasons),
        # and task numbers shift when a session computes something else first
        return {"desc": desc, "files": files, "files_digest": _files_digest({PRODUCED: whole[1]})}
    files: Dict[str, str] = {}

    def label(path: str) -> str:
        lab, ident = identify(path)
        files[lab] = ident
        return lab

    def walk(d: DataSet) -> list:
        if isinstance(d, PartitionedDataSet):
            # partition by partition: ``datasets`` would turn a compact one into P x C objects for good
            return ["partitioned", [walk(d[i]) for i in range(len(d))]]
        if isinstance(d, _InMemoryDataSet):
            return [type(d).__name__, d.fingerprint()]
        paths = list(d.resolved_paths)
        labels = {p: label(p) for p in paths}
        schema_path = getattr(d, "_schema_path", None)
        if schema_path:
            labels[schema_path] = label(schema_path)
        desc = d._describe()
        if any(p != lab for p, lab in labels.items()):  # a user's files are labelled by their paths
            desc = _relabel(desc, labels)
        schema = None if d.schema is None else str(d.schema)
        return [type(d).__name__, [labels[p] for p in paths], repr(desc), schema, labels.get(schema_path)]

    shape = walk(ds)
    return {
        "desc": hashlib.sha256(_SHAPE_JSON.encode(shape).encode()).hexdigest(),
        "files": files,
        "files_digest": _files_digest(files),
    }


_whole_descs: Dict[str, str] = {}
#: a pass-through task of at least this many inputs has their identities' digest kept (by those
#: identities) for the next task reading the same ones: the consumers of a shuffle of P producers
#: each read all P, and digesting P identities per consumer was ~5 us of its ~10 us
_SHARED_INPUTS = 8


def _files_digest(files: Dict[str, str]) -> str:
    if len(files) <= 4:  # the partitions of a user's few files share them: each set is digested once
        return _few_files_digest(tuple(files.items()))
    return _sorted_digest(files)


@functools.lru_cache(maxsize=4096)
def _few_files_digest(items: Tuple[Tuple[str, str], ...]) -> str:
    return _sorted_digest(dict(items))


def _sorted_digest(files: Dict[str, str]) -> str:
    return hashlib.sha256(_SORTED_JSON.encode(files).encode()).hexdigest()


def _relabel(value, labels: Dict[str, str]):
    if isinstance(value, str):
        return labels.get(value, value)
    if isinstance(value, (list, tuple)):
        return type(value)(_relabel(v, labels) for v in value)
    return value


def cache_key(components: Dict[str, Any]) -> str:
    """The digest of a task's components; each input's files enter through their digest."""
    inputs = [
        {"desc": i.get("desc"), "files": i.get("files_digest") or _files_digest(i.get("files") or {})}
        for i in components.get("inputs", [])
    ]
    keyed = {k: v for k, v in components.items() if k != "inputs"}
    keyed["inputs"] = inputs
    return hashlib.sha256(_KEY_JSON.encode(keyed).encode()).hexdigest()


def node_position(task: Task) -> str:
    """Where a task's node sits in a plan, stable across builds of the same script: the task class,
    the node (class, id, DataFrame operation, output name) and the script file that created it.
    The index keeps, per node position, the last build of each partition."""
    script = task.location.rsplit(":", 1)[0] if task.location else ""
    what = (type(task).__qualname__, task.node_label, script)
    position = _positions.get(what)
    if position is None:
        position = _positions[what] = hashlib.sha256("\x00".join(what).encode()).hexdigest()
    return position


_positions: Dict[Tuple[str, str, str], str] = {}


def partition_of(task: Task) -> str:
    return str(task.plan_components.get("partition", ""))


#: an input of more files than this is kept in the cache's index as digests and counts, not file by
#: file (its user's files still one by one, up to this many): a sort after a shuffle reads a file of
#: every producer, and P x C identities made the index of that node 410 MB at 100,000 tasks
INDEX_FILES_LIMIT = 32


def index_input(inp: Dict[str, Any]) -> Dict[str, Any]:
    """An input's components as the index keeps them (see :data:`INDEX_FILES_LIMIT`): its
    description and files, or for many files their digest and counts (and its user's files)."""
    if "count" in inp:  # kept as a summary already
        return inp
    files = inp.get("files") or {}
    if len(files) <= INDEX_FILES_LIMIT:
        return {"desc": inp.get("desc"), "files": files}
    external = {lab: ident for lab, ident in files.items() if not lab.startswith(PRODUCED)}
    return {
        "desc": inp.get("desc"),
        "files_digest": inp.get("files_digest") or _files_digest(files),
        "count": len(files),
        "external": external if len(external) <= INDEX_FILES_LIMIT else None,
        "produced": len(files) - len(external),
    }


def env_components(env: Dict[str, str], secret: bytes) -> Optional[Dict[str, str]]:
    """The job's environment variables for its tasks (``RuntimeContext.env_overrides``, the
    Driver's ``--env_variables``) as a key component: a task's output may depend on them, so a
    task of a job run with other values is not served the result of this one. Each value enters
    as a digest keyed with the cache's secret (the index keeps components, and a variable may
    hold a password). None without variables: the keys of such jobs are what they were before
    variables were keyed. The environment the workers inherit is not keyed (``PATH``, ``HOME``,
    ...), as Bazel keys only ``--action_env``."""
    if not env:
        return None
    return {
        str(k): hmac.new(secret, str(v).encode("utf-8", "surrogatepass"), "sha256").hexdigest()[:32]
        for k, v in sorted(env.items())
    }


def why_changed(
    prev: Optional[Dict[str, Any]],
    cur: Dict[str, Any],
    limit: int = 4,
    origin: Optional[Callable[[str], List[str]]] = None,
) -> List[str]:
    """Why a task's key differs from the last build at its position (most telling first).

    ``origin``: the tasks to name for an input whose producing task (by key) changed: a step run
    on the scheduler (a shuffle's gathering of a partition) names the recomputed tasks behind it.
    """
    if prev is None:
        return ["never computed (no earlier build of this task in the cache)"]
    reasons: List[str] = []
    p_plan, c_plan = prev.get("plan", {}), cur.get("plan", {})
    if p_plan.get("params") != c_plan.get("params"):
        reasons.append("the node's parameters or code changed")
    if p_plan.get("partition") != c_plan.get("partition"):
        reasons.append("its partition changed")
    if p_plan.get("seed") != c_plan.get("seed"):
        reasons.append(f"the random seed changed ({p_plan.get('seed')} -> {c_plan.get('seed')})")
    for option in sorted((set(p_plan) | set(c_plan)) - {"params", "partition", "seed"}):
        if p_plan.get(option) != c_plan.get(option):
            reasons.append(f"its {option} changed ({p_plan.get(option)} -> {c_plan.get(option)})")
    if prev.get("engine") != cur.get("engine"):
        reasons.append(f"the engine changed ({_diff_words(prev.get('engine', ''), cur.get('engine', ''))})")
    p_env, c_env = prev.get("env") or {}, cur.get("env") or {}
    if p_env != c_env:
        names = sorted(k for k in set(p_env) | set(c_env) if p_env.get(k) != c_env.get(k))
        shown = some_of(names, 5)
        reasons.append(f"the job's environment variable{'s' if len(names) > 1 else ''} {shown} changed")
    p_in, c_in = prev.get("inputs", []), cur.get("inputs", [])
    if len(p_in) != len(c_in):
        reasons.append(f"it has {len(c_in)} input(s), the last build had {len(p_in)}")
    for i, (a, b) in enumerate(zip(p_in, c_in)):
        reasons.extend(_input_changes(i, a, b, origin))
    if not reasons and prev.get("key") == cur.get("key"):
        reasons.append("its earlier result is no longer in the cache (removed, or it failed verification)")
    elif not reasons:
        reasons.append("its inputs' description changed")
    if len(reasons) > limit:
        reasons = reasons[:limit] + [f"(+{len(reasons) - limit} more)"]
    return reasons


def _input_changes(
    i: int, prev: Dict[str, Any], cur: Dict[str, Any], origin: Optional[Callable[[str], List[str]]] = None
) -> List[str]:
    if "count" in prev or "count" in cur or len(cur.get("files") or {}) > INDEX_FILES_LIMIT:
        return _summary_changes(i, index_input(prev), index_input(cur))
    out: List[str] = []
    pf, cf = prev.get("files", {}), cur.get("files", {})
    changed_tasks: Dict[str, None] = {}
    external: List[str] = []
    for lab in sorted(set(pf) | set(cf)):
        a, b = pf.get(lab), cf.get(lab)
        if a == b:
            continue
        if lab.startswith(PRODUCED):
            changed_tasks.setdefault(lab[len(PRODUCED) :].split("/", 1)[0], None)
        elif a is None:
            external.append(f"input file {lab} is new")
        elif b is None:  # the file may be there still: the task's input list changed
            external.append(f"input file {lab} is no longer an input")
        else:
            external.append(f"input file {lab} changed ({_describe_identity_change(a, b)})")
    out.extend(external[:3])
    if len(external) > 3:
        out.append(f"(+{len(external) - 3} more changed input files)")
    names = list(dict.fromkeys(n for k in changed_tasks for n in (origin(k) if origin else [k])))
    if names:
        shown = some_of(names)
        out.append(f"its input from {shown} was recomputed")
    if not out and prev.get("desc") != cur.get("desc"):
        out.append(f"input {i}'s description changed (columns, options or row ranges)")
    return out


def _summary_changes(i: int, prev: Dict[str, Any], cur: Dict[str, Any]) -> List[str]:
    """Like :func:`_input_changes`, for inputs of many files the index keeps as digests."""
    if prev.get("files_digest") == cur.get("files_digest"):
        return (
            [f"input {i}'s description changed (columns, options or row ranges)"] if prev.get("desc") != cur.get("desc") else []
        )
    out: List[str] = []
    pe, ce = prev.get("external"), cur.get("external")
    if pe is not None and ce is not None and pe != ce:
        out.extend(_input_changes(i, {"files": pe}, {"files": ce}))
    elif pe is not None and pe == ce and (prev.get("produced") or cur.get("produced")):
        # the user's files are the same: an upstream task's output changed
        out.append(f"its input from upstream tasks ({cur.get('produced', 0)} files) was recomputed")
    return out or [f"its {cur.get('count', 0)} input files are not those of the last build"]


def _describe_identity_change(a: str, b: str) -> str:
    try:
        (sa, ma), (sb, mb) = a.split(":")[:2], b.split(":")[:2]
    except ValueError:
        return "its identity changed"
    if sa != sb:
        return f"{sa} -> {sb} bytes"
    if ma != mb:
        return "rewritten: same size, new modification time"
    return "rewritten: same size and modification time, new content (Parquet footer or inode change time)"


def _diff_words(a: str, b: str) -> str:
    wa, wb = set(a.split()), set(b.split())
    return ", ".join(sorted(wb - wa)) or b


class JobCache:
    """The scheduler's side of the task cache for one job (see the module docstring).

    The scheduler calls :meth:`prepare` when a task is ready to run, then :meth:`lookup` (reuse
    the entry with :meth:`reuse`), else :meth:`claim` before submitting it; :meth:`on_done` for
    every task whose output is known (run, resumed, reused); :meth:`release` when a task's fate is
    decided; :meth:`tick` on every loop round and :meth:`close` at the end.
    """

    def __init__(self, rt: RuntimeContext, cache: Optional[TaskCache] = None) -> None:
        self.rt = rt
        self.cache = cache or open_cache(rt.task_cache)
        self.keys: Dict[str, str] = {}  # task key -> cache key (or, if not cacheable, its identity)
        self.components: Dict[str, Dict[str, Any]] = {}
        self.produced: Dict[str, Tuple[str, str]] = {}  # output dir -> (task key, identity)
        # task key -> the identity of its output as a whole, "" if its files are identified one by
        # one (see _whole_identity)
        self.whole: Dict[str, str] = {}
        self._parents: Dict[str, None] = {}  # the folders holding output dirs (one per node)
        self.claimed: Dict[str, str] = {}  # task key -> cache key it holds a claim on
        self.unclaimed: Dict[str, str] = {}  # the same, for tasks run while this job was alone
        self.solo: Optional[bool] = None  # alone on the cache (None: not known before the first claim)
        self._presence_checked = 0.0
        self.bypass: Set[str] = set()  # task keys to recompute (DataFrame.recompute())
        self.bypass_nodes: Set[int] = set()  # node ids to recompute, planned or not yet
        self.waiting_on: Dict[str, Claim] = {}
        self._waiting_since: Dict[str, float] = {}
        self._warned_at: Dict[str, float] = {}
        self.looked_up: Dict[str, float] = {}  # task key -> when it was looked up since it became ready
        self._index: Dict[str, Dict[str, Any]] = {}  # node position -> partition -> build, to write
        self._index_read: Dict[str, Dict[str, Any]] = {}  # node position -> what the index holds
        self._last_refresh = time.time()
        self._job = str(rt.job_id)
        # tasks whose key is computed when a consumer asks for it: task key -> (task, inputs)
        self._deferred: Dict[str, Tuple[Task, List[DataSet]]] = {}
        # user's file -> (its stat, its identity): the many tasks reading one file read its footer once
        self._external: Dict[str, Tuple[Tuple[int, int, int, int], str]] = {}
        self._env = env_components(rt.env_overrides, self.cache.secret)
        # the digest of many inputs' identities, by those identities: a shuffle's consumers all
        # read the same producers (see _whole_identity)
        self._inputs_digests: Dict[Tuple[str, ...], str] = {}
        # task key -> cacheable(task), asked of every task several times a round (see _verdict)
        self._verdicts: Dict[str, bool] = {}

    def fork(self) -> "JobCache":
        """A copy for a dry run: it knows this job's outputs, and what it computes stays its own."""
        other = JobCache(self.rt, self.cache)
        other.produced = dict(self.produced)
        other.whole = dict(self.whole)
        other._parents = dict(self._parents)
        other.bypass = set(self.bypass)
        other.bypass_nodes = set(self.bypass_nodes)
        other._deferred = dict(self._deferred)
        return other

    # -- keys -------------------------------------------------------------------------------------
    @staticmethod
    def cacheable(task: Task) -> bool:
        """Tasks that write files of their own (not inline metadata tasks, not pass-through or
        publishing tasks), of nodes whose parameters could be fingerprinted."""
        if task.exec_on_scheduler or not task.writes_output:
            return False
        return JobCache._fingerprinted(task)

    @staticmethod
    def _fingerprinted(task: Task) -> bool:
        """Whether the planner could fingerprint the task's node (its parameters and code)."""
        return not str(task.plan_components.get("params", "unreusable:")).startswith("unreusable:")

    def _verdict(self, task: Task) -> bool:
        """:meth:`cacheable`, worked out once per task: the scheduler asks it of a task about ten
        times (a lookup, a claim and a preparation each round the task waits for room, its
        output's identity), ~3k instructions each; it depends only on the task's class and its
        node's fingerprint, fixed when the task is planned."""
        verdict = self._verdicts.get(task.key)
        if verdict is None:
            verdict = self._verdicts[task.key] = self.cacheable(task)
        return verdict

    def register(self, output_dir: str, task_key: str, identity: Optional[str]) -> None:
        """Files under ``output_dir`` were written by ``task_key``, known as ``identity`` (None:
        the task's key, computed when first asked for)."""
        self.produced[output_dir] = (task_key, identity)
        self._parents.setdefault(os.path.dirname(output_dir), None)

    def identify(self, path: str) -> Tuple[str, str]:
        """(label, identity) of a file: the task that wrote it and where in its output, or, for a
        user's file, its path and :func:`external_identity`. An output directory is a child of a
        node's output folder, so only those few folders are compared with the path (after the
        file's nearest folders: a task's files lie at most a couple of folders below its output
        directory, and a sort after a shuffle asks for a file of every producer)."""
        produced = self.produced
        head = path
        for _ in range(3):
            head = head.rpartition(os.sep)[0]
            hit = produced.get(head)
            if hit is not None:
                return self._produced_label(head, path, hit)
        for parent in self._parents:
            n = len(parent)
            if path.startswith(parent) and path[n : n + 1] == os.sep:
                cut = path.find(os.sep, n + 1)
                out_dir = path if cut < 0 else path[:cut]
                hit = produced.get(out_dir)
                if hit is not None:
                    return self._produced_label(out_dir, path, hit)
        return path, self._external_identity(path)

    def _produced_label(self, out_dir: str, path: str, hit: Tuple[str, Optional[str]]) -> Tuple[str, str]:
        """(label, identity) of ``path``, in the output directory ``out_dir`` that ``hit`` (its
        entry in ``produced``) describes."""
        task_key, identity = hit
        if identity is None:  # a task whose key was deferred: compute it now
            identity = self._key_of(task_key) or task_key
            self.produced[out_dir] = (task_key, identity)
        return f"{PRODUCED}{task_key}/{path[len(out_dir) + 1 :]}", identity

    def _external_identity(self, path: str) -> str:
        """:func:`external_identity`, read once per version of the file in this job: a file whose
        size, modification time, inode and inode change time (which no user call can set back)
        are those seen before is the version seen before."""
        try:
            st = os.stat(path)
        except OSError:
            return external_identity(path)
        seen = file_version(st)
        hit = self._external.get(path)
        if hit is not None and hit[0] == seen:
            return hit[1]
        ident = external_identity(path)
        self._external[path] = (seen, ident)
        return ident

    def components_of(self, task: Task, inputs: List[DataSet]) -> Dict[str, Any]:
        deps = task.input_keys if len(task.input_keys) == len(inputs) else [None] * len(inputs)
        comps = {
            "plan": dict(task.plan_components),
            "engine": engine_versions(),
            "inputs": [input_components(ds, self.identify, self._whole_input(d)) for d, ds in zip(deps, inputs)],
        }
        if self._env is not None:
            comps["env"] = self._env
        return comps

    def _whole_input(self, dep: Optional[str]) -> Optional[Tuple[str, str]]:
        identity = self.whole.get(dep)
        return (dep, identity) if identity else None

    def _whole_identity(self, task: Task, key: Optional[str]) -> str:
        """The identity of a done task's output as a whole (``key``: its key), or "" when its files
        must be identified one by one (Merkle style, as Bazel and Nix do: a task's output is what
        its key says).

        * A task whose output is cached: its key. Its consumers' keys then take one identity for
          its files, however many, instead of one per file (a sort after a shuffle of P
          producers read P files, labelled and digested one by one: ~200 us a task).
        * A pass-through task run here (a shuffle's consumer gathering its partition of every
          producer, a projection, a split): a digest of its plan components and of its inputs'
          identities, when every input has one; "" when any does not (a split of a user's
          files: those keep their identity file by file, so a partition over files that did not
          change keeps its key when another file of the source changes).
        * Any other task (a source, a sink, a node that cannot be fingerprinted): "".

        The choice depends only on the plan, never on timing, so a dry run, a resumed job and
        another job of the same script key every task the same way.
        """
        if not task.exec_on_scheduler:
            return key if key is not None and self._verdict(task) else ""
        if not task.input_keys or not self._fingerprinted(task):
            return ""
        identities = tuple(map(self.whole.get, task.input_keys))
        if not all(identities):
            return ""
        # (no identity holds a NUL, and JSON escapes one: the text reads back one way only)
        inputs = self._inputs_digests.get(identities)
        if inputs is None:
            inputs = hashlib.sha256("\0".join(identities).encode()).hexdigest()
            if len(identities) >= _SHARED_INPUTS:
                self._inputs_digests[identities] = inputs
        text = _KEY_JSON.encode(task.plan_components) + "\0" + inputs
        return "via:" + hashlib.sha256(text.encode()).hexdigest()

    def prepare(self, task: Task, inputs: List[DataSet]) -> Optional[str]:
        """Compute the task's key from its inputs (once) and give it to the task (for its worker).

        A task whose output is never cached (a sink, a node that cannot be fingerprinted) gets
        none: its key only names its files in the keys of its consumers, and is computed when the
        first of them asks (a sink of thousands of inputs has no consumer). Returns the key, or
        None for such a task.
        """
        task.cache_replace = self.bypassed(task)
        cacheable = self._verdict(task)
        key = self.keys.get(task.key)
        if key is None:
            if not cacheable:
                self._deferred[task.key] = (task, list(inputs))
                task.cache_key = None
                return None
            key = self._compute_key(task, inputs)
        task.cache_key = key if cacheable else None
        return key

    def _compute_key(self, task: Task, inputs: List[DataSet]) -> str:
        comps = self.components_of(task, inputs)
        key = cache_key(comps)
        self.keys[task.key] = key
        self.components[task.key] = comps
        return key

    def _key_of(self, task_key: str) -> Optional[str]:
        """The key of a task of this job, computing a deferred one (see :meth:`prepare`)."""
        key = self.keys.get(task_key)
        if key is None:
            deferred = self._deferred.pop(task_key, None)
            if deferred is not None:
                key = self._compute_key(*deferred)
        return key

    def bypassed(self, task: Task) -> bool:
        """True if the user asked to recompute the task (its cached output is not used)."""
        return task.key in self.bypass or task.node_id in self.bypass_nodes

    # -- reuse ------------------------------------------------------------------------------------
    def lookup(self, task: Task) -> Optional[Entry]:
        if not self._verdict(task) or self.bypassed(task):
            return None
        return self.cache.lookup(self.keys[task.key])

    def reuse(self, task: Task, entry: Entry, attempt: int) -> DataSet:
        """Link the entry into the job and commit it as the task's output (a normal signed commit
        record, so a resumed job finds it). Returns the task's output dataset."""
        from smallpond.execution.commit import write_commit

        ds, final = self.cache.link_into(entry, task.output_base(self.rt), attempt)
        reused = {"key": entry.key, "job": entry.job, "task": entry.task}
        winner = write_commit(self.rt, task, ds, attempt, 0.0, output_dir=final, cache_key=entry.key, reused_from=reused)
        if winner is not None:  # an attempt of this job committed first: keep its output
            from smallpond.io.filesystem import remove_path

            remove_path(final)
            return winner["dataset"]
        return ds

    # -- claims -----------------------------------------------------------------------------------
    def claim(self, task: Task) -> Optional[Claim]:
        """Claim the task's key before it runs. None: this job may run it; else the live claim
        of the job computing it now (wait for its entry)."""
        if not self._verdict(task) or task.key in self.claimed or task.key in self.unclaimed:
            return None
        key = self.keys[task.key]
        if self._alone():
            # nobody to keep out: a claim costs a file per task; if another job comes, the
            # tasks running then are claimed (see tick) before that job claims anything
            self.unclaimed[task.key] = key
            return None
        holder = self.cache.claim(key, str(self.rt.job_id))
        if holder is None:
            self.claimed[task.key] = key
            self.waiting_on.pop(task.key, None)
            return None
        now = time.time()
        if task.key not in self.waiting_on:
            logger.info("task cache: {} waits for {}, which is computing the same task", task.key, holder.describe())
            self._waiting_since[task.key] = self._warned_at[task.key] = now
        elif now - self._warned_at[task.key] >= WAIT_WARNING_SECONDS:  # never wait silently
            self._warned_at[task.key] = now
            logger.warning(
                "task cache: {} has waited {:.0f} s for {}, which is computing the same task (its claim: {})",
                task.key,
                now - self._waiting_since[task.key],
                holder.describe(),
                holder.path,
            )
        self.waiting_on[task.key] = holder
        return holder

    def _alone(self) -> bool:
        """Whether this job is the only one using the cache (asked at its first claim, then
        followed by :meth:`tick`; once another job came, claims are taken for good)."""
        if self.solo is None:
            job = str(self.rt.job_id)
            self.cache.announce(job)
            self._presence_checked = time.time()
            others = self.cache.other_jobs(job)
            self.solo = not others
            if others:
                logger.info(
                    "task cache: {} also use(s) {}; claiming tasks after {:.0f} s",
                    ", ".join(c.describe() for c in others[:3]),
                    self.cache.path,
                    PRESENCE_GRACE_SECONDS,
                )
                time.sleep(PRESENCE_GRACE_SECONDS)  # a job alone until now claims what it runs meanwhile
        return self.solo

    def _check_presence(self, now: float) -> None:
        self._presence_checked = now
        job = str(self.rt.job_id)
        others = self.cache.other_jobs(job)
        if not others:
            return
        self.solo = False
        for task_key, key in list(self.unclaimed.items()):
            holder = self.cache.claim(key, job)
            if holder is None:
                self.claimed[task_key] = key
            else:  # it claimed first after all: both compute the task, with the same result
                logger.info("task cache: {} runs here and in {} at once", task_key, holder.describe())
        self.unclaimed.clear()

    def release(self, task_key: str) -> None:
        self.unclaimed.pop(task_key, None)
        key = self.claimed.pop(task_key, None)
        if key is not None:
            self.cache.release(key)

    # -- outputs ----------------------------------------------------------------------------------
    def on_done(self, task: Task, dataset: DataSet, record: Optional[dict] = None, ran: bool = True) -> None:
        """Note a task's output: its files are known by the task's identity from now on, and
        (for a task run or reused here) its components become its position's last build."""
        if task.exec_on_scheduler:
            self.whole[task.key] = self._whole_identity(task, None)
            return
        key = self.keys.get(task.key) or (record or {}).get("cache_key")
        if key is None:
            key = None if task.key in self._deferred else f"fp:{task.fingerprint}"
        self.whole[task.key] = self._whole_identity(task, key)
        for out_dir in _output_dirs(_paths(dataset), task.output_base(self.rt) + "."):
            self.register(out_dir, task.key, key)
        # the components are kept until the task is done, for the index (and a dry run) only
        comps = self.components.pop(task.key, None)
        if ran and comps is not None and self._verdict(task):
            build = {"key": key, "task": task.key, "job": self._job, **comps}
            build["inputs"] = [index_input(inp) for inp in comps.get("inputs", [])]
            self._index.setdefault(node_position(task), {})[partition_of(task)] = build

    def previous_build(self, task: Task) -> Optional[Dict[str, Any]]:
        """The last build recorded at the task's position (its node's partition), if any."""
        position = node_position(task)
        builds = self._index_read.get(position)
        if builds is None:
            builds = self._index_read[position] = self.cache.read_index(position) or {}
        return builds.get(partition_of(task))

    def other_partitions(self, task: Task) -> List[str]:
        """The partitions of the builds at the task's position (read by :meth:`previous_build`)."""
        return list(self._index_read.get(node_position(task)) or {})

    def forget(self, task_keys, node_id: Optional[int] = None) -> None:
        """Recompute these tasks (and every task of node ``node_id``, planned later too): drop
        their keys and never reuse their cached outputs."""
        for k in task_keys:
            self.release(k)
            self.keys.pop(k, None)
            self.whole.pop(k, None)
            self.components.pop(k, None)
            self._deferred.pop(k, None)
            self.bypass.add(k)
        if node_id is not None:
            self.bypass_nodes.add(int(node_id))

    def tick(self) -> None:
        now = time.time()
        if self.solo and now - self._presence_checked >= PRESENCE_CHECK_SECONDS:
            self._check_presence(now)
        if now - self._last_refresh >= LOCK_REFRESH_SECONDS:
            self._last_refresh = now
            self.cache.refresh(self.claimed.values())
            if self.solo is not None:
                self.cache.refresh_presence(str(self.rt.job_id))
            self.cache.drain()
            self.flush_index()

    def flush_index(self) -> None:
        index, self._index = self._index, {}
        for position, builds in index.items():
            try:
                self.cache.update_index(position, builds)
            except OSError as e:
                logger.debug("task cache: could not write index {}: {}", position, e)

    def close(self) -> None:
        for k in list(self.claimed):
            self.release(k)
        self.unclaimed.clear()
        if self.solo is not None:
            self.cache.withdraw(str(self.rt.job_id))
            self.solo = None
        self.cache.drain()
        self.flush_index()


def _output_dirs(paths: List[str], prefix: str) -> Set[str]:
    """The output directories (``prefix`` and a name) that hold ``paths``. A producer's thousands
    of partition files usually lie in one: checked for all at once (in C) before file by file."""
    first = next((p for p in paths if p.startswith(prefix)), None)
    if first is None:
        return set()
    cut = first.find(os.sep, len(prefix))
    if cut > 0 and all(map(str.startswith, paths, repeat(first[: cut + 1]))):
        return {first[:cut]}
    n = len(prefix)
    return {p if (cut := p.find(os.sep, n)) < 0 else p[:cut] for p in paths if p.startswith(prefix)}


def _paths(ds: DataSet) -> List[str]:
    if isinstance(ds, PartitionedDataSet):
        # from its compact form when it has one: ``datasets`` would build (and keep) a dataset
        # per partition, P x C of them for a shuffle's outputs
        try:
            return ds.all_paths()
        except Exception:  # a partition without files of its own (as below)
            return [p for i in range(len(ds)) for p in _paths(ds[i])]
    try:
        return list(ds.resolved_paths)
    except Exception:
        return []
