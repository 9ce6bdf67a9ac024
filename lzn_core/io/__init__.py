"""Model files: the exported format, exports from a training run, sharing through the hub."""
