"""DeepSeek-V4's own pieces beyond attention (notebook 10).

Its modules:

    hash_routing       the first MoE layers' experts from a fixed token-id table (``tid2eid``)
    hyper_connections  mHC: ``hc_mult`` residual streams mixed by Sinkhorn-projected matrices
    mtp                multi-token prediction, and speculative decoding with its draft
    quant              FP8 and FP4 weights with power-of-two block scales
"""
