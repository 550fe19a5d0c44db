"""Data and training: the course corpus and the train loop.

Its modules:

    data   the generated multi-domain course corpus, byte tokenizer, batching, text files
    train  AdamW or Muon, the jitted train step, evaluation, history
"""
