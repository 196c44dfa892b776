"""Public constants and small helpers shared by every layer.

Nothing here imports heavy modules: `import smallpond.common` must stay cheap.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Sequence, TypeVar

T = TypeVar("T")

KB = 1024
MB = 1024 * KB
GB = 1024 * MB
TB = 1024 * GB

DEFAULT_MAX_RETRY_COUNT = 5
DEFAULT_MAX_FAIL_COUNT = 3
MAX_ROW_GROUP_SIZE = 10 * 1024 * 1024
MAX_ROW_GROUP_BYTES = 2 * GB
MAX_NUM_ROW_GROUPS = 256
MAX_PARQUET_FILE_BYTES = 8 * GB
DEFAULT_ROW_GROUP_SIZE = 122880
DEFAULT_ROW_GROUP_BYTES = DEFAULT_ROW_GROUP_SIZE * 4 * KB
DEFAULT_BATCH_SIZE = 122880
RAND_SEED_BYTE_LEN = 128
DATA_PARTITION_COLUMN_NAME = "__data_partition__"
PARQUET_METADATA_KEY_PREFIX = "SMALLPOND:"
INPUT_VIEW_PREFIX = "__input"
GENERATED_COLUMNS = ("filename", "file_row_number")


def pytest_running() -> bool:
    import sys

    return "pytest" in sys.modules


def clamp_value(val, minval, maxval):
    return max(minval, min(val, maxval))


def clamp_row_group_size(val, minval=DEFAULT_ROW_GROUP_SIZE, maxval=MAX_ROW_GROUP_SIZE):
    return clamp_value(val, minval, maxval)


def clamp_row_group_bytes(val, minval=DEFAULT_ROW_GROUP_BYTES, maxval=MAX_ROW_GROUP_BYTES):
    return clamp_value(val, minval, maxval)


def split_into_rows(items: Sequence[T], npartitions: int) -> List[List[T]]:
    """Split into `npartitions` contiguous chunks; the first ``len % n`` chunks get one extra item.

    >>> split_into_rows(list(range(10)), 3)
    [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    """
    items = list(items)
    if npartitions <= 0:
        raise ValueError(f"npartitions must be positive, got {npartitions}")
    q, r = divmod(len(items), npartitions)
    out, start = [], 0
    for i in range(npartitions):
        end = start + q + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out


def split_into_cols(items: Sequence[T], npartitions: int) -> List[List[T]]:
    """Round-robin split.

    >>> split_into_cols(list(range(5)), 2)
    [[0, 2, 4], [1, 3]]
    """
    if npartitions <= 0:
        raise ValueError(f"npartitions must be positive, got {npartitions}")
    items = list(items)
    return [items[i::npartitions] for i in range(npartitions)]


def get_nth_partition(items: Sequence[T], n: int, npartitions: int) -> List[T]:
    """The n-th chunk of :func:`split_into_rows` without building the others."""
    q, r = divmod(len(items), npartitions)
    start = n * q + min(n, r)
    end = start + q + (1 if n < r else 0)
    return list(items[start:end])


def next_power_of_two(x: int) -> int:
    return 2 ** (x - 1).bit_length()


def round_up(x: int, align: int = MB) -> int:
    return int(math.ceil(x / align) * align)


def first_value_in_dict(d: Dict[Any, T]) -> T:
    return next(iter(d.values())) if d else None


def chunks(items: Iterable[T], size: int) -> Iterable[List[T]]:
    buf: List[T] = []
    for it in items:
        buf.append(it)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


from smallpond.errors import InjectedFault, NonzeroExitCode, OutOfMemory, SmallpondError  # noqa: E402,F401
from smallpond.logical.udf import *  # noqa: E402,F401,F403
