"""Dispatch strategies (minimoe.moe.dispatch, minimoe.fast): every strategy against the reference and against
an explicit numpy loop over tokens and slots, with and without dropping."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimoe.fast.buffer_dispatch import buffer_maps, sort_assignments
from minimoe.fast.dropless import num_blocks
from minimoe.fast.gather import from_buffers, to_buffers
from minimoe.moe.dispatch import STRATEGIES, compute_capacity, dispatch, position_in_expert
from minimoe.moe.experts import expert_ffn

ATOL = 2e-5


def np_swiglu(x, wg, wu, wd):
    g = x @ wg
    return (g / (1 + np.exp(-g)) * (x @ wu)) @ wd


def loop_moe(x, idx, w, wg, wu, wd, capacity=None):
    """The definition, one (token, slot) at a time, with GShard's slot-major priority."""
    x, idx, w, wg, wu, wd = (np.asarray(a, np.float64) if a is not idx else np.asarray(a)
                             for a in (x, idx, w, wg, wu, wd))
    tokens, top_k = idx.shape
    n_experts = wg.shape[0]
    seen = np.zeros(n_experts, int)
    kept = np.zeros((tokens, top_k), bool)
    for s in range(top_k):  # all first choices before any second choice
        for t in range(tokens):
            e = idx[t, s]
            kept[t, s] = capacity is None or seen[e] < capacity
            seen[e] += 1
    y = np.zeros_like(x)
    for t in range(tokens):
        for s in range(top_k):
            if kept[t, s]:
                e = idx[t, s]
                y[t] += w[t, s] * np_swiglu(x[t], wg[e], wu[e], wd[e])
    return y, kept


