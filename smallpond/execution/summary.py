"""The end-of-job summary: one short block of text, computed from the job's event log.

::

    smallpond job 3f2a91c0 (nightly) succeeded in 4.1 s
      tasks  24 run, 3 resumed, 1 retried, 0 failed (+8 metadata-only)
      data   read 12.3 MiB, wrote 8.1 MiB (120,000 rows)
      node                                     tasks    wall
      SqlEngineNode-000003 'imported_urls'       4/4   0.8 s
      ...
      logs   /data/2026-...-3f2a91c0-.../log  (smallpond logs 3f2a91c0)
      report /data/2026-...-3f2a91c0-.../log/report.html

Who prints it: the Driver always (on stderr, after the job); a session at shutdown when stderr is
a terminal or ``SP_SUMMARY=1`` (``SP_SUMMARY=0`` never), and ``Session.summary()`` returns it at
any time. A failed job's block starts with its error, shown once, and the path of the failed
task's log.
"""

from __future__ import annotations

import os
from typing import Optional

from smallpond.common import SWITCH_OFF, SWITCH_ON, TextBlock, env_switch, human_bytes, human_seconds
from smallpond.execution.events import JobHistory, RunStats, existing_attempt_log

MAX_NODES_SHOWN = 12
_VERB = {"success": "succeeded", "failure": "failed", "interrupted": "was interrupted", "running": "is running"}


SummaryText = TextBlock


def format_summary(
    history: JobHistory,
    job_root: str,
    *,
    report_path: Optional[str] = None,
    state: Optional[str] = None,
    show_error: bool = True,
) -> SummaryText:
    """The summary block of the latest run in ``history``.

    ``show_error=False`` leaves out the failed task's error text (keeping its log's path), for a
    caller that has shown it already (a session re-raises it to the user's code).
    """
    run = history.last
    if run is None:
        return SummaryText(f"smallpond job at {job_root}: no events recorded\n")
    start = run.start
    job_id = str(start.get("job_id") or "")
    short = job_id[:8]
    name = start.get("name") or ""
    state = state or run.status
    head = f"smallpond job {short}{f' ({name})' if name else ''} {_VERB.get(state, state)}"
    head += f" in {human_seconds(run.elapsed)}" if state != "running" else f" for {human_seconds(run.elapsed)}"
    lines = [head]
    end = run.end or {}
    if end.get("error"):
        if show_error:
            lines.append(_indent(end["error"]))
        elif end.get("task"):
            lines.append(f"  failed task: {end['task']}")
        log = existing_attempt_log(os.path.join(job_root, "log"), end.get("log"))
        if log:
            lines.append(f"  task log: {os.path.join(job_root, 'log', log)}")
        others = sum(n.failed for n in run.nodes.values()) - 1
        if others > 0:
            lines.append(f"  ({others} more task(s) failed: see the report)")
    lines.extend(_body(run))
    log_root = os.path.join(job_root, "log")
    lines.append(f"  logs   {log_root}  (smallpond logs {short})")
    lines.append(f"  report {report_path or os.path.join(log_root, 'report.html')}")
    return SummaryText("\n".join(lines) + "\n")


def _indent(text: str) -> str:
    return "\n".join("  " + ln for ln in str(text).splitlines())


def _body(run: RunStats) -> list:
    inline = run.total("inline")
    ran = run.total("done") - inline
    lines = [
        f"  tasks  {ran:,} run, {run.total('resumed'):,} resumed, {run.total('reused'):,} reused from the task cache, "
        f"{run.total('retries'):,} retried, "
        f"{run.total('failed'):,} failed" + (f" (+{inline:,} metadata-only)" if inline else ""),
        f"  data   read {human_bytes(run.total('read'))}, wrote {human_bytes(run.total('written'))} ({run.total('rows'):,} rows)",
    ]
    # (a node whose tasks were all running when the run ended, or was killed, is shown too)
    nodes = [
        n
        for _, n in sorted(run.nodes.items())
        if n.done - n.inline or n.resumed or n.reused or n.failed or n.retries or n.running
    ]
    if not nodes:
        return lines
    width = min(48, max(len(n.label) for n in nodes))
    lines.append(f"  {'node':<{width}}  {'tasks':>9}  {'wall':>8}  {'task CPU':>8}  {'peak memory':>11}")
    for n in nodes[:MAX_NODES_SHOWN]:
        label = n.label if len(n.label) <= width else n.label[: width - 1] + "…"
        tasks = f"{n.finished}/{n.planned or n.finished}"
        flag = "  FAILED" if n.failed else f"  ({n.running:,} running)" if n.running else ""
        cpu = human_seconds(n.cpu_seconds) if n.cpu_seconds else "-"
        peak = human_bytes(n.peak_memory) if n.peak_memory else "-"
        lines.append(f"  {label:<{width}}  {tasks:>9}  {human_seconds(_wall(run, n)):>8}  {cpu:>8}  {peak:>11}{flag}")
    if len(nodes) > MAX_NODES_SHOWN:
        lines.append(f"  ... {len(nodes) - MAX_NODES_SHOWN} more node(s): see the report")
    for n in nodes:
        if n.over_reserved:
            lines.append(
                f"  note: {n.over_reserved} task(s) of {n.label} peaked above the memory reserved for them "
                f"(the highest peak {human_bytes(n.peak_memory)}, by a task that reserved {human_bytes(n.peak_reserved)}); give the node a "
                "larger memory_limit, or the scheduler may start more tasks at once than the machine holds"
            )
    return lines


def _wall(run: RunStats, n) -> float:
    """A node's wall time: from its first attempt's start to its last one's end, and while some
    were still running (``submit`` events without an end) until the run's last sign of life."""
    submitted = [float(ev.get("t") or 0.0) for ev in run.running.values() if int(ev.get("node", -1)) == n.id]
    if not submitted:
        return n.wall_seconds
    first = min(submitted + ([n.first_start] if n.first_start is not None else []))
    return max(0.0, max(run.last_time, n.last_end or 0.0) - first)


def summary_of(job_root: str, state: Optional[str] = None) -> SummaryText:
    """The summary of a job folder's latest run (for ``smallpond status``)."""
    return format_summary(load_history(os.path.join(job_root, "log")), job_root, state=state)


def load_history(log_root: str) -> JobHistory:
    """The job's events (:meth:`JobHistory.load`), its latest run lasting until its logs were last
    written if it has no end event (for the summary and the rebuilt report alike)."""
    history = JobHistory.load(log_root)
    run = history.last
    if run is not None and run.end is None:
        # a run that ended without its end event (killed): its events are written in batches, so
        # the last one may be long before the run's last act; its logs' times (the scheduler's
        # heartbeat included: EventLog.on_tick) say when that was
        run.last_time = max(run.last_time, last_log_write(log_root))
    return history


def last_log_write(log_root: str) -> float:
    """When a job's logs were last written: the newest modification time of its event log, its
    scheduler's log and its workers' logs (0.0 if none; a report written later does not count)."""
    from smallpond.execution.attempt import PROCESS_LOG_DIR

    newest = 0.0
    for folder in (log_root, os.path.join(log_root, PROCESS_LOG_DIR)):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                if (e.name.endswith(".log") or e.name == "events.jsonl") and e.is_file():
                    newest = max(newest, e.stat().st_mtime)
            except OSError:
                pass
    return newest


def want_session_summary() -> bool:
    """Whether a session prints its summary at shutdown: ``SP_SUMMARY``, else on a terminal."""
    import sys

    setting = env_switch("SP_SUMMARY", "auto")
    if setting in SWITCH_OFF:
        return False
    if setting in SWITCH_ON:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
