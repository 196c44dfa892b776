"""Progress bars for running jobs, and the console writer that keeps log lines clear of them.

Bars are drawn by tqdm: on a terminal, one bar per node with tasks to run (tasks done/total,
rate, ETA, rows and bytes written); in a Jupyter kernel, the same bars as notebook widgets when
``ipywidgets`` is installed, otherwise one plain-text bar for the whole computation (notebook
front ends show it as text; tqdm's multi-line cursor movements would not render there).

When they show (:func:`progress_mode`):

* ``SP_PROGRESS=0`` (or ``false``/``off``/``no``): never;
* ``SP_PROGRESS=always``: always, as plain text on stderr (for CI logs);
* otherwise (unset or ``auto``): when stderr is a terminal, or in a Jupyter kernel; never when output goes to a
  file or a pipe.

Invariants: bars appear only once a computation has run for ``DELAY_SECONDS`` (a quick
``count()`` draws nothing); every bar is closed when the scheduler run ends, before its error is
raised, and on a terminal it is erased, so a traceback or error message starts on a clean line;
log lines printed while bars show go through :func:`write_console`, which lifts the bars out of
the way and draws them again below the line.
"""

from __future__ import annotations

import sys
import time
from typing import Dict, List, Optional

from smallpond.common import SWITCH_OFF, env_switch, human_bytes
from smallpond.execution.scheduler import SchedulerListener

#: a computation shorter than this draws no bar
DELAY_SECONDS = 0.5
#: at most this many per-node bars; the other nodes share one more bar
MAX_NODE_BARS = 8
_REFRESH_SECONDS = 0.5

_active: List["ProgressBars"] = []


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) process."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_mode() -> Optional[str]:
    """``"terminal"``, ``"notebook"``, ``"text"`` or None (no progress); see the module docstring."""
    setting = env_switch("SP_PROGRESS", "always", "auto")
    if setting in SWITCH_OFF:
        return None
    if setting == "always":
        return "text"
    if in_notebook():
        return "notebook"
    if _stderr_is_tty():
        return "terminal"
    return None


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}{unit}" if not suffix else f"{n:.1f}{suffix}{unit}"
        n /= 1000.0
    return f"{n:.1f}{unit}"


class _Bar:
    """One node's (or a group of nodes') counts, and its tqdm bar once it is drawn."""

    def __init__(self, desc: str, total: int, done: int) -> None:
        self.desc = desc
        self.total = total
        self.done = done
        self.rows = 0
        self.written = 0
        self.bar = None

    def _postfix(self) -> str:
        return f"{_human(self.rows)} rows, {human_bytes(self.written)}"

    def draw(self, tqdm_cls, position: int, leave: bool, file) -> None:
        self.bar = tqdm_cls(
            total=self.total,
            initial=self.done,
            desc=self.desc,
            unit="task",
            position=position,
            leave=leave,
            file=file,
            dynamic_ncols=True,
            mininterval=0.2,
        )
        self.bar.set_postfix_str(self._postfix(), refresh=True)

    def add(self, rows: int, written: int) -> None:
        self.done += 1
        self.rows += rows
        self.written += written
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
            self.bar.update(1)