def make_problem(seed, tokens, n_experts, top_k, d_model=6, d_expert=5, skew=False):
    """Random tokens, weights and distinct expert choices; ``skew`` sends most first choices
    to expert 0 (an uneven load)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, d_model)).astype(np.float32)
    rows = []
    for _ in range(tokens):
        perm = rng.permutation(n_experts)
        if skew and rng.random() < 0.8:
            perm = np.concatenate([[0], perm[perm != 0]])
        rows.append(perm[:top_k])
    idx = np.asarray(rows, np.int32).reshape(tokens, top_k)
    w = rng.random((tokens, top_k)).astype(np.float32)
    wg = (rng.normal(size=(n_experts, d_model, d_expert)) / np.sqrt(d_model)).astype(np.float32)
    wu = (rng.normal(size=(n_experts, d_model, d_expert)) / np.sqrt(d_model)).astype(np.float32)
    wd = (rng.normal(size=(n_experts, d_expert, d_model)) / np.sqrt(d_expert)).astype(np.float32)
    return tuple(jnp.asarray(a) for a in (x, idx, w, wg, wu, wd))


@functools.partial(jax.jit, static_argnums=(0, 7, 8))
def _jit_dispatch(strategy, x, idx, w, wg, wu, wd, capacity, block_size):
    return dispatch(strategy, x, idx, w, wg, wu, wd, capacity=capacity, block_size=block_size)


def jit_dispatch(strategy, *args, capacity=None, block_size=16):
    """Jitted dispatch; static arguments always passed the same way so the cache is shared."""
    return _jit_dispatch(strategy, *args, capacity, block_size)


# A few fixed shapes, reused by every test below: each (strategy, shape, capacity) compiles
# once and the jit cache serves the rest (compilation dominates the run time on a CPU).
SHAPES = [  # tokens, n_experts, top_k, skew
    (1, 1, 1, False),   # a single token and a single expert (top-1)
    (12, 6, 3, True),   # top-3, uneven load
    (16, 8, 2, True),   # top-2, uneven load
]
BIG = SHAPES[-1]


@pytest.mark.default_xla
@pytest.mark.parametrize("tokens, n_experts, top_k, skew", SHAPES)
def test_every_strategy_equals_reference_and_loop_without_drops(tokens, n_experts, top_k, skew):
    args = make_problem(tokens * 7 + n_experts, tokens, n_experts, top_k, skew=skew)
    expected, _ = loop_moe(*args)
    ref = jit_dispatch("reference", *args)
    np.testing.assert_allclose(ref.output, expected, atol=ATOL)
    counts = np.bincount(np.asarray(args[1]).ravel(), minlength=n_experts)
    for strategy in STRATEGIES:
        out = jit_dispatch(strategy, *args)
        np.testing.assert_allclose(out.output, ref.output, atol=ATOL, err_msg=strategy)
        assert out.kept.shape == (tokens, top_k) and out.kept.dtype == jnp.bool_
        assert bool(out.kept.all()), strategy
        assert out.tokens_per_expert.dtype == jnp.int32
        np.testing.assert_array_equal(out.tokens_per_expert, counts)


@pytest.mark.default_xla
@pytest.mark.parametrize("capacity", [1, 2])
def test_onehot_and_sort_drop_identically(capacity):
    tokens, n_experts, top_k, _ = BIG
    args = make_problem(3, tokens, n_experts, top_k, skew=True)
    expected, expected_kept = loop_moe(*args, capacity=capacity)
    assert not expected_kept.all()  # the test is about dropping
    results = {s: jit_dispatch(s, *args, capacity=capacity)
               for s in ("reference", "onehot", "sort")}
    for strategy, out in results.items():
        np.testing.assert_array_equal(out.kept, expected_kept, err_msg=strategy)
        np.testing.assert_allclose(out.output, expected, atol=ATOL, err_msg=strategy)
    np.testing.assert_array_equal(results["onehot"].kept, results["sort"].kept)
    # dropped count by hand: each expert keeps min(count, capacity) assignments
    counts = np.bincount(np.asarray(args[1]).ravel(), minlength=n_experts)
    dropped = np.maximum(counts - capacity, 0).sum()
    for out in results.values():
        assert (~np.asarray(out.kept)).sum() == dropped
        np.testing.assert_array_equal(out.tokens_per_expert, counts)  # counted before drops


def test_top1_choice_has_priority_over_second_choices():
    # token 0 picks (1, 0); tokens 1, 2 pick (0, 1); the others avoid experts 0 and 1.
    # With capacity 2, expert 0 serves the first choices of tokens 1 and 2 and drops token 0's
    # second choice, although token 0 comes first in the batch.
    x, _, w, wg, wu, wd = make_problem(0, *BIG[:3])
    idx = np.stack([2 + np.arange(16) % 6, 2 + (np.arange(16) + 1) % 6], axis=1)
    idx[0], idx[1], idx[2] = (1, 0), (0, 1), (0, 1)
    idx = jnp.asarray(idx, jnp.int32)
    np.testing.assert_array_equal(position_in_expert(idx, 8)[:3], [[0, 2], [0, 1], [1, 2]])
    expected, expected_kept = loop_moe(x, idx, w, wg, wu, wd, capacity=2)
    np.testing.assert_array_equal(expected_kept[:3], [[True, False], [True, True], [True, False]])
    for strategy in ("reference", "onehot", "sort"):
        out = jit_dispatch(strategy, x, idx, w, wg, wu, wd, capacity=2)
        np.testing.assert_array_equal(out.kept, expected_kept, err_msg=strategy)
        np.testing.assert_allclose(out.output, expected, atol=ATOL, err_msg=strategy)


def test_token_dropped_everywhere_gets_zero_output():
    # every token chooses experts (0, 1); capacity 2 keeps tokens 0 and 1 only.
    x, _, w, wg, wu, wd = make_problem(5, *BIG[:3])
    idx = jnp.tile(jnp.array([[0, 1]], jnp.int32), (16, 1))
    expected, kept = loop_moe(x, idx, w, wg, wu, wd, capacity=2)
    assert kept[:2].all() and not kept[2:].any()
    for strategy in ("reference", "onehot", "sort"):
        out = jit_dispatch(strategy, x, idx, w, wg, wu, wd, capacity=2)
        np.testing.assert_array_equal(out.kept, kept)
        np.testing.assert_array_equal(out.output[2:], np.zeros((14, 6)))  # residual unchanged
        np.testing.assert_allclose(out.output, expected, atol=ATOL)


@pytest.mark.parametrize("block_size", [1, 3])
def test_dropless_block_sizes(block_size):
    tokens, n_experts, top_k, _ = BIG
    args = make_problem(11, tokens, n_experts, top_k, skew=True)
    expected, _ = loop_moe(*args)
    out = jit_dispatch("dropless", *args, block_size=block_size)
    np.testing.assert_allclose(out.output, expected, atol=ATOL)
    counts = np.bincount(np.asarray(args[1]).ravel(), minlength=n_experts)
    assert np.ceil(counts / block_size).sum() <= num_blocks(tokens * top_k, n_experts, block_size)


@pytest.mark.default_xla
@pytest.mark.parametrize("capacity", [None, 2])
def test_gradients_of_all_strategies_match_reference(capacity):
    tokens, n_experts, top_k, _ = BIG
    args = make_problem(21, tokens, n_experts, top_k, skew=True)
    x, idx, w, wg, wu, wd = args
    probe = jnp.asarray(np.random.default_rng(0).normal(size=(tokens, 6)), jnp.float32)

    def grads(strategy, cap=capacity, weights_scale=None):
        def f(x, w, wg, wu, wd):
            if weights_scale is not None:
                w = w * weights_scale
            return jnp.sum(dispatch(strategy, x, idx, w, wg, wu, wd, capacity=cap).output * probe)
        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4)))(x, w, wg, wu, wd)

    ref = grads("reference")
    if capacity is not None:
        # with drops, the reference's gradient is the dropless one with the dropped weights
        # set to 0: no gradient reaches a dropped slot's weight or through it to the expert
        _, kept = loop_moe(*args, capacity=capacity)
        assert not kept.all()  # the case is about dropping
        masked = grads("reference", None, jnp.asarray(kept, jnp.float32))
        for g, r in zip(ref[:1] + ref[2:], masked[:1] + masked[2:]):
            np.testing.assert_allclose(g, r, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(ref[1])[~kept], 0.0)
        np.testing.assert_allclose(np.asarray(ref[1])[kept], np.asarray(masked[1])[kept],
                                   atol=1e-5)
    strategies = STRATEGIES[1:] if capacity is None else ("onehot", "sort")
    for strategy in strategies:
        for g, r in zip(grads(strategy), ref):
            assert np.isfinite(np.asarray(g)).all()
            np.testing.assert_allclose(g, r, atol=1e-4, err_msg=strategy)


def test_sort_assignments_groups_by_expert_keeping_priority():
    idx = jnp.array([[2, 0], [0, 2], [2, 1]], jnp.int32)
    s = jax.jit(sort_assignments, static_argnums=2)(idx, jnp.ones((3, 2)), 3)
    np.testing.assert_array_equal(s.expert, [0, 0, 1, 2, 2, 2])
    # expert 0: token 1 (slot 0) before token 0 (slot 1); expert 2: tokens 0, 2 then 1
    np.testing.assert_array_equal(s.token, [1, 0, 2, 0, 2, 1])
    np.testing.assert_array_equal(s.position, [0, 1, 0, 0, 1, 2])
    np.testing.assert_array_equal(s.counts, [2, 1, 3])


@pytest.mark.parametrize("capacity", [None, 3])
def test_buffer_gathers_equal_plain_gathers_values_and_gradients(capacity):
    # fast.gather writes each gather's gradient as the other gather; automatic
    # differentiation of the plain jnp.take formulas (scatter-adds) must give the same numbers,
    # including empty buffer rows and, with capacity 3, dropped assignments
    tokens, n_experts, top_k, d = 10, 4, 2, 5
    rng = np.random.default_rng(4)
    idx = jnp.asarray(np.stack([rng.choice(n_experts, top_k, replace=False)
                                for _ in range(tokens)]), jnp.int32)
    s = sort_assignments(idx, jnp.ones((tokens, top_k)), n_experts)
    cap = tokens if capacity is None else capacity
    slot_token, _, token_slots = buffer_maps(s, cap, tokens)
    if capacity is not None:
        assert (token_slots == n_experts * cap).any()  # something was dropped
    plain_to = lambda x: jnp.take(x, slot_token, axis=0, mode="fill", fill_value=0)
    plain_from = lambda y: jnp.take(y, token_slots, axis=0, mode="fill", fill_value=0).sum(1)
    x = jnp.asarray(rng.normal(size=(tokens, d)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(n_experts * cap, d)), jnp.float32)
    g_buf = jnp.asarray(rng.normal(size=(n_experts * cap, d)), jnp.float32)
    g_tok = jnp.asarray(rng.normal(size=(tokens, d)), jnp.float32)
    fast_to = lambda x: to_buffers(x, slot_token, token_slots)
    fast_from = lambda y: from_buffers(y, slot_token, token_slots)
    np.testing.assert_array_equal(fast_to(x), plain_to(x))
    np.testing.assert_allclose(fast_from(y), plain_from(y), rtol=1e-6, atol=1e-6)
    grad = lambda f, a, g: jax.grad(lambda a: jnp.sum(f(a) * g))(a)
    np.testing.assert_allclose(grad(fast_to, x, g_buf), grad(plain_to, x, g_buf),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad(fast_from, y, g_tok), grad(plain_from, y, g_tok),
                               rtol=1e-6, atol=1e-6)


def test_compute_capacity_and_errors():
    assert compute_capacity(16, 2, 8, None) is None
    assert compute_capacity(16, 2, 8, 1.0) == 4
    assert compute_capacity(16, 2, 8, 1.25) == 5
    assert compute_capacity(10, 1, 4, 1.0) == 3
    args = make_problem(0, 4, 2, 1)
    with pytest.raises(ValueError, match="dispatch strategy must be one of"):
        dispatch("magic", *args)
    for strategy in ("dropless", "ragged_dot"):
        with pytest.raises(ValueError, match="never drops"):
            dispatch(strategy, *args, capacity=2)
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        dispatch("sort", *args, capacity=0)


def test_expert_ffn_is_swiglu_per_expert():
    _, _, _, wg, wu, wd = make_problem(2, 1, 3, 1)
    x_buf = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 6)), jnp.float32)
    out = expert_ffn(x_buf, wg, wu, wd)
    for e in range(3):
        np.testing.assert_allclose(out[e], np_swiglu(np.asarray(x_buf[e]), np.asarray(wg[e]),
                                                     np.asarray(wu[e]), np.asarray(wd[e])),
                                   atol=ATOL)


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from(SHAPES), capacity=st.sampled_from([None, 1, 2]),
       skew=st.booleans(), seed=st.integers(0, 10_000))
def test_strategies_agree_property(shape, capacity, skew, seed):
    """Random data and loads on the fixed shapes (capacities only on the largest one)."""
    tokens, n_experts, top_k, _ = shape
    capacity = capacity if shape == BIG else None
    args = make_problem(seed, tokens, n_experts, top_k, skew=skew)
    expected, expected_kept = loop_moe(*args, capacity=capacity)
    strategies = STRATEGIES if capacity is None else ("reference", "onehot", "sort")
    for strategy in strategies:
        out = jit_dispatch(strategy, *args, capacity=capacity)
        np.testing.assert_array_equal(out.kept, expected_kept, err_msg=strategy)
        np.testing.assert_allclose(out.output, expected, atol=ATOL, err_msg=strategy)
