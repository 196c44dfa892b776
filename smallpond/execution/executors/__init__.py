"""Executor backends. Each implements :class:`~smallpond.execution.executors.base.Executor`."""
