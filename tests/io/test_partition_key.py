"""The partition a file is loaded into by its partition column's values (``io/partition_key.py``),
through ``ParquetDataSet.load_partitioned_datasets`` as upstream scripts call it."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import ParameterError
from smallpond.logical.dataset import ParquetDataSet


def _load(tmp_path, columns: dict, n: int = 3):
    """The rows of each of ``n`` partitions of one file of ``columns``, loaded by its column ``k``."""
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table(columns), path)
    return [d.num_rows for d in ParquetDataSet([path]).load_partitioned_datasets(n, "k")]


@pytest.mark.parametrize(
    "keys,rows",
    [
        (pa.array([2, 2]), [0, 0, 2]),
        (pa.array([1.0, 1.0]), [0, 2, 0]),
        (pa.array([True, True]), [0, 2, 0]),  # a boolean is 0 or 1, as a shuffle reads it
        (pa.array([Decimal("2.00")] * 2, pa.decimal128(5, 2)), [0, 0, 2]),
        # text int() reads, as upstream 0.15 read the key: a script that loaded such files still does
        (pa.array(["01", "01"]), [0, 2, 0]),
        (pa.array(["1", "01"]), [0, 2, 0]),  # two texts of one number: one partition, not several
    ],
)
def test_a_file_goes_to_the_partition_its_column_names(tmp_path, keys, rows):
    assert _load(tmp_path, {"k": keys, "v": [0, 1]}) == rows


@pytest.mark.parametrize(
    "keys,said",
    [
        # the first row's key was taken for the file's: rows of partition 2 were loaded into 0
        (pa.array([0, 2]), "holds rows of several partitions in its column 'k' (0, 2): a file is loaded whole"),
        (pa.array(["01", "2"]), "holds rows of several partitions in its column 'k' (01, 2): a file is loaded whole"),
        # int() of the first row's value: 1.5 was partition 1
        (pa.array([1.5, 1.5]), "the partition column 'k' of "),
        (pa.array(["1.0", "1.0"]), "is '1.0', which names no partition: a partition is named by a whole number"),
        (pa.array([None, None], pa.int64()), "is NULL, which names no partition"),
    ],
)
def test_a_file_whose_column_names_no_one_partition_is_refused(tmp_path, keys, said):
    with pytest.raises(ParameterError) as info:
        _load(tmp_path, {"k": keys, "v": [0, 1]})
    assert said in str(info.value) and "f.parquet" in str(info.value)
    if keys.type == pa.float64():
        assert "is 1.5, which names no partition" in str(info.value)
