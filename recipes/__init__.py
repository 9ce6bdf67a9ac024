"""The shipped recipes: ``train.py`` (the training script) and the YAML recipes beside it.

Installed with the package as ``lzn_recipes`` (``lzn recipes`` lists them, ``lzn recipes cp``
copies one to edit); from a clone, ``deepspeed recipes/train.py --recipe NAME.yaml``.
"""
