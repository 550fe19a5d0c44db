"""Shared fixtures for the unit tests (the nbval notebook checks use conftest at the root)."""

import pytest
from flax import nnx

from minimoe.config import ModelConfig
from minimoe.model import Transformer

TINY = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                   max_seq_len=64)


@pytest.fixture
def tiny_cfg():
    return TINY


@pytest.fixture
def tiny_model():
    return Transformer(TINY, rngs=nnx.Rngs(0))
