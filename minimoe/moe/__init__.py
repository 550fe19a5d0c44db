"""The Mixture-of-Experts layer (notebooks 02-04).

Read in this order:

    router         scores and top-k choices (softmax, Switch, noisy, DeepSeek's bias-corrected
                   and group-limited, expert choice), the balancing losses
    experts        the stacked expert weights and the batched expert FFN
    dispatch       how tokens reach their experts: the contract, capacity, and the reference
                   loop; ``dispatch(strategy, ...)`` also runs the four faster ones in
                   ``minimoe.fast``
    layer          ``MoELayer``: router + routed and shared experts, with its statistics
    routing_stats  what the notebooks measure about routing: balance, experts per domain,
                   experts shared by neighbouring tokens
"""
