"""Benchmarks that compare smallpond with plain DuckDB on the same data and machine.

Each module is a script (``python -m benchmarks.gray_sort --help``) and exposes its plan-building
and validation functions to ``tests/benchmarks``.
"""
