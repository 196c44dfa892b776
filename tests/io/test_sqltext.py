"""io.sqltext against DuckDB's own parser: a select list or ORDER BY list the check accepts is one
DuckDB reads as that part of the query, and one DuckDB reads so is accepted (for the words that
matter: clause words, names spelt as them, '.', AS, '::', parentheses, strings, comments)."""

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
    if node["where_clause"] or node["group_expressions"] or node["group_sets"] or node["having"] or node["qualify"]:
        return False
    modifiers = [m["type"] for m in node["modifiers"]]
    if shape == "select list":
        return all(m == "DISTINCT_MODIFIER" for m in modifiers)
    return modifiers == ["ORDER_MODIFIER"] and [s["class"] for s in node["select_list"]] == ["STAR"]


@pytest.mark.parametrize("shape", ["select list", "order by list"])
def test_the_check_agrees_with_duckdb(shape):
    """Random texts of up to six words: every text the check accepts that DuckDB parses stays the
    list (else a user's text changed the query: ``st.`` took the query's FROM as a field,
    ``* except`` began a set operation), and every text DuckDB reads as the list is accepted (else
    valid code was refused: ``st.from``, ``a as limit``, ``within group (order by a)``)."""
    con, rng = duckdb.connect(), random.Random(39)
    changed, refused = [], []
    for _ in range(3000):
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6)))
        query = f"select {text}\nfrom __t" if shape == "select list" else f"select * from __t order by {text}\n"
        stays, problem = _stays(con, query, shape), fragment_problem(text, shape)
        if stays is False and problem is None:
            changed.append(text)
        if stays is True and problem is not None:
            refused.append(text)
    assert changed == [] and refused == []


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


def test_a_partition_key_is_one_expression():
    """The ``expression`` shape (a partition key, pasted into ``hash(...)``): no list, no alias;
    a field spelt as a keyword is a name there too (``st.as``, ``st.from``)."""
    assert [
        t for t in ["st.as", "st.from", "cast(a as int)", "[a, b][1]", "{'x': a, 'y': b}"] if fragment_problem(t, "expression")
    ] == []
    assert [t for t in ["a, b", "a as p", "a as", "st.from from t"] if not fragment_problem(t, "expression")] == []
