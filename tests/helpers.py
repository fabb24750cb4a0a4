"""Assert helpers that check namespace, device, dtype and shape, not just values."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import datasets
from nnxp.backends import numpy_conv, numpy_threads

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / f"{base}.gz").is_file() or (FASHION_DIR / base).is_file()
            for base in datasets.FILES.values()),
    reason=f"no Fashion-MNIST system copy in {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)


def assert_on(x: Any, backend: nnxp.Backend, dtype: str | None = None, shape: tuple | None = None) -> None:
    """``x`` is an array of ``backend``'s namespace, on its device, with the dtype and shape given."""
    assert backend.owns(x), f"array of {type(x).__module__}.{type(x).__name__} on {getattr(x, 'device', None)} " \
        f"is not on backend {backend.name} (device {backend.device})"
    if dtype is not None:
        assert x.dtype == backend.dtype(dtype), f"dtype {x.dtype} != {dtype}"
    if shape is not None:
        assert tuple(x.shape) == tuple(shape), f"shape {tuple(x.shape)} != {tuple(shape)}"


def assert_close(actual: Any, expected: Any, backend: nnxp.Backend | None = None, dtype: str | None = None,
                 rtol: float = 1e-6, atol: float = 1e-7, err_msg: str = "") -> None:
    """Values agree; when ``backend`` is given, ``actual`` must also live there (and have ``dtype``)."""
    if backend is not None:
        assert_on(actual, backend, dtype, getattr(expected, "shape", None))
    np.testing.assert_allclose(nnxp.to_numpy(actual), nnxp.to_numpy(expected), rtol=rtol, atol=atol,
                               err_msg=err_msg)


@contextlib.contextmanager
def split_kernels(monkeypatch: pytest.MonkeyPatch, threads: int = 2) -> Iterator[None]:
    """NumPy kernels split their passes over ``threads`` threads, even the tests' small arrays
    (a part of one element is worth a thread), as they do inside ``fit`` of a conv model, and
    work one image at a time within a part (the window kernels' cache-sized steps)."""
    monkeypatch.setattr(numpy_threads, "MIN_PART", 1)
    monkeypatch.setattr(numpy_conv, "STEP_BYTES", 1)
    monkeypatch.setattr(numpy_conv, "FUSED_STEP_BYTES", 1)
    nnxp.set_num_threads(threads)
    try:
        with numpy_threads.owned_threads():
            assert numpy_threads.splitting()
            yield
    finally:
        nnxp.set_num_threads(None)


def assert_run_plan_matches_layers(net: nnxp.Sequential, x: Any, g: Any) -> tuple[Any, Any]:
    """``net``'s forward and backward (its run plan: reordered or fused steps) give exactly the
    outputs, input gradient and parameter gradients of its layers run one by one in the order
    given. Returns the model's output and input gradient."""
    out = net.forward(x, training=True)
    gx = net.backward(g)
    grads = [{k: np.array(v) for k, v in layer.grads.items()} for layer in net.layers]
    h = x
    for layer in net.layers:  # the order given, each layer on its own
        h = layer.forward(h, True)
    gh = g
    for layer in reversed(net.layers):
        gh = layer.backward(gh)
    np.testing.assert_array_equal(out, h)
    np.testing.assert_array_equal(gx, gh)
    for before, layer in zip(grads, net.layers, strict=True):
        assert before.keys() == layer.grads.keys()
        for k, v in before.items():
            np.testing.assert_array_equal(v, layer.grads[k])
    return out, gx