class ProgressBars(SchedulerListener):
    """A scheduler listener that draws progress bars (see the module docstring).

    Counting starts with the run; the bars themselves are drawn once the run has lasted
    ``DELAY_SECONDS`` (tqdm's own ``delay`` is not used: a bar it has drawn by ``refresh`` before
    the delay would not be erased by ``close``).
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._bars: List[_Bar] = []
        self._of_node: Dict[int, _Bar] = {}
        self._started = 0.0
        self._drawn = False
        self._last_refresh = 0.0

    def _tqdm(self):
        if self.mode == "notebook" and _widgets_available():
            from tqdm.notebook import tqdm

            return tqdm, True
        from tqdm.std import tqdm

        return tqdm, self.mode == "terminal"

    def on_start(self, state) -> None:
        self._close()
        todo: Dict[int, List[int]] = {}  # node id -> [to run, already done]
        labels: Dict[int, str] = {}
        for key, t in state.tasks.items():
            if t.exec_on_scheduler:
                continue
            c = todo.setdefault(t.node_id, [0, 0])
            if key in state.done:
                c[1] += 1
            else:
                c[0] += 1
            labels.setdefault(t.node_id, _short_label(t))
        todo = {nid: c for nid, c in todo.items() if c[0] > 0}
        if not todo:
            return
        self._started = time.monotonic()
        if self.mode != "terminal" and not (self.mode == "notebook" and _widgets_available()):
            bar = _Bar("smallpond", sum(c[0] for c in todo.values()), 0)
            self._bars.append(bar)
            self._of_node = {nid: bar for nid in todo}
            return
        ids = sorted(todo)
        shown, rest = ids[:MAX_NODE_BARS], ids[MAX_NODE_BARS:]
        width = max(len(labels[i]) for i in shown)
        for nid in shown:
            to_run, done = todo[nid]
            bar = _Bar(labels[nid].ljust(width), to_run + done, done)
            self._bars.append(bar)
            self._of_node[nid] = bar
        if rest:
            bar = _Bar(f"{len(rest)} more nodes".ljust(width), sum(todo[i][0] for i in rest), 0)
            self._bars.append(bar)
            self._of_node.update({nid: bar for nid in rest})

    def on_reused(self, task, entry) -> None:
        bar = self._of_node.get(task.node_id)
        if bar is not None:
            bar.add(0, 0)

    def _draw(self) -> None:
        tqdm, _ = self._tqdm()
        leave = self.mode != "terminal"  # a notebook or a log keeps the final state; a terminal is cleared
        for pos, b in enumerate(self._bars):
            b.draw(tqdm, pos, leave, sys.stderr)
        self._drawn = True
        _active.append(self)

    def on_completion(self, task, c, decision) -> None:
        if decision is not None:
            return
        bar = self._of_node.get(task.node_id)
        if bar is not None:
            bar.add(int(c.stats.get("rows") or 0), int(c.stats.get("bytes") or 0))

    def on_tick(self, state, elapsed: float) -> None:
        if not self._bars:
            return
        now = time.monotonic()
        if not self._drawn:
            if now - self._started >= DELAY_SECONDS:
                self._draw()
                self._last_refresh = now
            return
        if now - self._last_refresh >= _REFRESH_SECONDS:
            self._last_refresh = now
            for b in self._bars:
                b.bar.refresh()

    def on_end(self, state, ok: bool) -> None:
        self._close()

    def _close(self) -> None:
        bars, self._bars, self._of_node = self._bars, [], {}
        drawn, self._drawn = self._drawn, False
        if drawn:
            for b in reversed(bars):  # bottom first, so the cursor ends where the first bar was
                try:
                    b.bar.close()
                except Exception:
                    pass
        if self in _active:
            _active.remove(self)


def _short_label(task) -> str:
    node = task.node
    op = getattr(node, "df_op", None) if node is not None else None
    name = getattr(node, "output_name", None) if node is not None else None
    base = task.node_label.split(" ")[0]
    return base + (f" {op}" if op else "") + (f" {name}" if name else "")


def write_console(message: str) -> None:
    """Write a log line to stderr; with bars on a terminal, above them (a loguru sink)."""
    err = sys.stderr
    if _active and any(p.mode == "terminal" for p in _active):
        from tqdm.std import tqdm

        with tqdm.external_write_mode(file=err):
            err.write(message)
            err.flush()
        return
    err.write(message)
    err.flush()


def console_listeners() -> List[SchedulerListener]:
    """The console observers of a job: progress bars when :func:`progress_mode` allows them."""
    mode = progress_mode()
    return [ProgressBars(mode)] if mode else []
