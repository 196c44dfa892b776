"""The ``smallpond`` command: look at and tidy the jobs under a data root.

::

    smallpond jobs                      list jobs (state, age, tasks, name or command)
    smallpond status JOB                a job's state and summary
    smallpond logs JOB [TASK]           the job's log, or a task's attempt logs
    smallpond report JOB [--open]       (re)build the job's HTML report; print its path or open it
    smallpond clean [--yes]             remove finished jobs, and the records of published results
                                        that are gone (a dry run unless --yes)
    smallpond cache clean [--max-bytes 500G] [--older-than 30d] [--yes]
                                        bound the task cache shared by jobs (a dry run unless --yes)

JOB is a job id (a UUID, or the string given as ``--job_id``/``job_id=``), a unique prefix of one,
or a job folder's path. The data root is ``--data_root``, else ``SP_DATA_ROOT``, else
``~/.smallpond/data``.

Exit status: 0 success; 1 for ``status`` of a job that failed, crashed or was interrupted;
2 for a usage error, or a job or task that cannot be found or read.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def parse_size(text: str) -> int:
    """Bytes in ``500G``, ``20GB``, ``1.5T`` or plain bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"a size looks like 500G, 20GB or 1048576, got {text!r}")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))


def parse_age(text: str) -> float:
    """Seconds in ``30m``, ``12h``, ``7d``, ``2w`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"an age looks like 30m, 12h, 7d or 2w, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data_root",
        "--data-root",
        default=argparse.SUPPRESS,
        help="where job folders live (default: $SP_DATA_ROOT, else ~/.smallpond/data)",
    )
    p = argparse.ArgumentParser(
        prog="smallpond",
        description="Look at and tidy smallpond jobs under a data root.",
        epilog="JOB: a job id, a unique prefix of one, or a job folder path. Exit status: 0 ok; 1 job failed "
        "(status); 2 usage error or not found.",
        parents=[common],
    )
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    s = sub.add_parser("jobs", parents=[common], help="list jobs with their state and its age (since it last changed)")
    s.add_argument("--state", default=None, help="only jobs in these states (comma-separated: running,success,failure,...)")
    s = sub.add_parser("status", parents=[common], help="a job's state and summary (exit 1 if it failed)")
    s.add_argument("job", metavar="JOB")
    s = sub.add_parser("logs", parents=[common], help="print the job's log, or a task's attempt logs")
    s.add_argument("job", metavar="JOB")
    s.add_argument("task", metavar="TASK", nargs="?", help="a task key (SqlEngineTask-000015), its number (15) or a prefix")
    s.add_argument("--list", action="store_true", help="list the task logs instead")
    s.add_argument("-n", "--lines", type=int, default=0, help="only the last N lines of each log")
    s = sub.add_parser("report", parents=[common], help="(re)build the job's HTML run report and print its path")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--open", action="store_true", help="open it in a web browser")
    s.add_argument("--trace", action="store_true", help="also write log/timeline_exec.json (Chrome trace format)")
    s = sub.add_parser(
        "clean",
        parents=[common],
        help="remove finished jobs' folders and stale records of published results (a dry run unless --yes)",
        description="Remove the folders of finished jobs (success, failure, interrupted, crashed), and the records "
        "of published results (this user's, under {data_root}/.smallpond/users/{uid}/sinks) whose folder no longer holds the result they "
        "recorded. Running jobs, records of results still there, a job whose files a published result lists (a "
        "type='manifest' sink's), and anything that is not a job folder are never touched. Without --yes, only says what it would remove.",
    )
    s.add_argument(
        "--older-than", "--older_than", type=parse_age, default=0.0, help="only jobs that ended this long ago (30m, 12h, 7d)"
    )
    s.add_argument("--state", default=None, help="only jobs in these states (comma-separated; default: every finished state)")
    s.add_argument("--yes", "-y", action="store_true", help="really delete")
    s = sub.add_parser("cache", parents=[common], help="the task cache shared by jobs")
    cache_sub = s.add_subparsers(dest="cache_verb", metavar="CACHE_VERB", required=True)
    c = cache_sub.add_parser(
        "clean",
        parents=[common],
        help="remove least recently used entries (a dry run unless --yes)",
        description="Remove task-cache entries unused for --older-than, then the least recently used until the "
        "cache holds at most --max-bytes. Jobs running meanwhile keep what they linked. Without --yes, only says "
        "what it would remove.",
    )
    c.add_argument(
        "--task_cache",
        "--task-cache",
        default=None,
        help="the cache folder (default: $SP_TASK_CACHE, else {data_root}/.smallpond/users/{uid}/task_cache)",
    )
    c.add_argument("--max-bytes", "--max_bytes", type=parse_size, default=None, help="keep at most this much (500G, 20GB)")
    c.add_argument("--older-than", "--older_than", type=parse_age, default=None, help="remove entries unused this long (30d)")
    c.add_argument("--yes", "-y", action="store_true", help="really delete")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from smallpond.execution.catalog import JobLookupError
    from smallpond.execution.runtime import resolve_data_root

    args = _parser().parse_args(argv)
    data_root = resolve_data_root(getattr(args, "data_root", None))
    try:
        verbs = {"jobs": _jobs, "status": _status, "logs": _logs, "report": _report, "clean": _clean, "cache": _cache}
        return verbs[args.verb](args, data_root)
    except JobLookupError as e:
        print(f"smallpond {args.verb}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `smallpond logs JOB | head`
        return EXIT_OK
    except OSError as e:  # e.g. another user's job folder (0700): say which file, no traceback
        print(f"smallpond {args.verb}: cannot read {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE


def _cache(args, data_root: str) -> int:
    from smallpond.errors import ParameterError
    from smallpond.execution.cache import clean
    from smallpond.execution.runtime import resolve_task_cache

    path = resolve_task_cache(args.task_cache, data_root)
    if path is None:
        print("smallpond cache: the task cache is off (SP_TASK_CACHE)", file=sys.stderr)
        return EXIT_USAGE
    if args.max_bytes is None and args.older_than is None:
        print("smallpond cache clean: give --max-bytes and/or --older-than", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = clean(path, max_bytes=args.max_bytes, older_than=args.older_than, dry_run=not args.yes)
    except ParameterError as e:
        print(f"smallpond cache clean: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"task cache {path}: {report}" + ("" if args.yes else " (dry run: --yes removes them)"))
    return EXIT_OK


def _states(text: Optional[str]) -> Optional[set]:
    return {s.strip() for s in text.split(",") if s.strip()} if text else None


def _jobs(args, data_root: str) -> int:
    from smallpond.execution.catalog import list_jobs

    jobs = list_jobs(data_root)
    wanted = _states(args.state)
    if wanted:
        jobs = [j for j in jobs if j.state in wanted]
    if not jobs:
        print(f"no jobs under {data_root}", file=sys.stderr)
        return EXIT_OK
    print(f"{'STARTED':19}  {'AGE':>5}  {'STATE':11}  {'TASKS':>7}  {'JOB ID':36}  NAME / COMMAND")
    for j in jobs:
        what = j.name or j.command
        what = what if len(what) <= 70 else what[:69] + "…"
        tasks = f"{j.tasks_done + j.tasks_resumed + j.tasks_reused}"
        print(f"{j.job_time:%Y-%m-%d %H:%M:%S}  {_age(j.age_seconds):>5}  {j.state:11}  {tasks:>7}  {j.job_id:36}  {what}")
    print(f"{len(jobs)} job(s) under {data_root}", file=sys.stderr)
    return EXIT_OK


def _status(args, data_root: str) -> int:
    from smallpond.execution.catalog import find_job
    from smallpond.execution.summary import summary_of

    job = find_job(data_root, args.job)
    if job.state == "unreadable":  # another user's folder: one line on stderr, no half-printed status
        print(f"smallpond status: cannot read job {job.job_id} in {job.path}: Permission denied", file=sys.stderr)
        return EXIT_USAGE
    # the age is that of the last change of state (log/.STATUS), not of the start: a job resumed
    # or ended long after it started must not read as started a moment ago
    started = f"{job.job_time:%Y-%m-%d %H:%M:%S}"
    print(f"job {job.job_id}: {job.state} (started {started}; state last changed {_age(job.age_seconds)} ago)")
    print(f"folder {job.path}")
    if job.command:
        print(f"command {job.command}" + (f" on {job.host} (pid {job.pid})" if job.host else ""))
    print(summary_of(job.path, state=job.state), end="")
    return EXIT_OK if job.state in ("success", "running") else EXIT_FAILED


def _task_logs(log_root: str, task: Optional[str]) -> List[str]:
    tasks_dir = os.path.join(log_root, "tasks")
    try:
        names = sorted(os.listdir(tasks_dir))
    except FileNotFoundError:
        return []
    if task is None:
        return [os.path.join(tasks_dir, n) for n in names]

    def key_of(name: str) -> str:
        return name.rsplit(".", 2)[0]  # {key}.{attempt}.log

    exact = [n for n in names if key_of(n) == task]
    if not exact and task.isdigit():
        exact = [n for n in names if key_of(n).endswith(f"-{int(task):06d}")]
    if not exact:
        exact = [n for n in names if n.startswith(task)]
    keys = sorted({key_of(n) for n in exact})
    if len(keys) > 1:
        from smallpond.execution.catalog import JobLookupError

        shown = ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")
        raise JobLookupError(f"task {task!r} matches {len(keys)} tasks: {shown}")
    return [os.path.join(tasks_dir, n) for n in sorted(exact, key=lambda n: int(n.rsplit(".", 2)[1]))]


def _process_log_lines(log_root: str, task: str) -> Tuple[str, List[str]]:
    """(the task's key, the start and done lines of its attempts) from the worker processes' logs
    (``log/workers/``), for a task whose attempts logged nothing else (no file of their own).
    ``task`` is matched as :func:`_task_logs` matches it; ("", []) if nothing matches."""
    from smallpond.execution.attempt import PROCESS_LOG_DIR

    folder = os.path.join(log_root, PROCESS_LOG_DIR)
    line_of = re.compile(r" - (?:start|done) (\S+) attempt (\d+)")
    found: Dict[str, List[Tuple[str, str]]] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), errors="replace") as f:
            for line in f:
                m = line_of.search(line)
                if m:
                    found.setdefault(m.group(1), []).append((line[:23], line))
    keys = [k for k in found if k == task]
    if not keys and task.isdigit():
        keys = [k for k in found if k.endswith(f"-{int(task):06d}")]
    if not keys:
        keys = [k for k in found if k.startswith(task)]
    if len(keys) > 1:
        from smallpond.execution.catalog import JobLookupError

        shown = ", ".join(sorted(keys)[:6]) + (" ..." if len(keys) > 6 else "")
        raise JobLookupError(f"task {task!r} matches {len(keys)} tasks: {shown}")
    if not keys:
        return "", []
    return keys[0], [line for _, line in sorted(found[keys[0]], key=lambda x: x[0])]


def _reused_task(log_root: str, task: str) -> Optional[Dict[str, Any]]:
    """The last ``reused`` event (a task served from the task cache) of the task ``task`` names,
    matched as :func:`_task_logs` matches it, from the job's event log; None if there is none."""
    from smallpond.execution.events import read_events

    found: Dict[str, Dict[str, Any]] = {}
    for ev in read_events(log_root):
        if ev.get("ev") == "reused" and isinstance(ev.get("key"), str):
            found[ev["key"]] = ev
    keys = [k for k in found if k == task]
    if not keys and task.isdigit():
        keys = [k for k in found if k.endswith(f"-{int(task):06d}")]
    if not keys:
        keys = [k for k in found if k.startswith(task)]
    return found[keys[0]] if len(keys) == 1 else None


def _print_file(path: str, lines: int) -> None:
    with open(path, errors="replace") as f:
        if lines > 0:
            from collections import deque

            sys.stdout.writelines(deque(f, maxlen=lines))
        else:
            for line in f:
                sys.stdout.write(line)


def _logs(args, data_root: str) -> int:
    from smallpond.execution.catalog import JobLookupError, find_job

    job = find_job(data_root, args.job)
    log_root = job.log_root
    if args.list:
        for path in _task_logs(log_root, args.task):
            print(f"{os.path.getsize(path):>10}  {os.path.relpath(path, log_root)}")
        return EXIT_OK
    if args.task is None:
        mains = sorted(f for f in os.listdir(log_root) if f.endswith(".log")) if os.path.isdir(log_root) else []
        if not mains:
            raise JobLookupError(f"job {job.job_id} has no job log in {log_root}")
        for name in mains:
            if len(mains) > 1:
                print(f"==> {os.path.join(log_root, name)} <==")
            _print_file(os.path.join(log_root, name), args.lines)
        return EXIT_OK
    paths = _task_logs(log_root, args.task)
    if not paths:
        key, lines = _process_log_lines(log_root, args.task)
        reused = None if lines else _reused_task(log_root, args.task)
        if reused is not None:  # no attempt of its own: its log is the job's that computed it
            print(
                f"{reused['key']} ran no attempt in job {job.job_id}: it was reused from the task cache, as written by "
                f"{reused.get('from_task')} of job {reused.get('from_job')} (smallpond logs {reused.get('from_job')} "
                f"{reused.get('from_task')}, while that job's folder is there)"
            )
            return EXIT_OK
        if not lines:
            raise JobLookupError(
                f"no log of task {args.task!r} in {os.path.join(log_root, 'tasks')} (smallpond logs {args.job} --list)"
            )
        print(f"==> {key}: its attempts logged nothing of their own; their start and done lines <==")
        sys.stdout.writelines(lines[-args.lines :] if args.lines > 0 else lines)
        return EXIT_OK
    for path in paths:
        print(f"==> {path} <==")
        _print_file(path, args.lines)
    return EXIT_OK


def _report(args, data_root: str) -> int:
    import json

    from smallpond.execution.catalog import find_job
    from smallpond.execution.events import JobHistory, chrome_trace
    from smallpond.execution.report import write_report
    from smallpond.io.filesystem import atomic_write_text

    job = find_job(data_root, args.job)
    path = write_report(job.path)
    print(path)
    if args.trace:
        run = JobHistory.load(job.log_root).last
        trace_path = os.path.join(job.log_root, "timeline_exec.json")
        atomic_write_text(trace_path, json.dumps(chrome_trace(run) if run else {"traceEvents": []}))
        print(trace_path)
    if args.open:
        import webbrowser

        if not webbrowser.open("file://" + os.path.abspath(path)):
            print(f"smallpond report: no web browser found; open {path}", file=sys.stderr)
    return EXIT_OK


def _clean(args, data_root: str) -> int:
    from smallpond.common import human_bytes
    from smallpond.execution.catalog import FINISHED, JobLookupError, list_jobs, owned_by_another_user, remove_job
    from smallpond.execution.published_refs import pending_publication, results_listing, why_kept
    from smallpond.io.filesystem import folder_size

    wanted = _states(args.state) or set(FINISHED)
    unknown = wanted - set(FINISHED)
    if unknown:
        print(f"smallpond clean: can only remove finished jobs ({', '.join(FINISHED)}), not {sorted(unknown)}", file=sys.stderr)
        return EXIT_USAGE
    now = time.time()
    chosen, total, skipped = [], 0, []
    for job in list_jobs(data_root):
        if job.state == "unreadable":  # another user's (0700): said, never touched
            skipped.append((job, "another user's job folder, which this user cannot read; run clean as its user"))
            continue
        if job.state not in wanted or now - (job.updated or job.job_time.timestamp()) < args.older_than:
            continue
        other = owned_by_another_user(job.path)
        if other:
            skipped.append((job, other))
            continue
        size = folder_size(job.path)
        total += size
        chosen.append((job, size))
    # a type="manifest" result lists files of the job that published it: that job folder stays
    published = results_listing(data_root, [job.path for job, _ in chosen], write_index=args.yes)
    # and so does a job whose publication was interrupted: its rerun finishes it from the journal
    why = {job.path: pending_publication(job.path) for job, _ in chosen}
    why.update({path: why_kept(listings) for path, listings in published.items()})
    kept = [(job, size) for job, size in chosen if why.get(job.path)]
    chosen = [(job, size) for job, size in chosen if not why.get(job.path)]
    for job, size in kept:
        total -= size
        print(f"keeping {job.path}  ({job.state}, {human_bytes(size)}): {why[job.path]}")
    for job, reason in skipped:
        print(f"skipping {job.path}  ({job.state}): {reason}")
    verb = "removing" if args.yes else "would remove"
    for job, size in chosen:
        print(f"{verb} {job.path}  ({job.state}, {_age(job.age_seconds)} old, {human_bytes(size)})")
        if args.yes:
            try:
                remove_job(data_root, job, published)
            except JobLookupError as e:
                print(f"  skipped: {e}", file=sys.stderr)
    records = _clean_records(data_root, args.yes)
    if not chosen and not records:
        left = [f"{len(kept)} job(s) kept"] * bool(kept) + [f"{len(skipped)} of other users skipped"] * bool(skipped)
        print(f"nothing to remove under {data_root}" + (f" ({', '.join(left)})" if left else ""))
    elif args.yes:
        print(f"removed {len(chosen)} job(s), {human_bytes(total)}, and {records} record(s) of published results")
    else:
        print(f"{len(chosen)} job(s), {human_bytes(total)}, and {records} record(s); run again with --yes to delete them")
    return EXIT_OK


def _clean_records(data_root: str, really: bool) -> int:
    """Prune this user's records of published results whose folder no longer holds them (ops/sink_record.py)."""
    from smallpond.errors import ParameterError
    from smallpond.execution import user_folder
    from smallpond.execution.ops.sink_record import prune
    from smallpond.execution.runtime import sink_records_dir

    folder = sink_records_dir(data_root)
    try:
        if really:  # (a dry run writes nothing: records of the earlier layout are moved by the real clean)
            user_folder.migrate(data_root)
        gone, kept = prune(data_root, dry_run=not really)
        if really:  # the marks of publications of jobs whose folders are gone (ops/sink_pending.py)
            from smallpond.execution.ops.sink_pending import prune as prune_marks

            prune_marks(data_root)
    except (ParameterError, OSError) as e:  # e.g. a folder of another user in this user's place: said, not a traceback
        what = str(e) if isinstance(e, ParameterError) else f"{e.filename or folder}: {e.strerror or e}"
        print(f"smallpond clean: left the records of published results alone: {what}", file=sys.stderr)
        return 0
    verb = "removed" if really else "would remove"
    if gone:
        print(
            f"{verb} {len(gone)} record(s) of published results under {folder} whose folder no longer holds them "
            f"(e.g. {gone[0]}); {kept} record(s) of results still there stay"
        )
    return len(gone)


if __name__ == "__main__":
    sys.exit(main())
