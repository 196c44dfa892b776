"""Nodes that copy their input: whole tables (:class:`CopyArrowTable`) or batch by batch
(:class:`StreamCopy`). Useful to materialize a projection or to rewrite files with new Parquet
options."""

from __future__ import annotations

from typing import Iterable, List

from smallpond.logical.node import ArrowComputeNode, ArrowStreamNode


class CopyArrowTable(ArrowComputeNode):
    """Write the (first) input partition unchanged."""

    def process(self, runtime_ctx, input_tables: List):
        return input_tables[0]


class StreamCopy(ArrowStreamNode):
    """Stream the (first) input through unchanged, batch by batch."""

    def process(self, runtime_ctx, input_readers: List) -> Iterable:
        import pyarrow as pa

        for batch in input_readers[0]:
            yield pa.Table.from_batches([batch])
