"""The notebooks' verified-claim helpers: what they print, when they fail, what they refuse."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from minimoe.verify import margin, show, within


@pytest.mark.parametrize("v, text", [(7.1321, "7.13"), (-0.022634, "-0.0226"), (0.0009663, "0.000966"),
                                     (999.4, "999"), (1562.4, "1,562"), (166345.2, "166,300"),
                                     (-166345.2, "-166,300"), (0.0, "0"), (1_138_433, "1,138,433"),
                                     (np.int64(1_048_576), "1,048,576")])
def test_show_gives_integers_exactly_and_floats_three_or_four_significant_digits(v, text):
    assert show(v) == text


def test_margin_prints_value_threshold_and_distance(capsys):
    margin("gain", 7.13, 5)
    margin("loss", np.float64(-0.0226), 0, above=False)
    margin("jax scalar", jnp.float32(0.25), 0.5, above=False)
    margin("tokens", jnp.int32(20_011), 32_768, above=False)
    assert capsys.readouterr().out.splitlines() == [
        "gain: 7.13 > 5 (margin 2.13)",
        "loss: -0.0226 < 0 (margin 0.0226)",
        "jax scalar: 0.25 < 0.5 (margin 0.25)",
        "tokens: 20,011 < 32,768 (margin 12,757)"]


@pytest.mark.parametrize("value, threshold, above", [(4.9, 5, True), (5, 5, True), (5.1, 5, False),
                                                     (5, 5, False), (math.nan, 0, True),
                                                     (math.nan, 0, False)])
def test_margin_fails_on_the_wrong_side_at_the_threshold_and_for_nan(value, threshold, above):
    with pytest.raises(AssertionError, match="claim"):
        margin("claim", value, threshold, above=above)


@pytest.mark.parametrize("bad", [True, np.bool_(True), jnp.bool_(True), "1.0", np.ones(2), 1 + 2j, None])
def test_margin_refuses_what_is_not_a_real_number(bad):
    with pytest.raises(ValueError, match="value must be a real number"):
        margin("claim", bad, 0)
    with pytest.raises(ValueError, match="threshold must be a real number"):
        margin("claim", 1.0, bad)


def test_within_prints_a_machine_independent_factor_above_10_and_the_factor_below(capsys):
    within("tiny", 3e-8, 1e-5)
    within("exact", 0.0, 1e-5)
    within("close", 4e-6, 1e-5)
    assert capsys.readouterr().out.splitlines() == [
        "tiny: error more than 10x below the tolerance 1e-05",
        "exact: error more than 10x below the tolerance 1e-05",
        "close: error 2.5x below the tolerance 1e-05"]


@pytest.mark.parametrize("error", [1e-5, 2e-5, -1e-9, math.nan])
def test_within_fails_at_or_above_the_tolerance_negative_or_nan(error):
    with pytest.raises(AssertionError, match="check"):
        within("check", error, 1e-5)


@pytest.mark.parametrize("tolerance", [0, -1e-5, math.nan])
def test_within_refuses_a_tolerance_that_is_not_positive(tolerance):
    with pytest.raises(ValueError, match="tolerance must be a number > 0"):
        within("check", 1e-9, tolerance)


def test_margin_refuses_a_nan_threshold():
    with pytest.raises(ValueError, match="threshold must not be NaN"):
        margin("claim", 1.0, math.nan)
