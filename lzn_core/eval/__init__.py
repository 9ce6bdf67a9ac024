"""Evaluation: model-free metrics, the paper's protocols on a model, the report of ``lzn eval``,
and the periodic evaluation of training.

* :mod:`~lzn_core.eval.metrics`: accuracy, ECE, AUROC, Fréchet and kernel distances, linear probe
  (tensors in, numbers out; the features they compare are a modality's, e.g. ``lzn_image.features``);
* :mod:`~lzn_core.eval.protocol`: classification through a zonal decoder, the α × batch sweep,
  reconstruction error, samples, OOD confidences, probe features;
* :mod:`~lzn_core.eval.report`: every metric that applies to a model (``lzn eval``);
* :mod:`~lzn_core.eval.training`: what ``recipes/train.py`` evaluates during training.
"""
