"""The sweep: its CLI, config schema and validation, grid of jobs, store, stages, executors, rehearsal."""
