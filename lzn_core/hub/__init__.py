"""Models in and out of the framework: the authors' checkpoints, ..."""
