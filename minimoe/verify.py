"""How a notebook states what it verified: the value, the threshold, and how far apart they are.

Every notebook ends with "What we verified", asserts of its lessons. A bare ``assert`` prints
nothing when it passes, so a reader cannot tell a claim that held by a wide margin from one
that held by a hair. ``margin`` asserts a measured value against a threshold and prints both
and their distance; ``within`` does the same for an error held to a tolerance.
"""

from __future__ import annotations

import math

import numpy as np

from minimoe.validation import positive_number


def show(v: float) -> str:
    """A number as the notebooks print it: an integer exactly, with thousands separators; a
    float with three significant digits below 1,000 and four from 1,000 up, written out with
    separators (``166,300``, never ``1.663e+05``)."""
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{float(f'{v:.4g}'):,.0f}"
    return f"{v:.3g}"


def _real(name: str, value) -> int | float:
    """``value`` (a Python, NumPy or JAX scalar) as a Python int or float; a bool, a string, a
    complex number or an array is a ``ValueError``."""
    arr = np.asarray(value)
    if arr.ndim or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return int(arr) if arr.dtype.kind in "iu" else float(arr)


def margin(label: str, value: float, threshold: float, above: bool = True) -> None:
    """Assert ``value > threshold`` (``above=True``) or ``value < threshold`` and print
    ``label: value > threshold (margin d)``, with ``d = |value - threshold|``.

    A NaN value fails (it is on neither side of any threshold).
    """
    v, t = _real("value", value), _real("threshold", threshold)
    if t != t:  # NaN
        raise ValueError(f"threshold must not be NaN (label {label!r})")
    ok = v > t if above else v < t
    d = abs(v - t)
    print(f"{label}: {show(v)} {'>' if above else '<'} {show(t)} (margin {show(d)})")
    assert ok, f"{label}: {show(v)} is not {'above' if above else 'below'} {show(t)}"


def within(label: str, error: float, tolerance: float) -> None:
    """Assert ``0 <= error < tolerance`` and print how many times below the tolerance the error
    is.

    Errors of equivalence checks are float round-off and change from CPU to CPU, so a factor
    above 10 prints as "more than 10x below": the stored output stays the same on every
    machine, and a check that passes by less than 10x shows its exact factor.
    """
    e, tol = _real("error", error), _real("tolerance", tolerance)
    positive_number("tolerance", tol)
    assert 0 <= e < tol, f"{label}: error {e:.2g} is not in [0, {tol:g})"
    factor = tol / e if e > 0 else math.inf
    below = "more than 10x" if factor > 10 else f"{factor:.1f}x"
    print(f"{label}: error {below} below the tolerance {tol:g}")
