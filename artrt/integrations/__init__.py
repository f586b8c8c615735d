"""Glue between artrt and other libraries, one module per library, each imported on demand
(the library is an optional dependency):

- :mod:`artrt.integrations.transformers`: artrt's causal attention as an attention
  implementation of Hugging Face transformers (``attn_implementation="artrt"``); install
  with ``pip install "artrt[hf]"``.
"""
