"""The run report: one self-contained HTML page per job, ``log/report.html``.

It is built from the job folder alone (the event log, ``log/.STATUS``), so ``smallpond report
JOB`` rebuilds it for any job, a crashed one included. It describes the latest run of the job:

* a header: job id and name, state, times, host, command, executor, links to the job's logs;
* the plan graph, drawn here as SVG (a layered layout: each node one row below its deepest input;
  no Graphviz needed), each node coloured by its state and labelled with its progress;
* a timeline of the attempts on each worker (hover for details; failed attempts outlined red);
* a table of per-node statistics;
* retries and failures, with links to each attempt's log (``tasks/{key}.{attempt}.log``).

Invariants: the page loads nothing from anywhere (inline CSS, SVG and a few lines of script;
links are relative paths to files in ``log/``); every text from the job (labels, SQL, errors,
paths) is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import os
from datetime import datetime
from typing import Dict, List, Optional, Tuple

from smallpond.common import human_bytes, human_seconds
from smallpond.execution.events import JobHistory, NodeStats, RunStats, existing_attempt_log

REPORT_FILE = "report.html"
#: attempts drawn at most in the timeline (the table and the counts still cover all of them)
MAX_TIMELINE_ATTEMPTS = 20000
_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#86bcb6", "#bab0ac"]
_STATE_COLOURS = {"done": "#e3f1e3", "running": "#fff3cd", "failed": "#f8d7da", "waiting": "#eeeeee", "incomplete": "#eeeeee"}


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "?"


# -- the plan graph ----------------------------------------------------------------------------


def layered_layout(nodes: Dict[int, NodeStats]) -> Dict[int, Tuple[int, int]]:
    """(layer, index in layer) of each node: a node's layer is one more than its deepest input's;
    within a layer, nodes are ordered by the mean position of their inputs (fewer crossings)."""
    layer: Dict[int, int] = {}

    def depth(nid: int, seen: frozenset = frozenset()) -> int:
        if nid in layer:
            return layer[nid]
        ins = [i for i in nodes[nid].inputs if i in nodes and i not in seen]
        layer[nid] = 0 if not ins else 1 + max(depth(i, seen | {nid}) for i in ins)
        return layer[nid]

    for nid in sorted(nodes):
        depth(nid)
    rows: Dict[int, List[int]] = {}
    for nid in sorted(nodes):
        rows.setdefault(layer[nid], []).append(nid)
    pos: Dict[int, Tuple[int, int]] = {}
    for lv in sorted(rows):
        ids = rows[lv]
        if lv > 0:

            def centre(nid: int) -> float:
                xs = [pos[i][1] for i in nodes[nid].inputs if i in pos]
                return sum(xs) / len(xs) if xs else 0.0

            ids = sorted(ids, key=lambda n: (centre(n), n))
        for i, nid in enumerate(ids):
            pos[nid] = (lv, i)
    return pos


def _plan_svg(run: RunStats) -> str:
    nodes = run.nodes
    if not nodes:
        return '<p class="muted">No node ran in this run.</p>'
    pos = layered_layout(nodes)
    bw, bh, gx, gy, pad = 250, 66, 28, 46, 16
    widest = max(i for _, i in pos.values()) + 1
    depth = max(lv for lv, _ in pos.values()) + 1
    per_layer: Dict[int, int] = {}
    for lv, _ in pos.values():
        per_layer[lv] = per_layer.get(lv, 0) + 1
    width = pad * 2 + widest * bw + (widest - 1) * gx
    height = pad * 2 + depth * bh + (depth - 1) * gy

    def xy(nid: int) -> Tuple[float, float]:
        lv, i = pos[nid]
        row_width = per_layer[lv] * bw + (per_layer[lv] - 1) * gx
        x0 = pad + (width - 2 * pad - row_width) / 2
        return x0 + i * (bw + gx), pad + lv * (bh + gy)

    parts = [
        f'<svg class="plan" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="plan graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#777"/></marker></defs>',
    ]
    for nid, ns in nodes.items():
        x1, y1 = xy(nid)
        for dep in ns.inputs:
            if dep not in pos:
                continue
            x0, y0 = xy(dep)
            sx, sy, ex, ey = x0 + bw / 2, y0 + bh, x1 + bw / 2, y1
            my = (sy + ey) / 2
            parts.append(
                f'<path class="edge" d="M{sx:.0f},{sy:.0f} C{sx:.0f},{my:.0f} {ex:.0f},{my:.0f} {ex:.0f},{ey - 2:.0f}" marker-end="url(#arrow)"/>'
            )
    for nid, ns in sorted(nodes.items()):
        x, y = xy(nid)
        state = _state(run, ns)
        kind = ns.type[:-4] if ns.type.endswith("Node") else ns.type or "node"
        name = _fit(f"{kind} #{nid}", 32)
        extra = ns.label.split(" ", 1)[1] if " " in ns.label else ""
        detail = _fit(" ".join(x for x in (extra, ns.detail) if x), 40)
        progress = f"{ns.finished}/{ns.planned or ns.finished} tasks"
        if ns.wall_seconds:
            progress += f" · {human_seconds(ns.wall_seconds)}"
        if ns.rows:
            progress += f" · {ns.rows:,} rows"
        tip = f"{ns.label}\n{ns.detail}\npartitions: {ns.partitions}\ncreated at {ns.location}\nstate: {state}"
        parts.append(
            f'<g class="node {state}" data-node="{nid}" transform="translate({x:.0f},{y:.0f})"><title>{_e(tip)}</title>'
            f'<rect width="{bw}" height="{bh}" rx="6" fill="{_STATE_COLOURS.get(state, "#eee")}"/>'
            f'<rect width="6" height="{bh}" rx="2" fill="{_PALETTE[nid % len(_PALETTE)]}"/>'
            f'<text x="14" y="19" class="t1">{_e(name)}</text>'
            f'<text x="14" y="37" class="t2">{_e(detail)}</text>'
            f'<text x="14" y="55" class="t3">{_e(progress)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _state(run: RunStats, ns: NodeStats) -> str:
    """A node's state; a node left unfinished by a run that ended is "incomplete", not running."""
    state = ns.state
    return "incomplete" if run.end is not None and state in ("running", "waiting") else state


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- the timeline ------------------------------------------------------------------------------


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = max(span, 1e-3) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _failed_attempts(run: RunStats, log_root: str) -> Dict[int, Tuple[str, str]]:
    """The worker and the log of each failed attempt (by ``id`` of its event), looked up once for
    the timeline's rows, the cards and the failures table (a log that is gone may be searched for
    in the worker logs: :func:`~smallpond.execution.events.existing_attempt_log`): a lost attempt (its worker killed) was told by its executor, which named no
    worker (Ray's, a replaced local worker) or another name than the worker's own: its bar sat
    on a row '?' of its own. Its lines are in its worker process's log (``workers/{host}-{pid}.log``,
    :func:`~smallpond.execution.events.existing_attempt_log`): the worker of the attempts done in
    that log, else the executor's name, else the log's."""
    by_log: Dict[str, str] = {}
    for a in run.attempts:
        if a["ev"] == "done" and a.get("worker") and str(a.get("log") or "").startswith("workers/"):
            by_log.setdefault(a["log"], a["worker"])
    out: Dict[int, Tuple[str, str]] = {}
    for a in run.failures:
        log = existing_attempt_log(log_root, a.get("log")) or str(a.get("log") or "")
        name = by_log.get(log) or a.get("worker") or ""
        if not name and log.startswith("workers/"):
            name = os.path.splitext(os.path.basename(log))[0]
        out[id(a)] = (name or "?", log)
    return out


