"""The ``hf`` backend: transformers + PEFT, CPU or CUDA.

- ``engine``: ``HFEngine``, the batch loop (prefill, then one token per step) and scoring;
- ``decode``: one row's decoding state and its step (sampling, stops, token healing);
- ``vocab``: the vocabulary as text and the masks over it;
- ``load``: loading a model folder, and checking a LoRA fits before PEFT touches the model.
"""

from __future__ import annotations

from helixloom.engine.hf.engine import HFEngine

__all__ = ["HFEngine"]
