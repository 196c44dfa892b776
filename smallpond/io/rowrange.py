"""Row ranges of Parquet files: what a partition by rows hands each task.

Pure Python (no pyarrow): a worker that unpickles a partition's description imports only this, and
pyarrow stays unloaded in a worker whose tasks never use it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import List, Sequence


@dataclass
class RowRange:
    """Rows ``[begin, end)`` of one Parquet file."""

    path: str
    data_size: int
    file_num_rows: int
    begin: int
    end: int

    @property
    def num_rows(self) -> int:
        return self.end - self.begin

    @property
    def estimated_data_size(self) -> int:
        return self.data_size * self.num_rows // self.file_num_rows if self.file_num_rows > 0 else 0

    @property
    def whole_file(self) -> bool:
        return self.begin == 0 and self.end == self.file_num_rows

    def take(self, n: int) -> "RowRange":
        """Split off the first ``n`` rows (mutates self to the remainder)."""
        n = min(n, self.num_rows)
        head = RowRange(self.path, self.data_size, self.file_num_rows, self.begin, self.begin + n)
        self.begin += n
        return head

    @staticmethod
    def partition_by_rows(row_ranges: Sequence["RowRange"], npartition: int) -> List[List["RowRange"]]:
        """Split ranges into ``npartition`` groups of near-equal row counts, earlier groups larger."""
        pending = [copy.copy(r) for r in row_ranges if r.num_rows > 0]
        total = sum(r.num_rows for r in pending)
        out: List[List[RowRange]] = []
        idx = 0
        for p in range(npartition):
            want = math.ceil(total / (npartition - p)) if npartition - p > 0 else 0
            total -= want
            group: List[RowRange] = []
            while want > 0 and idx < len(pending):
                r = pending[idx]
                piece = r.take(want)
                want -= piece.num_rows
                group.append(piece)
                if r.num_rows == 0:
                    idx += 1
            out.append(group)
        return out
