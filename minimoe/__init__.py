"""minimoe: a small, readable Mixture-of-Experts language model in JAX + Flax NNX.

The main API is importable from the package itself::

    import minimoe as mm
    from flax import nnx

    cfg = mm.ModelConfig(moe=mm.MoEConfig(n_experts=8, top_k=2, d_expert=64))
    train, val = mm.course_corpus(mm.CorpusConfig(n_tokens=50_000))
    trainer = mm.Trainer(mm.Transformer(cfg, rngs=nnx.Rngs(0)), mm.TrainConfig(steps=50), train, val)
    trainer.run()

The package is laid out in the course's order, one room per part of the story (notebook
numbers on the left):

           config        the frozen configs every part reads, and what each setting means
           validation    the rules they are checked against when built
    01     blocks/       a dense transformer's blocks: norm, rope, ffn, attention
    01     model         the decoder LM, dense or MoE per layer, and sampling
    01     accounting    its parameter and FLOP counts
    02-04  moe/          router, experts, dispatch and the MoE layer
    05-06  long_context/ KV-cache sizes, MLA, sparse and DeepSeek-V4's compressed attention
    10     v4/           DeepSeek-V4's hyper-connections, multi-token prediction, FP8/FP4
    07     fast/         code that only makes the above faster, each piece tested equal
           training/     the course corpus and the train loop
    04, 10 experiments/  the two long experiments
    08-09  cost/, parallel/, checkpoints, bench, diagrams: tools around the model (the
                         serving calculator, expert parallelism, Hugging Face checkpoints,
                         the benchmark, the notebooks' diagrams)
    00-10  verify        how each notebook's "What we verified" prints a claim: the value,
                         its threshold and the margin between them

Each room's ``__init__`` lists its modules in reading order; every module is importable on
its own (``minimoe.moe.router``, ``minimoe.blocks.attention``, ...).

Layer constructors follow one convention: the settings first (a config, or ``d_model`` and a
config for the FFN layers), then ``rngs=`` as a keyword.
"""

__version__ = "0.1.0"

from .config import ModelConfig, MoEConfig
from .cost import from_hf_config
from .model import Transformer, generate
from .moe.layer import MoELayer, MoEStats
from .training.data import CorpusConfig, course_corpus
from .training.train import TrainConfig, Trainer

__all__ = ["ModelConfig", "MoEConfig", "Transformer", "generate", "MoELayer", "MoEStats",
           "TrainConfig", "Trainer", "CorpusConfig", "course_corpus", "from_hf_config"]
