"""io.sqltext against DuckDB's own parser: a select list, ORDER BY list or filter condition the
check accepts is one DuckDB reads as that part of the query, and one DuckDB reads so is accepted
(for the words that matter: clause words, names spelt as them, '.', AS, '::', parentheses,
strings, comments, subqueries)."""

from __future__ import annotations

import json
import random

import duckdb
import pytest

from smallpond.io.sqltext import fragment_problem

_WORDS = (
    "a b st t 1 1. 9 'x' \"q\" * . , ( ) ( ) as :: int from where group by order limit offset union all "
    "select except exclude within is not distinct over filter partition window qualify having fetch using "
    "desc nulls last collate intersect and in values with join on -- \n /* */ case when then end"
).split(" ")

#: more words for conditions: their expressions, and queries (a condition may be a subquery)
_CONDITION_WORDS = _WORDS + "exists between or > = [ ] lambda x : true table describe desc".split(" ")
_CONDITION = "select * from __t where ("


def _balanced(query: str, start: int, end: int) -> bool:
    """Whether the parentheses DuckDB's own tokenizer finds in ``query[start:end]`` close as they open."""
    tokens = duckdb.tokenize(query)
    depth = 0
    for i, (pos, kind) in enumerate(tokens):
        if start <= pos < end and kind == duckdb.token_type.operator:
            for c in query[pos : min(tokens[i + 1][0] if i + 1 < len(tokens) else end, end)]:
                depth += 1 if c == "(" else -1 if c == ")" else 0
                if depth < 0:
                    return False
    return depth == 0


def _query(text: str, shape: str) -> str:
    if shape == "select list":
        return f"select {text}\nfrom __t"
    if shape == "order by list":
        return f"select * from __t order by {text}\n"
    return f"{_CONDITION}{text}\n)"


def _stays(con, query: str, shape: str):
    """True if DuckDB parses ``query`` as ``select <list> from __t`` (``select list``) or ``select *
    from __t order by <list>`` with nothing else, False if as anything else, None if not at all."""
    tree = json.loads(con.execute("select json_serialize_sql(?)", [query]).fetchall()[0][0])
    if tree.get("error"):
        return None
    if len(tree["statements"]) != 1:
        return False
    node = tree["statements"][0]["node"]
    source = node.get("from_table") or {}
    if node["type"] != "SELECT_NODE" or node["cte_map"]["map"] or source.get("type") != "BASE_TABLE":
        return False
    if source.get("table_name") != "__t" or source.get("alias") or source.get("sample") or node["sample"]:
        return False
    if node["group_expressions"] or node["group_sets"] or node["having"] or node["qualify"]:
        return False
    modifiers = [m["type"] for m in node["modifiers"]]
    if shape == "condition":  # (and "a) or (b" is not one: DuckDB reads the text's parentheses unbalanced)
        return bool(node["where_clause"]) and not modifiers and _balanced(query, len(_CONDITION), len(query) - 2)
    if node["where_clause"]:
        return False
    if shape == "select list":
        return all(m == "DISTINCT_MODIFIER" for m in modifiers)
    return modifiers == ["ORDER_MODIFIER"] and [s["class"] for s in node["select_list"]] == ["STAR"]


@pytest.mark.parametrize("shape", ["select list", "order by list", "condition"])
def test_the_check_agrees_with_duckdb(shape):
    """Random texts of up to six words: every text the check accepts that DuckDB parses stays the
    list or condition (else a user's text changed the query: ``st.`` took the query's FROM as a
    field, ``* except`` began a set operation, ``a) or (b`` closed the WHERE's parenthesis), and
    every text DuckDB reads as it is accepted (else valid code was refused: ``st.from``, ``a as
    limit``, ``within group (order by a)``; a condition that is a query, ``select ... limit 1``,
    ``desc t``). A condition holding a clause of its own (``a group by a``) fails to parse: the
    check refuses most such texts where they are given (those left are counted, not asserted)."""
    con, rng = duckdb.connect(), random.Random(39)
    changed, refused, late = [], [], 0
    words = _CONDITION_WORDS if shape == "condition" else _WORDS
    for _ in range(3000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        stays, problem = _stays(con, _query(text, shape), shape), fragment_problem(text, shape)
        if stays is False and problem is None:
            changed.append(text)
        if stays is True and problem is not None:
            refused.append(text)
        late += stays is None and problem is None
    assert changed == [] and refused == []
    if shape == "condition":  # (without the clause check: 2 in 3 of the texts, with it 1 in 3)
        assert late < 1500, late


def test_known_shapes():
    """The cases the random texts are meant to find, named."""
    accepted = [
        "st.from",
        "st.x.select",
        "a as offset",
        "1. as from",
        "percentile_cont(0.5) within group (order by a)",
        "x::union(n int)",
    ]
    assert [t for t in accepted if fragment_problem(t, "select list")] == []
    refused = ["st.", "1 .", "a as", "a is distinct", "* except", "1.from t", "a.as from t", "x within group by a"]
    assert [t for t in refused if not fragment_problem(t, "select list")] == []
    # a condition that is a query is a subquery of the WHERE: its clauses are its own
    conditions = [
        "select 1 limit 1",
        "(select 1) union select 2",
        "from t select a",
        "desc select 1 limit 1",
        "values (true)",
        "st.group",
    ]
    assert [t for t in conditions if fragment_problem(t, "condition")] == []
    refused = ["a group by a", "values > 1 limit 1", "exists (select 1) limit 1", "a) union (select 1"]
    assert [t for t in refused if not fragment_problem(t, "condition")] == []


@pytest.mark.parametrize("shape", ["select list", "order by list", "condition"])
def test_words_begin_and_end_where_duckdb_s_lexer_says(shape):
    """A name goes on through '$' (``a$from``, ``order$n``, ``limit$`` are names, no clause: they
    were refused), and a number ends where a letter follows it (``1limit 0`` is 1 and LIMIT 0: as
    an ORDER BY list it was accepted and the query returned no rows). Each text against DuckDB's
    parser, as the random texts are."""
    con = duckdb.connect()
    texts = ["a$from", "order$n", "limit$ > 1", "a$union + b$select", "x$order$", "1limit 0", "1offset 5", "a, 1from __t"]
    texts += ["1.5limit 1", "1e2union select 1", "a > 0limit 1", "x1from", "st.from$x", "a$from = 1 or order$n"]
    texts += ["2as limit", "2as from", "x2as limit", "a$as from __t", "1.5as qualify"]
    changed, refused = [], []
    for text in texts:
        stays, problem = _stays(con, _query(text, shape), shape), fragment_problem(text, shape)
        if stays is False and problem is None:
            changed.append(text)
        if stays is True and problem is not None:
            refused.append(text)
    assert changed == [] and refused == []
    assert fragment_problem("1limit 0", "order by list") is not None
    assert fragment_problem("a$as", "expression") is None and fragment_problem("1as p", "expression") is not None


def test_a_partition_key_is_one_expression():
    """The ``expression`` shape (a partition key, pasted into ``hash(...)``): no list, no alias;
    a field spelt as a keyword is a name there too (``st.as``, ``st.from``)."""
    assert [
        t for t in ["st.as", "st.from", "cast(a as int)", "[a, b][1]", "{'x': a, 'y': b}"] if fragment_problem(t, "expression")
    ] == []
    assert [t for t in ["a, b", "a as p", "a as", "st.from from t"] if not fragment_problem(t, "expression")] == []