def _worker(a: dict, failed: Dict[int, Tuple[str, str]]) -> str:
    """The worker an attempt ran on (a failed one's as :func:`_failed_attempts` found it)."""
    got = failed.get(id(a))
    return got[0] if got else a.get("worker") or "?"


def _timeline_svg(run: RunStats, failed_attempts: Dict[int, Tuple[str, str]]) -> str:
    attempts = run.attempts[:MAX_TIMELINE_ATTEMPTS]
    if not attempts:
        return '<p class="muted">No task ran on a worker in this run (everything was resumed or metadata-only).</p>'
    workers = sorted({_worker(a, failed_attempts) for a in attempts})
    t0 = min(float(a["started"]) for a in attempts)
    t1 = max(float(a["started"]) + float(a["elapsed"]) for a in attempts)
    span = max(t1 - t0, 1e-3)
    left, plot_w, lane_h, top = 170, 980, 22, 24
    height = top + lane_h * len(workers) + 26
    width = left + plot_w + 20
    scale = plot_w / span
    lane = {w: i for i, w in enumerate(workers)}
    parts = [
        f'<svg class="timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="timeline">'
    ]
    step = _nice_step(span)
    k = 0
    while k * step <= span + 1e-9:
        x = left + k * step * scale
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 22}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{height - 8}">{_e(human_seconds(k * step) if k else "0")}</text>')
        k += 1
    for w, i in lane.items():
        y = top + i * lane_h
        parts.append(f'<text class="lane" x="{left - 8}" y="{y + 15}">{_e(w)}</text>')
        parts.append(f'<line class="lane-line" x1="{left}" y1="{y + lane_h}" x2="{left + plot_w}" y2="{y + lane_h}"/>')
    for a in attempts:
        nid = int(a["node"])
        ns = run.nodes.get(nid)
        x = left + (float(a["started"]) - t0) * scale
        w = max(1.0, float(a["elapsed"]) * scale)
        y = top + lane[_worker(a, failed_attempts)] * lane_h + 3
        failed = a["ev"] == "failed"
        tip = f"{a['key']} attempt {a.get('attempt', 0)}\n{ns.label if ns else nid}\n{human_seconds(float(a['elapsed']))}"
        if a.get("rows") is not None:
            tip += f", {int(a['rows']):,} rows, {human_bytes(int(a.get('bytes') or 0))} written"
        if failed:
            tip += f"\nFAILED ({a.get('decision', '')}): {a.get('error', '')[:300]}"
        cls = "att failed" if failed else "att"
        parts.append(
            f'<rect class="{cls}" data-node="{nid}" x="{x:.2f}" y="{y}" width="{w:.2f}" height="{lane_h - 6}" '
            f'fill="{_PALETTE[nid % len(_PALETTE)]}"><title>{_e(tip)}</title></rect>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key" data-node="{nid}"><i style="background:{_PALETTE[nid % len(_PALETTE)]}"></i>{_e(ns.label)}</span>'
        for nid, ns in sorted(run.nodes.items())
        if ns.done - ns.inline or ns.failed or ns.retries
    )
    more = ""
    if len(run.attempts) > len(attempts):
        more = f'<p class="muted">Showing the first {len(attempts):,} of {len(run.attempts):,} attempts.</p>'
    return "".join(parts) + f'<div class="legend">{legend}</div>{more}'


