"""Attention for long context (notebooks 05-06): the cache along heads and along the sequence.

Read in this order:

    kv_cache              how big the cache is per attention variant, by formula and measured
    mla                   Multi-head Latent Attention: a latent cache, naive and absorbed decode
    sparse_attention      DSA: a light indexer picks the top-k keys each query reads
    compressed_attention  DeepSeek-V4's CSA/HCA: compressed entries, a shared K=V head,
                          a sliding window and attention sinks
"""
