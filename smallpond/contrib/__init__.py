"""Ready-made nodes: copies of Arrow tables and streams, and logging a dataset."""

from smallpond.contrib.copy_table import CopyArrowTable, StreamCopy
from smallpond.contrib.log_dataset import LogDataSet

__all__ = ["CopyArrowTable", "StreamCopy", "LogDataSet"]
