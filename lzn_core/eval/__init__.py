"""Evaluation: model-free metrics, the paper's protocols on a model, the report of ``lzn eval``,
and the periodic evaluation of training.

* :mod:`~lzn_core.eval.metrics`: accuracy, ECE, AUROC, FID/KID, linear probe (tensors in, numbers out);
* :mod:`~lzn_core.eval.protocol`: classification through a zonal decoder, the α × batch sweep,
  reconstruction error, samples, OOD confidences, probe features;
* :mod:`~lzn_core.eval.features`: Inception features for FID/KID;
* :mod:`~lzn_core.eval.report`: every metric that applies to a model (``lzn eval``);
* :mod:`~lzn_core.eval.training`: what ``recipes/train.py`` evaluates during training.
"""
