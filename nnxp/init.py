"""Weight initialisers. They run on the host with a NumPy ``Generator`` in
float64 and return NumPy arrays; layers cast and move the result, so one seed
gives bit-identical parameters on every backend."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Initializer = Callable[[np.random.Generator, tuple[int, ...], int, int], np.ndarray]


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """He et al. (2015): N(0, 2 / fan_in), for the ReLU family."""
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


def he_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """He uniform: U(-sqrt(6 / fan_in), sqrt(6 / fan_in))."""
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape)


def glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot & Bengio (2010): U(-a, a), a = sqrt(6 / (fan_in + fan_out)); for tanh/sigmoid."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot normal: N(0, 2 / (fan_in + fan_out))."""
    return rng.standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))


INITIALIZERS: dict[str, Initializer] = {
    "he": he_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "glorot": glorot_uniform,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier": glorot_uniform,
}


def get_initializer(init: str | Initializer) -> Initializer:
    """Look up an initialiser by name, or pass a callable through.

    Args:
        init: a name from :data:`INITIALIZERS` or a callable
            ``(rng, shape, fan_in, fan_out) -> np.ndarray``.

    Returns:
        The initialiser function.
    """
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except KeyError:
        raise ValueError(
            f"Unknown initialiser {init!r}; choose one of {sorted(INITIALIZERS)} or pass a callable."
        ) from None
