"""minimoe: a small, readable Mixture-of-Experts language model in JAX + Flax NNX.

The main API is importable from the package itself::

    import minimoe as mm
    from flax import nnx

    cfg = mm.ModelConfig(moe=mm.MoEConfig(n_experts=8, top_k=2, d_expert=64))
    train, val = mm.course_corpus(mm.CorpusConfig(n_tokens=50_000))
    trainer = mm.Trainer(mm.Transformer(cfg, rngs=nnx.Rngs(0)), mm.TrainConfig(steps=50), train, val)
    trainer.run()

Every module (``minimoe.router``, ``minimoe.dispatch``, ...) stays importable on its own.
Read them in the course's order: ``config``, ``norm``, ``rope``, ``ffn``, ``attention``,
``model``, ``accounting`` (a dense transformer); ``router``, ``experts``, ``dispatch``,
``moe`` (the MoE); ``mla``, ``sparse_attention``, ``compressed_attention``, ``kv_cache`` (long
context); ``hyper_connections``, ``mtp``, ``quant`` (DeepSeek-V4's block). ``minimoe.fast``
holds the code that only makes these faster; ``cost``, ``parallel``, ``checkpoints`` and
``bench`` are tools around the model.
Layer constructors follow one convention: the settings first (a config, or ``d_model`` and a
config for the FFN layers), then ``rngs=`` as a keyword.
"""

__version__ = "0.1.0"

from .config import ModelConfig, MoEConfig
from .cost import from_hf_config
from .data import CorpusConfig, course_corpus
from .model import Transformer, generate
from .moe import MoELayer, MoEStats
from .train import TrainConfig, Trainer

__all__ = ["ModelConfig", "MoEConfig", "Transformer", "generate", "MoELayer", "MoEStats",
           "TrainConfig", "Trainer", "CorpusConfig", "course_corpus", "from_hf_config"]
