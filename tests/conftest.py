"""One ``backend`` fixture drives the whole test matrix (as in SciPy's array
API tests): numpy, array_api_strict on its default device and on ``device1``,
torch and jax on the CPU, and cupy, torch:cuda and jax:gpu (marker ``gpu``)
where a CUDA device works. ``--backend NAME`` (may repeat) narrows the matrix;
a test whose backend cannot run is skipped with the reason (library not
installed / no CUDA device / driver error)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import nnxp
from nnxp.backends import BackendUnavailableError, resolve_backend

ALL_BACKENDS = ["numpy", "array_api_strict", "array_api_strict:device1", "torch", "jax",
                "cupy", "torch:cuda", "jax:gpu"]
GPU_BACKENDS = {"cupy", "torch:cuda", "jax:gpu"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend", action="append", default=None,
        help=f"run only on these backends (repeatable); choices: {ALL_BACKENDS}; "
             "'strict' selects both array_api_strict devices",
    )
    parser.addoption("--require-gpu", action="store_true",
                     help="fail instead of skipping when a selected GPU backend is unavailable")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a working CUDA device (cupy, torch:cuda, jax:gpu)")
    config.addinivalue_line("markers", "slow: trains real models (seconds to minutes)")
    config.addinivalue_line("markers", "torch: compares with a PyTorch twin")
    config.addinivalue_line("markers", "backend: parametrized over backends (set automatically)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.backend)


def works(name: str) -> bool:
    """The backend resolves here (its library imports and its device answers)."""
    try:
        resolve_backend(name)
    except BackendUnavailableError:
        return False
    return True


def _selected(config: pytest.Config) -> list[str]:
    chosen = config.getoption("--backend") or os.environ.get("NNXP_TEST_BACKENDS", "").split(",")
    chosen = [c for c in chosen if c]
    if not chosen:
        return ALL_BACKENDS
    out = []
    for c in chosen:
        if c == "strict":
            out += ["array_api_strict", "array_api_strict:device1"]
        elif c in ALL_BACKENDS:
            out.append(c)
        else:
            raise pytest.UsageError(f"--backend {c!r}: choose from {ALL_BACKENDS} or 'strict'")
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        params = [
            pytest.param(name, marks=[pytest.mark.gpu] if name in GPU_BACKENDS else [], id=name)
            for name in _selected(metafunc.config)
        ]
        metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> nnxp.Backend:
    """The :class:`nnxp.Backend` under test; the default backend inside the test."""
    try:
        b = resolve_backend(request.param)
    except BackendUnavailableError as exc:
        if request.config.getoption("--require-gpu") and request.param in GPU_BACKENDS:
            pytest.fail(f"{request.param} backend required but unavailable: {exc}")
        pytest.skip(f"{request.param} unavailable: {exc}")
    with nnxp.use_backend(b):
        yield b


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# Per-dtype tolerances for cross-backend agreement (results compared with numpy).
TOLERANCES = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-12)}
