"""The execution layer: planner, tasks, scheduler, executor backends and the Driver."""
