"""Training machinery around ``recipes/train.py``: the DeepSpeed engine (optimiser, lr schedule,
freezing, EMA, non-finite skipping) and the run's checkpoints.

* :mod:`~lzn_core.train.engine`: ``setup_distributed``, ``Engine``;
* :mod:`~lzn_core.train._deepspeed`: what lzn uses of DeepSpeed beyond its documented API, one list;
* :mod:`~lzn_core.train.checkpoint`: checkpoint directories, ``latest``, resolution, pruning;
* :mod:`~lzn_core.train.rundir`: a run directory and how a run starts in it (``--resume``,
  ``--fresh`` or refused), its ``metrics.jsonl``;
* :mod:`~lzn_core.train.rng`: each rank's global generators (seeded, saved, restored);
* :mod:`~lzn_core.train.failures`: errors as one line on rank 0 (``--debug``: tracebacks);
* :mod:`~lzn_core.train.launcher`: rank, world size and master from the launcher's environment;
* :mod:`~lzn_core.train.preemption`: stop signals agreed at a step boundary, checkpointed (exit 75).

The math of a training step is in ``recipes/train.py`` itself (readable top to bottom).
"""
