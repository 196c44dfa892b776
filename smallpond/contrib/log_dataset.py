"""A node that logs the first rows of each input partition (to the task's log)."""

from __future__ import annotations

from smallpond.logical.node import PythonScriptNode


class LogDataSet(PythonScriptNode):
    """Log ``num_rows`` rows of each input dataset; writes nothing."""

    def __init__(self, ctx, input_deps, num_rows: int = 200, **kwargs) -> None:
        super().__init__(ctx, input_deps, **kwargs)
        self.num_rows = num_rows

    def process(self, runtime_ctx, input_datasets, output_path: str) -> bool:
        from smallpond.common import logger

        for ds in input_datasets:
            table = ds.to_arrow_table()
            logger.info("{} ({} rows):\n{}", ds, table.num_rows, table.slice(0, self.num_rows).to_pandas())
        return True
