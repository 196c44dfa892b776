"""smallpond.logical.node: LogicalPlan explain and DOT graph, node ids and call sites."""

from __future__ import annotations

import os
import re
import shutil

from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)

THIS_FILE = os.path.abspath(__file__)


def url_plan(sink: str = "/tmp/never_written"):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/data/*.parquet"]))
    parts = DataSetPartitionNode(ctx, (src,), 3)
    imported = SqlEngineNode(ctx, (parts,), "select split_part(url, '/', 1) as host from {0}", output_name="imported")
    hashed = HashPartitionNode(ctx, (imported,), 8, ["host"])
    ordered = SqlEngineNode(ctx, (hashed,), "select * from {0} order by host")
    final = DataSetPartitionNode(ctx, (ordered,), 1)
    return LogicalPlan(ctx, DataSinkNode(ctx, (final,), sink)), (src, parts, imported, hashed, ordered, final)


def test_explain_shows_partition_counts_and_call_sites():
    plan, (src, parts, imported, hashed, ordered, final) = url_plan()
    text = plan.explain_str()
    assert str(plan) == text
    lines = text.splitlines()
    assert lines[0].startswith("DataSinkNode-")
    counts = {m.group(1): int(m.group(2)) for m in (re.match(r"\s*(\S+).*\[(\d+) partition\(s\)\]", line) for line in lines) if m}
    assert counts[repr(src)] == 1
    assert counts[repr(parts)] == 3
    assert counts[repr(imported)] == 3
    assert counts[repr(hashed)] == 8
    assert counts[repr(ordered)] == 8
    assert counts[repr(final)] == 1
    assert "'imported'" in text and "order by host" in text and "hash ['host']" in text
    assert f"@ {THIS_FILE}:" in text
    # indentation follows the dependency depth
    depth = {repr(n): len(line) - len(line.lstrip()) for line in lines for n in (src, hashed) if line.strip().startswith(repr(n))}
    assert depth[repr(src)] > depth[repr(hashed)]


def test_explain_marks_incompatible_partitionings_instead_of_raising():
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/data/*.parquet"]))
    a = EvenlyDistributedPartitionNode(ctx, (src,), 2)
    b = EvenlyDistributedPartitionNode(ctx, (src,), 3)
    join = SqlEngineNode(ctx, (a, b), "select * from {0} join {1} using (id)")
    text = LogicalPlan(ctx, join).explain_str()
    assert f"{join!r} [? partition(s)]" in text


def test_shared_inputs_are_explained_once():
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/data/*.parquet"]))
    a = SqlEngineNode(ctx, (src,), "select 1 from {0}")
    b = SqlEngineNode(ctx, (src,), "select 2 from {0}")
    text = LogicalPlan(ctx, SqlEngineNode(ctx, (a, b), "select * from {0} union all select * from {1}")).explain_str()
    assert text.count(repr(src)) == 2 and text.count("(see above)") == 1


def test_graph_is_dot_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    plan, nodes = url_plan()
    graph = plan.graph()
    source = graph.source
    assert source.startswith("digraph") and source.rstrip().endswith("}")
    for node in nodes:
        assert f"n{int(node.id)} [label=" in source
    for node in nodes[1:]:
        for dep in node.input_deps:
            assert f"n{int(dep.id)} -> n{int(node.id)};" in source
    assert "8 partition(s)" in source
    path = str(tmp_path / "plan.dot")
    assert graph.render(path) is None
    assert open(path).read() == source
    assert os.listdir(tmp_path) == ["plan.dot"]


def test_node_ids_are_deterministic():
    (_, first), (_, second) = url_plan(), url_plan()
    assert [int(n.id) for n in first] == [int(n.id) for n in second] == sorted(int(n.id) for n in first)
    assert [n.location for n in first] != [] and all(n.location.startswith(THIS_FILE + ":") for n in first)


def test_networkx_view():
    plan, nodes = url_plan()
    g = plan.to_networkx()
    assert g.number_of_nodes() == len(plan.nodes) == 8  # DataSetPartitionNode(1) is two nodes
    assert g.has_edge(nodes[0].id, nodes[1].id)


def test_a_node_over_an_input_of_another_context_is_refused():
    """Node ids are numbered per Context: a node of one Context over an input of another would
    share its id (both 000001 here), which the planner and the task keys rely on being unique."""
    import pytest

    from smallpond.errors import ParameterError

    src = DataSourceNode(Context(), ParquetDataSet(["/data/x.parquet"]))
    with pytest.raises(ParameterError, match="was built with another Context") as info:
        SqlEngineNode(Context(), (src,), "select * from {0}")
    assert "test_plan.py" in str(info.value)  # the call site


def test_a_dimension_named_like_a_task_placeholder_is_refused():
    """A dimension is a placeholder of the SQL after it: named rand_seed, {rand_seed} became the
    partition index (0, 1, 2 instead of the task's seed), in silence."""
    import pytest

    from smallpond.errors import ParameterError
    from smallpond.logical.base import TASK_PLACEHOLDERS

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/data/x.parquet"]))
    for name in TASK_PLACEHOLDERS:
        with pytest.raises(ParameterError, match=f"dimension '{name}' is the name of a placeholder") as info:
            EvenlyDistributedPartitionNode(ctx, (src,), 3, dimension=name)
        assert "test_plan.py" in str(info.value)  # the call site
    with pytest.raises(ParameterError, match="dimension 'rand_seed'"):
        HashPartitionNode(ctx, (src,), 3, ["k"], data_partition_column="rand_seed")
    HashPartitionNode(ctx, (src,), 3, ["k"], data_partition_column="rand_seed", dimension="part")


def test_a_sink_output_path_may_start_with_tilde(tmp_path, monkeypatch):
    # "~/out" was refused as not absolute; the home directory is meant, as for read_parquet
    monkeypatch.setenv("HOME", str(tmp_path))
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["~/in.parquet"]))
    assert src.dataset.paths == [str(tmp_path / "in.parquet")]
    assert DataSinkNode(ctx, (src,), "~/out/").output_path == str(tmp_path / "out")


def test_explain_shows_what_a_projection_selects():
    """A source's ``columns=`` (and ``generated_columns=``) and a ProjectionNode's columns decide what
    its readers get, expressions included: explain showed neither (``ParquetDataSet([...])`` and
    a bare ``ProjectionNode-N``)."""
    from smallpond.logical.node import ProjectionNode

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/data/a.parquet"], columns=["a", "b * 2 as c"]))
    whole = DataSourceNode(ctx, ParquetDataSet(["/data/b.parquet"]))
    projected = ProjectionNode(ctx, src, ["a", "c"], generated_columns=["filename"])
    text = LogicalPlan(ctx, SqlEngineNode(ctx, (projected, whole), "select * from {0}, {1}")).explain_str()
    lines = {line.strip().split(" ")[0]: line for line in text.splitlines()}
    assert "ParquetDataSet(['/data/a.parquet']) columns=['a', 'b * 2 as c']  @" in lines[repr(src)]
    assert "] columns=['a', 'c'] generated_columns=['filename']  @" in lines[repr(projected)]
    assert "ParquetDataSet(['/data/b.parquet'])  @" in lines[repr(whole)]  # (all columns: nothing said)
