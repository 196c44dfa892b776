"""I/O helpers: atomic filesystem operations and Parquet/Arrow reading and writing."""
