"""Bridges to other training stacks; each submodule imports its stack (an optional extra) itself.

* :mod:`fastunlearn.integrations.transformers` -- a Hugging Face ``Trainer`` that runs any
  fastunlearn method (``pip install fastunlearn[hf]``).
"""
