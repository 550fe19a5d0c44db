"""minimoe: a small, readable Mixture-of-Experts language model in JAX + Flax NNX."""

__version__ = "0.1.0"
