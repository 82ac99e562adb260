"""The isolated child process that runs generated code (coding benchmarks)."""
