"""Shared fixtures for the unit tests (the nbval notebook checks use conftest at the root)."""

import os

# The unit tests use many small shapes, so their time goes to XLA compiling, not running:
# cheaper compilation more than halves it. (`make test` runs the notebooks in a separate pytest
# process, so their kernels keep the default flags.)
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from minimoe.config import ModelConfig  # noqa: E402
from minimoe.model import Transformer  # noqa: E402

TINY = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                   max_seq_len=64)


@pytest.fixture
def tiny_cfg():
    return TINY


@pytest.fixture
def tiny_model():
    return Transformer(TINY, rngs=nnx.Rngs(0))
