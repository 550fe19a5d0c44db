"""Shared fixtures and settings for the unit tests (the nbval notebook checks use the conftest
at the root).

XLA reads ``XLA_FLAGS`` once, when JAX starts, so the flags are set here, before anything
imports JAX: whichever way the suite is run (``pytest``, ``make test``, an IDE), it sees
- 8 simulated CPU devices, for the expert-parallel tests (tests/test_parallel.py);
- cheaper compilation. The unit tests use many small shapes, so their time goes to XLA
  compiling, not running: ``--xla_backend_optimization_level=0`` more than halves it. Tests
  marked ``default_xla`` (numerics that optimisation could change: dispatch, attention,
  trained steps) are also run once more with XLA's default optimisation, in a subprocess
  (tests/test_default_xla.py). ``MINIMOE_DEFAULT_XLA=1`` skips the fast-compile flags.
"""

import os

_DEVICES = "--xla_force_host_platform_device_count=8"
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags = f"{_flags} {_DEVICES}"
if os.environ.get("MINIMOE_DEFAULT_XLA") != "1":
    _flags = f"{_flags} {_FAST_COMPILE}"
os.environ["XLA_FLAGS"] = _flags.strip()

import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from minimoe.config import ModelConfig  # noqa: E402
from minimoe.model import Transformer  # noqa: E402

TINY = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                   max_seq_len=64)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "default_xla: numerics also checked with XLA's default optimisation "
                   "(tests/test_default_xla.py reruns them in a subprocess)")


@pytest.fixture
def tiny_cfg():
    return TINY


@pytest.fixture
def tiny_model():
    return Transformer(TINY, rngs=nnx.Rngs(0))
