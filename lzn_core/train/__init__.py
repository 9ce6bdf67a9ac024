"""Training machinery around ``recipes/train.py``: the DeepSpeed engine (optimiser, lr schedule,
freezing, EMA, non-finite skipping) and the run's checkpoints.

* :mod:`~lzn_core.train.engine`: ``setup_distributed``, ``Engine``;
* :mod:`~lzn_core.train.checkpoint`: checkpoint directories, ``latest``, resolution.

The math of a training step is in ``recipes/train.py`` itself (readable top to bottom).
"""
