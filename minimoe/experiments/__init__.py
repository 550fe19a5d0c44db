"""The course's two long experiments, whose stored runs notebooks 04 and 10 read.

Its modules:

    capacity   notebook 04: facts stored in bits by dense and MoE models, seeds batched
    miniature  notebook 10: DeepSeek-V4 shrunk by a stated rule, trained beside its twins
"""
