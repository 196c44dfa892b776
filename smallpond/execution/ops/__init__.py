"""Task implementations, one module per family.

* :mod:`.structural` — sources, merges, splits, projections, partition consumers (metadata only);
* :mod:`.sql` — DuckDB tasks: SQL engine, hash partition;
* :mod:`.arrow` — Python, Arrow and pandas user code;
* :mod:`.sink` — publishing results into user directories.
"""
