"""The picture of a plan: a DOT description of its nodes, drawn by Graphviz's ``dot`` when it exists.

:class:`Digraph` takes the arguments of ``graphviz.Digraph`` that scripts use (``render``,
``save``, ``pipe``, ``source``) without needing the ``graphviz`` package. Graphviz's ``dot`` is
optional: without it, ``render`` writes the DOT text only, warns, and returns None (a
``pipe`` has no text to fall back on and raises :class:`GraphvizNotFound`). ``dot`` runs under a
timeout, so a drawing never hangs a job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional, Sequence

from smallpond.errors import ParameterError, PlanError, SmallpondError
from smallpond.logical.base import Node
from smallpond.logical.graph import topological_order

#: seconds ``dot`` may take to draw a plan before it is stopped
DOT_TIMEOUT = 60


class GraphvizNotFound(SmallpondError, RuntimeError):
    """Graphviz's ``dot`` program is not installed (``graphviz.ExecutableNotFound`` is a RuntimeError too)."""


class Digraph:
    """A DOT description of a plan, with the ``graphviz.Digraph`` methods scripts call."""

    def __init__(self, source: str, name: str = "smallpond", format: str = "png") -> None:
        self.source = source
        self.name = name
        self.format = format

    def __str__(self) -> str:
        return self.source

    def save(self, filename: Optional[str] = None, directory: Optional[str] = None) -> str:
        """Write the DOT text to ``directory/filename`` (default ``{name}.gv``); returns its path."""
        path = os.path.join(directory or "", filename or f"{self.name}.gv")
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(self.source)
        return path

    def render(
        self,
        filename: Optional[str] = None,
        directory: Optional[str] = None,
        view: bool = False,
        cleanup: bool = False,
        format: Optional[str] = None,
        renderer: Optional[str] = None,
        formatter: Optional[str] = None,
        neato_no_op=None,
        quiet: bool = False,
        quiet_view: bool = False,
        *,
        outfile: Optional[str] = None,
        engine: Optional[str] = None,
    ) -> Optional[str]:
        """Write the DOT text (``save(filename, directory)``) and draw it as ``{that path}.{format}``
        (or ``outfile``, its format from its suffix, the DOT text beside it), as
        ``graphviz.Digraph.render`` does; returns
        the drawing's path. Without Graphviz's ``dot``, the DOT text is kept (even with
        ``cleanup``), a warning says so and None is returned. ``view=True`` is not supported
        here (nothing is opened: a warning says so)."""
        from smallpond.common import logger

        if outfile is not None and format is None:
            format = os.path.splitext(outfile)[1].lstrip(".") or None
        fmt = format or self.format
        if outfile is not None and filename is None and directory is None:
            filename = os.path.splitext(outfile)[0] + ".gv"  # the DOT text beside the drawing
        source = os.path.join(directory or "", filename or f"{self.name}.gv")
        if outfile is not None and os.path.abspath(outfile) == os.path.abspath(source):
            # dot would read and write one file (graphviz.render refuses it too)
            raise ParameterError(
                f"Digraph.render: outfile {outfile!r} is also the DOT source file; give outfile another "
                "name (its suffix is the format: 'plan.png') or pass filename= for the source"
            )
        path = self.save(filename, directory)
        if view:
            logger.warning("Digraph.render(view=True) has no effect here: open {} yourself", path)
        if shutil.which("dot") is None:
            logger.warning("Graphviz 'dot' not found: wrote {} as DOT text only (install Graphviz to draw it)", path)
            return None
        out = outfile if outfile is not None else f"{path}.{fmt}"
        extra = [f"-n{int(neato_no_op)}"] if neato_no_op else []
        self._dot(fmt, renderer, formatter, engine, extra + ["-o", out, path], quiet)
        if cleanup:
            os.remove(path)
        return out

    def pipe(self, format: Optional[str] = None, renderer=None, formatter=None, quiet: bool = False, *, engine=None) -> bytes:
        """The drawing as bytes (``graphviz.Digraph.pipe``); :class:`GraphvizNotFound` without ``dot``."""
        if shutil.which("dot") is None:
            raise GraphvizNotFound("Digraph.pipe: Graphviz 'dot' not found; install Graphviz, or use .source (DOT text)")
        return self._dot(format or self.format, renderer, formatter, engine, [], quiet, self.source.encode())

    def _dot(self, fmt, renderer, formatter, engine, args, quiet, stdin: Optional[bytes] = None) -> bytes:
        if not isinstance(fmt, str) or not fmt.replace("_", "").isalnum():
            raise ParameterError(f"Digraph.render: format must be a Graphviz output format such as 'png', got {fmt!r}")
        spec = ":".join([fmt] + [x for x in (renderer, formatter) if x])
        cmd = ["dot", f"-T{spec}"] + ([f"-K{engine}"] if engine else []) + args
        try:
            done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=DOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SmallpondError(f"Graphviz did not draw the plan within {DOT_TIMEOUT} s: {' '.join(cmd)}") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()
            raise SmallpondError(f"Graphviz failed (exit {done.returncode}) running {' '.join(cmd)}: {err}")
        if done.stderr and not quiet:
            from smallpond.common import logger

            logger.warning("Graphviz: {}", done.stderr.decode(errors="replace").strip())
        return done.stdout


def dot_graph(roots: Sequence[Node]) -> Digraph:
    """A DOT description of every node reachable from ``roots``."""
    lines = ["digraph smallpond {", "  rankdir=BT;", "  node [shape=box];"]
    for node in topological_order(list(roots), lambda n: n.input_deps):
        label = f"{node!r}\\n{partition_count(node)} partition(s)"
        if getattr(node, "df_op", None):
            label += f"\\nDataFrame.{node.df_op}"
        elif node.role:
            label += f"\\n{node.role}"
        if node.output_name:
            label += f"\\n{node.output_name}"
        lines.append(f'  n{int(node.id)} [label="{label}"];')
        for dep in node.input_deps:
            lines.append(f"  n{int(dep.id)} -> n{int(node.id)};")
    lines.append("}")
    return Digraph("\n".join(lines))


def partition_count(node: Node) -> str:
    """``node``'s partition count as text; ``?`` when its inputs do not fit together."""
    try:
        return str(node.num_partitions)
    except PlanError:
        return "?"
