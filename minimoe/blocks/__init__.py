"""The blocks of a dense transformer (notebook 01).

Read in this order:

    norm        RMSNorm
    rope        rotary position embeddings (and YaRN's stretched frequencies)
    ffn         the SwiGLU feed-forward layer, and the weight init every module uses
    attention   causal attention with grouped KV heads (MHA/GQA/MQA), sliding window, KV cache

``minimoe.model`` stacks them into the decoder; ``minimoe.moe`` replaces the FFN.
"""
