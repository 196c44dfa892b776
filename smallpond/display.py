"""Results as text: the plain-text table of ``DataFrame.show`` and the HTML table of a frame's
notebook view. Cells are cut to a fixed width, so one long value cannot hide the others.
"""

from __future__ import annotations

CELL_WIDTH = 40


def cell(value) -> str:
    text = "null" if value is None else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def format_table(table, limit: int) -> str:
    """A plain-text table of ``table``'s rows, headed by column names and types."""
    import pyarrow as pa

    if table.num_columns == 0:
        return "(no columns)"
    names = table.column_names
    types = [str(f.type) for f in table.schema]
    cols = [[cell(v) for v in table.column(i).to_pylist()] for i in range(table.num_columns)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type) for f in table.schema]
    widths = [max([len(names[i]), len(types[i])] + [len(v) for v in cols[i]]) for i in range(len(names))]

    def line(values, align_numbers=False):
        return " | ".join(
            (v.rjust(w) if align_numbers and num else v.ljust(w)) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    out = [line(names), line(types), "-+-".join("-" * w for w in widths)]
    out.extend(line([c[r] for c in cols], True) for r in range(table.num_rows))
    out.append(
        f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}{', limit ' + str(limit) if table.num_rows >= limit else ''})"
    )
    return "\n".join(out)


def html_table(table) -> str:
    import html

    head = "".join(
        f"<th>{html.escape(n)}<br><small>{html.escape(str(f.type))}</small></th>"
        for n, f in zip(table.column_names, table.schema)
    )
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row.values()) + "</tr>" for row in table.to_pylist()
    )
    return f"<table><tr>{head}</tr>{rows}</table>"