# -- tables ------------------------------------------------------------------------------------


def _node_table(run: RunStats) -> str:
    head = (
        "<tr><th>Node</th><th>State</th><th>Tasks</th><th>Run</th><th>Resumed</th><th>Reused</th><th>Retries</th><th>Failed</th>"
        "<th>Rows</th><th>Written</th><th>Read</th><th>Wall time</th><th>Task time</th><th>Task CPU</th><th>Peak memory</th><th>Median task</th>"
        "<th>Slowest task</th><th>Created at</th></tr>"
    )
    rows = []
    for nid, ns in sorted(run.nodes.items()):
        d = sorted(ns.durations)
        med = human_seconds(d[len(d) // 2]) if d else ""
        mx = human_seconds(d[-1]) if d else ""
        rows.append(
            f'<tr data-node="{nid}"><td><code>{_e(ns.label)}</code><div class="muted small">{_e(_fit(ns.detail, 160))}</div></td>'
            f'<td class="state {_state(run, ns)}">{_state(run, ns)}</td><td class="num">{ns.finished}/{ns.planned or ns.finished}</td>'
            f'<td class="num">{ns.done - ns.inline}{" + " + str(ns.inline) + " inline" if ns.inline else ""}</td>'
            f'<td class="num">{ns.resumed}</td><td class="num">{ns.reused}</td><td class="num">{ns.retries}</td><td class="num">{ns.failed}</td>'
            f'<td class="num">{ns.rows:,}</td><td class="num">{human_bytes(ns.written)}</td><td class="num">{human_bytes(ns.read)}</td>'
            f'<td class="num">{human_seconds(ns.wall_seconds)}</td><td class="num">{human_seconds(ns.task_seconds)}</td>'
            f"{_use_cells(ns)}"
            f'<td class="num">{med}</td><td class="num">{mx}</td><td class="small">{_e(ns.location)}</td></tr>'
        )
    return f'<table class="nodes">{head}{"".join(rows)}</table>'


def _use_cells(ns) -> str:
    """The task CPU and peak memory cells of a node's row (the peak flagged when above what the
    task reserved)."""
    cpu = human_seconds(ns.cpu_seconds) if ns.cpu_seconds else ""
    if not ns.peak_memory:
        return f'<td class="num">{cpu}</td><td class="num"></td>'
    title = f"the highest resident memory of a task's worker process; that task reserved {human_bytes(ns.peak_reserved)}"
    over = ""
    if ns.over_reserved:
        over = f'<div class="over small">{ns.over_reserved} task(s) above what they reserved</div>'
    return (
        f'<td class="num">{cpu}</td><td class="num{" over" if ns.over_reserved else ""}" title="{_e(title)}">'
        f"{human_bytes(ns.peak_memory)}{over}</td>"
    )


def _failure_table(run: RunStats, failed: Dict[int, Tuple[str, str]]) -> str:
    if not run.failures:
        return '<p class="muted">No attempt failed.</p>'
    rows = []
    for a in run.failures:
        ns = run.nodes.get(int(a["node"]))
        decision = a.get("decision", "")
        what = {"retry": "retried", "retry_with_more_memory": "retried with more memory", "fail": "gave up"}.get(
            decision, decision
        )
        worker, log = failed[id(a)]
        link = f'<a href="{_e(log)}">{_e(log)}</a>' if log else ""
        rows.append(
            f'<tr class="{"fatal" if decision == "fail" else ""}"><td>{_when(float(a["started"]))}</td><td><code>{_e(a["key"])}</code></td>'
            f'<td>{_e(ns.label if ns else a["node"])}</td><td class="num">{a.get("attempt", 0)}</td><td>{_e(worker)}</td>'
            f"<td>{_e(what)}</td><td><pre>{_e(str(a.get('error', ''))[:2000])}</pre></td><td>{link}</td></tr>"
        )
    head = "<tr><th>Started</th><th>Task</th><th>Node</th><th>Attempt</th><th>Worker</th><th>Outcome</th><th>Error</th><th>Log</th></tr>"
    return f'<table class="failures">{head}{"".join(rows)}</table>'


def _runs_table(history: JobHistory) -> str:
    if len(history.runs) < 2:
        return ""
    rows = []
    for r in history.runs:
        ran = sum(n.done - n.inline for n in r.nodes.values())
        rows.append(
            f'<tr><td class="num">{r.index + 1}</td><td>{_when(r.started)}</td><td>{_e(r.status)}</td>'
            f'<td class="num">{human_seconds(r.elapsed)}</td><td class="num">{ran}</td><td class="num">{r.total("resumed")}</td>'
            f'<td class="num">{r.total("reused")}</td>'
            f'<td class="num">{len(r.failures)}</td></tr>'
        )
    head = (
        "<tr><th>Run</th><th>Started</th><th>Result</th><th>Elapsed</th><th>Tasks run</th><th>Resumed</th><th>Reused</th>"
        "<th>Failed attempts</th></tr>"
    )
    return f'<section id="runs"><h2>Runs of this job</h2><table>{head}{"".join(rows)}</table></section>'


# -- the page ----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 8px} h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{white-space:pre-wrap;margin:0;max-width:640px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-size:13px;vertical-align:middle;margin-left:8px}
.badge.success{background:#d4edda;color:#155724}.badge.failure,.badge.crashed,.badge.interrupted{background:#f8d7da;color:#721c24}
.badge.running{background:#fff3cd;color:#856404}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:8px 0}dl.meta dt{color:#666}dl.meta dd{margin:0}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px 14px;min-width:92px}
.card b{display:block;font-size:19px}.card span{color:#666;font-size:12px}
.scroll{overflow:auto;background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px}
svg text{font-family:system-ui,sans-serif}.plan .t1{font-size:12.5px;font-weight:600}.plan .t2{font-size:11px;fill:#555}
.plan .t3{font-size:11px;fill:#333}.plan rect{stroke:#999}.plan .node.failed rect{stroke:#c00;stroke-width:2}
.edge{fill:none;stroke:#888;stroke-width:1.4}.tick{font-size:11px;fill:#666;text-anchor:middle}
.lane{font-size:11px;fill:#333;text-anchor:end}.grid{stroke:#eee}.lane-line{stroke:#f2f2f2}
.att{stroke:#fff;stroke-width:.5}.att.failed{stroke:#d00;stroke-width:2;fill-opacity:.45}
.dim{opacity:.18}.legend{margin-top:6px}.key{display:inline-block;margin-right:14px;font-size:12px;cursor:default}
.key i{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}
table{border-collapse:collapse;background:#fff;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
th{background:#f0f0f0;text-align:left}td.num{text-align:right;white-space:nowrap}.muted{color:#777}.small{font-size:11.5px}
td.state.done{color:#155724}td.state.failed,tr.fatal td{color:#a00}td.state.running{color:#856404}
tr.hl td{background:#fff8dc}td.over,.over{color:#a35d00}
"""

_JS = """
(function(){
  function mark(id, on){
    document.querySelectorAll('[data-node]').forEach(function(el){
      var same = el.getAttribute('data-node') === id;
      if (el.classList.contains('att') || el.classList.contains('node')) { el.classList.toggle('dim', on && !same); }
      if (el.tagName === 'TR') { el.classList.toggle('hl', on && same); }
    });
  }
  document.querySelectorAll('.node[data-node], .key[data-node], tr[data-node]').forEach(function(el){
    var id = el.getAttribute('data-node');
    el.addEventListener('mouseenter', function(){ mark(id, true); });
    el.addEventListener('mouseleave', function(){ mark(id, false); });
  });
})();
"""


def render_report(history: JobHistory, *, job_root: str, state: str, log_files: List[str]) -> str:
    """The report page of the latest run in ``history`` (``state`` as :mod:`~smallpond.execution.catalog` tells it)."""
    run = history.last
    if run is None:
        body = '<p class="muted">This job has no events yet (it wrote none, or it predates the event log).</p>'
        return _page("smallpond job", body)
    start = run.start
    job_id = start.get("job_id") or os.path.basename(job_root)
    name = start.get("name") or ""
    argv = start.get("argv") or []
    ran = sum(n.done - n.inline for n in run.nodes.values())
    retries = run.total("retries")
    failed = run.total("failed")
    log_root = os.path.join(job_root, "log")
    failed_attempts = _failed_attempts(run, log_root)
    cards = [
        (f"{ran:,}", "tasks run"),
        (f"{run.total('resumed'):,}", "resumed"),
        (f"{run.total('reused'):,}", "reused from the task cache"),
        (f"{retries:,}", "retries"),
        (f"{failed:,}", "failed"),
        (f"{run.total('rows'):,}", "rows written"),
        (human_bytes(run.total("written")), "written"),
        (human_bytes(run.total("read")), "read"),
        (human_seconds(run.elapsed), "elapsed"),
        (str(len({_worker(a, failed_attempts) for a in run.attempts})), "workers used"),
    ]
    logs = " ".join(f'<a href="{_e(f)}">{_e(f)}</a>' for f in log_files) or "none"
    error = ""
    if run.end and run.end.get("error"):
        link = existing_attempt_log(log_root, run.end.get("log"))
        error = f'<h2>Error</h2><pre class="error">{_e(run.end["error"])}</pre>' + (
            f'<p>Log of the failed task: <a href="{_e(link)}">{_e(link)}</a></p>' if link else ""
        )
    meta = [
        ("job id", f"<code>{_e(job_id)}</code>"),
        ("name", _e(name) if name else '<span class="muted">none</span>'),
        ("started", f"{_when(run.started)} (run {run.index + 1} of {len(history.runs)})"),
        ("elapsed", human_seconds(run.elapsed) + ("" if run.end else " so far (no end recorded)")),
        ("host", f"{_e(start.get('host', '?'))} (pid {_e(start.get('pid', '?'))})"),
        ("command", f"<code>{_e(' '.join(argv))}</code>"),
        ("executor", _e(start.get("executor", ""))),
        ("job folder", f"<code>{_e(job_root)}</code>"),
        ("logs", logs),
        ("versions", _e(", ".join(f"{k} {v}" for k, v in (start.get("versions") or {}).items()))),
    ]
    body = (
        f'<header><h1>smallpond job{(" " + _e(name)) if name else ""}<span class="badge {_e(state)}">{_e(state)}</span></h1>'
        f'<dl class="meta">{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta)}</dl>'
        f'<div class="cards">{"".join(f"<div class=card><b>{v}</b><span>{k}</span></div>" for v, k in cards)}</div></header>'
        f"{error}"
        f'<section id="plan"><h2>Plan</h2><div class="scroll">{_plan_svg(run)}</div></section>'
        f'<section id="timeline"><h2>Timeline of tasks per worker</h2><div class="scroll">{_timeline_svg(run, failed_attempts)}</div></section>'
        f'<section id="nodes"><h2>Nodes</h2><div class="scroll">{_node_table(run)}</div></section>'
        f'<section id="failures"><h2>Retries and failures</h2><div class="scroll">{_failure_table(run, failed_attempts)}</div></section>'
        f"{_runs_table(history)}"
    )
    return _page(f"smallpond job {name or job_id}", body)


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f"<body>{body}<script>{_JS}</script></body></html>\n"
    )


def write_report(
    job_root: str, path: Optional[str] = None, history: Optional[JobHistory] = None, state: Optional[str] = None
) -> str:
    """Build the report of the job in ``job_root`` from its folder and write it (atomically) to
    ``path`` (default ``log/report.html``). Returns the path.

    ``history``: the job's events as the scheduler kept them (every run of the job), instead of
    reading them back from its event log; ``state``: the job's state as its scheduler just wrote
    it, instead of reading it back (:func:`~smallpond.execution.catalog.describe_job`).
    """
    from smallpond.io.filesystem import atomic_write_text

    log_root = os.path.join(job_root, "log")
    if history is None:
        from smallpond.execution.summary import load_history

        history = load_history(log_root)  # (a killed run: until its logs' last write, as its summary)
    if state is None:
        from smallpond.execution.catalog import describe_job

        try:
            state = describe_job(job_root).state
        except Exception:
            state = history.last.status if history.last else "unknown"
    try:
        log_files = sorted(f for f in os.listdir(log_root) if f.endswith(".log"))
    except OSError:
        log_files = []
    path = path or os.path.join(log_root, REPORT_FILE)
    atomic_write_text(path, render_report(history, job_root=job_root, state=state, log_files=log_files))
    return path
