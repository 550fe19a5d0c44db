"""Speed code: faster ways to compute what the core computes, each tested equal to it.

Nothing here changes the math of the model; it changes how long the math takes. Notebook 07
times them side by side.

    buffer_dispatch the two capacity strategies, onehot (GShard's masks) and sort (a stable
                    sort and gathers), filling fixed [n_experts, capacity] buffers
                    (``MoEConfig.dispatch``)
    gather          sort dispatch's two gathers, with gradients written as gathers too
                    (``to_buffers`` / ``from_buffers``, used by ``dispatch_sort``)
    dropless        MegaBlocks' block-padded dispatch and the ``ragged_dot`` grouped matmul:
                    the two dispatch strategies that never drop (``MoEConfig.dispatch``)
    tiled_attention attention over a batch a few sequences at a time, so each tile's scores
                    stay in a CPU core's cache (``ModelConfig.attention_tiling``)

Each variant's test compares it with the plain computation it replaces, values and
gradients: ``tests/test_dispatch.py``, ``tests/test_model.py``.
"""
