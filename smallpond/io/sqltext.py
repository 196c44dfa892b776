"""SQL text as DuckDB's lexer reads it, without DuckDB: its code apart from strings, quoted names
and comments, and whether a piece of SQL pasted into a query stays the part of it it is meant to be.

Pure Python, so the driver checks what a user passes (``DataFrame.filter``, ``map``, a source's
``columns=``) where it is given, without loading DuckDB. The lexer follows DuckDB's: ``E'...'``
strings with backslash escapes, ``$$...$$`` and ``$tag$...$tag$`` strings, doubled quotes inside
quotes, nested block comments, ``$`` inside a name; text it leaves open runs to the end.
"""

from __future__ import annotations

import re
from typing import Optional

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_]\w*)?\$")


def without_quoted_text(sql: str, marks: bool = False, keep_quoted: bool = False) -> str:
    """``sql`` with each string literal (``'...'``, ``E'...'`` with its backslash escapes,
    ``$$...$$`` and ``$tag$...$tag$``), quoted identifier and comment replaced by one space (with
    ``marks``, a string by one ``'`` and a quoted identifier by one ``"``), as
    DuckDB's lexer ends them: what is left is code (keywords, names, operators, parentheses). A
    block comment nests (``/* /* */ ) */`` is one), and a ``$`` inside a name (``a$b$``) starts
    no dollar quote. An unterminated one runs to the end (:func:`leaves_text_open`). With
    ``keep_quoted``, strings and quoted names are kept as they are: only comments go."""
    out, i, n = [], 0, len(sql)
    while i < n:
        c = sql[i]
        mark = " "
        start = i
        if c in "'\"":
            mark = c if marks else " "
            backslash = c == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            j = i + 1
            while j < n:
                if backslash and sql[j] == "\\":
                    j += 2
                elif sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote inside
                        j += 2
                    else:
                        break
                else:
                    j += 1
            i = j + 1
        elif c == "$" and _DOLLAR_TAG.match(sql, i) and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")):
            tag = _DOLLAR_TAG.match(sql, i).group()
            mark = "'" if marks else " "
            j = sql.find(tag, i + len(tag))
            i = n if j == -1 else j + len(tag)
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j == -1 else j
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            out.append(c)
            i += 1
            continue
        out.append(sql[start:i] if keep_quoted and (c in "'\"" or c == "$") else mark)
    return "".join(out)


def leaves_text_open(sql: str) -> bool:
    """Whether ``sql`` ends inside a string literal, quoted identifier or block comment (one its
    text does not close; a ``--`` comment ends at a line break)."""
    return not without_quoted_text(sql + "\n)").endswith(")")


def top_level_text(sql: str) -> str:
    """``sql`` without its string literals, quoted identifiers, comments and parenthesized parts:
    what is left is the outermost statement's own clauses."""
    out, depth = [], 0
    for c in without_quoted_text(sql):
        if c == "(":
            depth += 1
            out.append(" ")
        elif c == ")":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(c)
    return "".join(out)


#: where DuckDB's lexer begins and ends a word: a name goes on through letters, digits, '_' and
#: '$' (a$from, order$n, limit$ are names), and a number ends where a letter follows it (1from is
#: the number 1 and FROM, 1.5limit 1.5 and LIMIT, 1e2from 1e2 and FROM)
_WORD_START = r"(?<![\w$])(?:\d[\d_]*(?:\.\d*)?(?:e[+-]?\d+)?)?"
_WORD_END = r"(?![\w$])"
#: the reserved words that begin a clause of a query (or a second query): at the top level of a
#: select list or an ORDER BY list they end it, and what follows becomes the query's own clauses
_CLAUSE_WORD = re.compile(
    _WORD_START
    + r"(from|where|group|having|qualify|window|union|intersect|except|order|limit|offset|select|using|fetch)"
    + _WORD_END,
    re.IGNORECASE,
)
#: what DuckDB reads as a name, not a clause, even when it is a reserved word: a field after a
#: '.' that is no decimal point (st.from, t.offset, "s".order, 1 .from; but 1.from is the number
#: 1. and FROM), a column's name after AS (a as limit) and a type after '::' (x::union(...))
_SPACES = re.compile(r"\s*")
_WITHIN = re.compile(r"\)\s*within\s*$", re.IGNORECASE)


#: how much code before a word decides how DuckDB reads it (:func:`word_is_a_name`,
#: :func:`is_distinct_from`): all these helpers look at
LOOK_BEHIND = 256


def code_before(code: str, i: int) -> str:
    """The code just before position ``i`` that decides how the word there is read (the last
    :data:`LOOK_BEHIND` characters): a long query is not copied per word."""
    return code[max(0, i - LOOK_BEHIND) : i]


def word_is_a_name(before: str) -> bool:
    """Whether DuckDB reads the word that follows code ``before`` (:func:`without_quoted_text`,
    with marks) as a name, whatever it is: a field after a '.' that is no decimal point (st.from,
    t.offset, "s".order, 1 .from; but 1.from is the number 1. and FROM), a column's name after AS
    (a as limit) and a type after '::' (x::union(...)). Looked for from the end, without regular
    expressions: this is asked at each keyword of a query, which may be long."""
    before = before[-LOOK_BEHIND:].rstrip()  # (what decides is just before the word)
    if before.endswith("::"):
        return True
    if before.endswith("."):
        i = len(before) - 1
        while i and (before[i - 1].isalnum() or before[i - 1] in "_$"):
            i -= 1
        return not before[i : len(before) - 1][:1].isdigit()  # (a token that starts with a digit: a number)
    if before[-2:].lower() == "as":
        i = len(before) - 2
        while i and (before[i - 1].isalnum() or before[i - 1] in "_$"):
            i -= 1
        if i == len(before) - 2 or before[i].isdigit():  # (AS a word of its own, or after a number: 2as limit)
            return not word_is_a_name(before[:-2])  # (st.as from: AS is the field's name there, FROM a clause)
    return False


