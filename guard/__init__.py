"""Integration layer: audio I/O, the CLI, model wrappers, the HTTP service and reports."""