def is_distinct_from(before: str) -> bool:
    """Whether the FROM that follows code ``before`` is that of ``a IS [NOT] DISTINCT FROM b``."""
    before = before[-LOOK_BEHIND:].rstrip()
    return before[-8:].lower() == "distinct" and bool(re.search(r"\bis\s+(?:not\s+)?distinct$", before, re.IGNORECASE))


def _clause_word_at_top_level(text: str) -> Optional[str]:
    """The first clause word (:data:`_CLAUSE_WORD`) of ``text`` (balanced, nothing left open) that
    DuckDB would read as the start of a clause at its top level, else None. Not one: a word in
    parentheses, strings, quoted names or comments; a name (:func:`word_is_a_name`); the FROM of
    ``is [not] distinct from``; the EXCEPT of ``* except (...)``; the GROUP of an ordered-set
    aggregate's ``within group (order by ...)``."""
    code = without_quoted_text(text, marks=True)
    depth = 0
    for m in re.finditer(r"[()]|" + _CLAUSE_WORD.pattern, code, re.IGNORECASE):
        t = m.group(1) or m.group()
        if t in "()":
            depth += 1 if t == "(" else -1
            continue
        if depth:
            continue
        before = code_before(code, m.start(1)).rstrip()
        after = code[_SPACES.match(code, m.end()).end() :][:1]  # (the next character, if any)
        word = t.lower()
        if word_is_a_name(before) or word == "from" and is_distinct_from(before):
            continue
        if word == "except" and before.endswith("*") and after:
            continue  # * EXCEPT (a): the columns but a (with nothing after, the query's FROM would follow)
        if word == "group" and _WITHIN.search(before) and after.startswith("("):
            continue  # percentile_cont(0.5) WITHIN GROUP (ORDER BY x)
        return t
    return None


#: a condition that is a query (``select ...``, ``with ...``, FROM first, ``(select 1) union
#: select 2``): in ``where (...)`` it is a subquery, whose clauses are its own. Each word here is
#: reserved (no expression begins with it), but ``values``, a name unless a list follows
_QUERY_START = re.compile(
    r"[\s(]*(?:(?:select|with|from|table|desc|describe|summarize|show|pivot|pivot_longer|pivot_wider|unpivot)(?![\w$])|values\s*\()",
    re.IGNORECASE,
)

#: the shapes of SQL pasted into smallpond's own queries, and where each goes (a list's items are
#: separated by top-level commas; a condition is enclosed in parentheses)
FRAGMENT_SHAPES = {
    "condition": "select * from {0} where (<text>)",
    "select list": "select <text> from {0}",
    "order by list": "select * from {0} order by <text>",
    "expression": "hash(<text>)",  # (a partition key: one value, no alias)
}


def fragment_problem(text: str, shape: str = "condition") -> Optional[str]:
    """Why SQL ``text`` pasted into a query as ``shape`` (one of :data:`FRAGMENT_SHAPES`) would not
    stay that part of the query, else None: it closes a parenthesis it did not open (``a > 1) or
    (1=1`` turns the condition ``where ({text})`` into two), leaves one open, holds a ``;`` (a
    second statement) or leaves a string, quoted name or comment open (the query around it would
    fail to parse). A select list or an ORDER BY list, which nothing encloses, may not hold a
    clause of its own at its top level either (``a from t union all select 9``, ``b limit 1``):
    ``is [not] distinct from`` and ``* except (...)`` are expressions, not clauses. Nor may a
    condition (``a > 1 group by a``: the query would fail to parse), unless it is a query
    (``select ...``, ``from t select ...``), a subquery of the WHERE whose clauses are its own."""
    if shape not in FRAGMENT_SHAPES:
        raise ValueError(f"shape must be one of {sorted(FRAGMENT_SHAPES)}, got {shape!r}")
    if leaves_text_open(text):
        return "it leaves a string, quoted name or comment open"
    depth = 0
    code = without_quoted_text(text, marks=True)
    for c in code:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return "it closes a parenthesis it did not open, so it would end the query's own"
        elif c == ";":
            return "it holds a ';' outside quotes (one expression, not statements)"
    if depth:
        return "it leaves a parenthesis open"
    where = FRAGMENT_SHAPES[shape].replace("<text>", "...")
    if shape != "condition" and (word_is_a_name(code) or is_distinct_from(code)):
        return f"it ends in '.', AS, '::' or IS [NOT] DISTINCT, which would take the query's own next word ({where}) into it"
    if shape != "condition" or not _QUERY_START.match(code):  # (a subquery's clauses are its own)
        word = _clause_word_at_top_level(text)
        if word is not None:
            if shape == "condition":
                why = f"where a condition is one expression ({where}) a clause cannot stand, so the query would fail to parse"
            else:
                why = f"which would end the {shape} and begin a clause of the query's own ({where})"
            return f'it holds {word.upper()} outside parentheses, {why}; a name so spelt is written quoted ("{word}")'
    if shape == "expression":
        depth = 0
        for m in re.finditer(r"[()\[\]{},]|" + _WORD_START + "(as)" + _WORD_END, code, re.IGNORECASE):
            t = m.group(1) or m.group()
            depth += 1 if t in "([{" else -1 if t in ")]}" else 0
            if depth == 0 and t == ",":
                return "it holds a ',' outside parentheses: a list, not one expression"
            if depth == 0 and t.lower() == "as" and not word_is_a_name(code_before(code, m.start(1))):
                return "it holds AS outside parentheses: a name for a column, not one expression"
    return None
