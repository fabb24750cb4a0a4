"""Backend selection, naming, device transfer and mismatch errors."""

from __future__ import annotations

import copy
import importlib.util
import sys
import threading
import types

import numpy as np
import pytest
from conftest import ALL_BACKENDS, GPU_BACKENDS, works
from helpers import assert_close, assert_on

import nnxp
from nnxp import backends, layers, losses
from nnxp.backends import BackendMismatchError, BackendUnavailableError, resolve_backend

HAS_CUPY = importlib.util.find_spec("cupy") is not None


def _get(name: str) -> nnxp.Backend:
    try:
        return resolve_backend(name)
    except BackendUnavailableError as exc:
        pytest.skip(f"{name} unavailable: {exc}")


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the process default so NNXP_BACKEND is read again; restored afterwards."""
    monkeypatch.setattr(backends, "_default", None)
    monkeypatch.delenv("NNXP_BACKEND", raising=False)


# ------------------------------------------------------------------ names
def test_available_backends() -> None:
    names = nnxp.available_backends()
    assert isinstance(names, list)
    assert all(isinstance(n, str) for n in names)
    assert names[0] == "numpy"
    assert "array_api_strict" in names
    for n in names:
        assert isinstance(resolve_backend(n), nnxp.Backend)
    if not HAS_CUPY:
        assert "cupy" not in names


@pytest.mark.parametrize(
    ("name", "full"),
    [
        ("numpy", "numpy"),
        ("np", "numpy"),
        ("NumPy", "numpy"),
        ("numpy:cpu", "numpy"),
        ("array_api_strict", "array_api_strict"),
        ("strict", "array_api_strict"),
        ("array_api_strict:CPU_DEVICE", "array_api_strict"),
        ("array_api_strict:device1", "array_api_strict:device1"),
        ("strict:device1", "array_api_strict:device1"),
    ],
)
def test_backend_names(name: str, full: str) -> None:
    b = resolve_backend(name)
    assert b.name == full
    assert b is resolve_backend(full)  # cached: one object per backend
    assert repr(b).startswith(f"Backend({full!r}")


def test_strict_device1_is_a_different_device() -> None:
    import array_api_strict as xps

    a, b = resolve_backend("array_api_strict"), resolve_backend("array_api_strict:device1")
    assert a != b and hash(a) != hash(b)
    assert b.device == xps.Device("device1")
    assert a.device == xps.Device("CPU_DEVICE")
    assert b.xp is xps


def test_backend_copies_by_name() -> None:
    b = resolve_backend("array_api_strict:device1")
    assert copy.deepcopy(b) is b
    import pickle

    assert pickle.loads(pickle.dumps(b)) is b


def test_unknown_backend_lists_choices() -> None:
    with pytest.raises(ValueError, match="Unknown backend 'tensorflow'") as info:
        resolve_backend("tensorflow")
    msg = str(info.value)
    for choice in ("numpy", "array_api_strict", "cupy", "torch", "jax"):
        assert choice in msg
    assert "cupy:1" in msg and "torch:cuda" in msg  # says how to name a device
    with pytest.raises(ValueError, match="Unknown backend"):
        nnxp.set_backend("tensorflow:gpu")
    with pytest.raises(ValueError, match="Unknown backend"):
        nnxp.Sequential([layers.Dense(2, 1)], backend="mxnet")


def test_unknown_device_lists_choices() -> None:
    with pytest.raises(ValueError, match="device1"):
        resolve_backend("array_api_strict:device7")
    with pytest.raises(ValueError, match="cpu"):
        resolve_backend("numpy:gpu")


def test_backend_must_be_a_name() -> None:
    with pytest.raises(TypeError, match="backend must be a name"):
        resolve_backend(3)


# --------------------------------------------------------- default backend
def test_set_and_get_backend(fresh_default: None) -> None:
    assert nnxp.get_backend().name == "numpy"
    b = nnxp.set_backend("array_api_strict:device1")
    assert b.name == "array_api_strict:device1"
    assert nnxp.get_backend() is b
    net = nnxp.Sequential([layers.Dense(2, 1)])
    assert net.backend is b
    assert_on(net.layers[0].params["weight"], b, "float32", (2, 1))
    nnxp.set_backend(resolve_backend("numpy"))
    assert nnxp.get_backend().name == "numpy"


def test_use_backend_restores_on_exit(fresh_default: None) -> None:
    outer = nnxp.get_backend()
    with nnxp.use_backend("array_api_strict") as b:
        assert b.name == "array_api_strict"
        assert nnxp.get_backend() is b
    assert nnxp.get_backend() is outer


def test_use_backend_restores_on_exception(fresh_default: None) -> None:
    outer = nnxp.get_backend()
    with pytest.raises(RuntimeError, match="boom"), nnxp.use_backend("array_api_strict:device1"):
        assert nnxp.get_backend().name == "array_api_strict:device1"
        raise RuntimeError("boom")
    assert nnxp.get_backend() is outer


def test_use_backend_nested(fresh_default: None) -> None:
    with nnxp.use_backend("array_api_strict"):
        with nnxp.use_backend("array_api_strict:device1"):
            assert nnxp.get_backend().name == "array_api_strict:device1"
            with nnxp.use_backend("numpy"):
                assert nnxp.get_backend().name == "numpy"
            assert nnxp.get_backend().name == "array_api_strict:device1"
        assert nnxp.get_backend().name == "array_api_strict"
    assert nnxp.get_backend().name == "numpy"


def test_use_backend_beats_set_backend(fresh_default: None) -> None:
    nnxp.set_backend("array_api_strict")
    with nnxp.use_backend("numpy"):
        assert nnxp.get_backend().name == "numpy"
    assert nnxp.get_backend().name == "array_api_strict"


def test_use_backend_is_per_thread(fresh_default: None) -> None:
    seen = {}

    def worker() -> None:
        seen["thread"] = nnxp.get_backend().name

    with nnxp.use_backend("array_api_strict:device1"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert nnxp.get_backend().name == "array_api_strict:device1"
    assert seen["thread"] == "numpy"


def test_env_var_read_lazily(fresh_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # set after import: only the first get_backend() reads it
    monkeypatch.setenv("NNXP_BACKEND", "array_api_strict:device1")
    assert nnxp.get_backend().name == "array_api_strict:device1"
    net = nnxp.Sequential([layers.Dense(2, 1)])
    assert net.backend.name == "array_api_strict:device1"
    # set_backend overrides the environment; use_backend overrides both
    nnxp.set_backend("numpy")
    assert nnxp.get_backend().name == "numpy"
    with nnxp.use_backend("array_api_strict"):
        assert nnxp.get_backend().name == "array_api_strict"


def test_env_var_unknown_name_errors(fresh_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNXP_BACKEND", "nope")
    with pytest.raises(ValueError, match="Unknown backend 'nope'"):
        nnxp.get_backend()


def test_model_backend_wins_over_default(fresh_default: None) -> None:
    with nnxp.use_backend("numpy"):
        net = nnxp.Sequential([layers.Dense(2, 3), layers.ReLU(), layers.Dense(3, 1)],
                              backend="array_api_strict:device1")
        assert net.backend.name == "array_api_strict:device1"
        for layer in net.layers:
            for p in layer.params.values():
                assert_on(p, net.backend, "float32")
        out = net.predict(np.ones((4, 2), dtype=np.float32))
        assert_on(out, net.backend, "float32", (4, 1))
    with nnxp.use_backend("array_api_strict"):
        assert nnxp.Sequential([layers.Dense(2, 1)]).backend.name == "array_api_strict"


# ---------------------------------------------------------------- transfer
# every pair of the backends that work here (the GPU ones join where a CUDA device answers)
_HERE = [n for n in ALL_BACKENDS if works(n)]
PAIRS = [
    pytest.param(a, b, id=f"{a}->{b}", marks=[pytest.mark.gpu] if {a, b} & GPU_BACKENDS else [])
    for a in _HERE for b in _HERE
]


@pytest.mark.parametrize(("src", "dst"), PAIRS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_to_device_between_backends(src: str, dst: str, dtype: str) -> None:
    s, d = _get(src), _get(dst)
    host = np.arange(12, dtype=dtype).reshape(3, 4)
    x = nnxp.to_device(host, s)
    assert_on(x, s, dtype, (3, 4))
    y = nnxp.to_device(x, d)
    assert_on(y, d, dtype, (3, 4))
    back = nnxp.to_numpy(y)
    assert type(back) is np.ndarray
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host)
    assert nnxp.backend_of(y) is d
    # the source is untouched and still where it was
    assert_on(x, s, dtype, (3, 4))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_to_device_dtype_argument(src: str, dst: str) -> None:
    s, d = _get(src), _get(dst)
    x = nnxp.to_device(np.linspace(0, 1, 6, dtype=np.float32), s)
    for dt in ("float64", np.float64, np.dtype("float64"), d.dtype("float64")):
        y = nnxp.to_device(x, d, dtype=dt)
        assert_close(y, np.linspace(0, 1, 6, dtype=np.float32).astype(np.float64), d, "float64", rtol=0, atol=0)
    assert_on(nnxp.to_device(x, d, dtype="float32"), d, "float32", (6,))


def test_to_device_same_backend_no_copy(backend: nnxp.Backend) -> None:
    x = nnxp.to_device(np.ones(3, dtype=np.float32), backend)
    assert nnxp.to_device(x, backend) is x
    assert nnxp.to_device(x, backend, dtype="float32") is x
    assert nnxp.to_device(x) is x  # the fixture made it the default


def test_to_device_default_backend(backend: nnxp.Backend) -> None:
    y = nnxp.to_device([[1.0, 2.0]], dtype="float32")
    assert_on(y, backend, "float32", (1, 2))


def test_to_numpy_lists_and_scalars() -> None:
    np.testing.assert_array_equal(nnxp.to_numpy([[1, 2], [3, 4]]), np.array([[1, 2], [3, 4]]))
    assert nnxp.to_numpy(np.float32(2.5)).dtype == np.float32
    assert nnxp.to_numpy(3.0).shape == ()


def test_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3).requires_grad_(True)
    h = nnxp.to_numpy(t)
    assert type(h) is np.ndarray and h.dtype == np.float64
    np.testing.assert_array_equal(h, np.arange(6.0).reshape(2, 3))
    nc = torch.arange(6, dtype=torch.float32).reshape(2, 3).T  # non-contiguous
    np.testing.assert_array_equal(nnxp.to_numpy(nc), np.arange(6, dtype=np.float32).reshape(2, 3).T)
    for name in _HERE:
        b = resolve_backend(name)
        y = nnxp.to_device(nc, b, dtype="float64")
        assert_close(y, np.arange(6.0).reshape(2, 3).T, b, "float64", rtol=0, atol=0)
    assert nnxp.backend_of(t) is resolve_backend("torch")  # a tensor of someone's graph is a torch array
    with pytest.raises(TypeError, match="to_device"):
        nnxp.backend_of([1.0, 2.0])


class _DLPackOnly:
    """An object that speaks only DLPack (as a foreign library's array would)."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_dlpack_objects(backend: nnxp.Backend) -> None:
    host = np.arange(8, dtype=np.float32).reshape(2, 4)
    h = nnxp.to_numpy(_DLPackOnly(host))
    assert type(h) is np.ndarray
    np.testing.assert_array_equal(h, host)
    y = nnxp.to_device(_DLPackOnly(host), backend)
    assert_close(y, host, backend, "float32", rtol=0, atol=0)


def test_backend_of(backend: nnxp.Backend) -> None:
    x = nnxp.to_device(np.zeros(2, dtype=np.float32), backend)
    assert nnxp.backend_of(x) is backend
    assert nnxp.backend_of(np.float32(1.0)).name == "numpy"
    assert nnxp.backend_of(np.zeros(1)).name == "numpy"
    with pytest.raises(TypeError, match=r"nnxp\.to_device"):
        nnxp.backend_of([1.0, 2.0])


# -------------------------------------------------------------- mismatches
def _mismatch_pairs() -> list[tuple[str, str]]:
    names = ["numpy", "array_api_strict", "array_api_strict:device1"]
    return [(a, b) for a in names for b in names if a != b]


@pytest.mark.parametrize(("model_on", "data_on"), _mismatch_pairs())
def test_forward_mismatch_message(model_on: str, data_on: str) -> None:
    net = nnxp.Sequential([layers.Dense(2, 3), layers.Tanh(), layers.Dense(3, 1)], backend=model_on)
    x = nnxp.to_device(np.ones((4, 2), dtype=np.float32), data_on)
    with pytest.raises(BackendMismatchError) as info:
        net.forward(x)
    msg = str(info.value)
    assert f"'{data_on}'" in msg and f"'{model_on}'" in msg
    assert f"nnxp.to_device(x, '{model_on}')" in msg
    assert f"model.to('{data_on}')" in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("pred_on", "true_on"), _mismatch_pairs())
@pytest.mark.parametrize("loss", [losses.MSE(), losses.BinaryCrossEntropy(), losses.SoftmaxCrossEntropy()],
                         ids=lambda v: type(v).__name__)
def test_loss_mismatch_message(pred_on: str, true_on: str, loss: losses.Loss) -> None:
    p = nnxp.to_device(np.full((3, 2), 0.5, dtype=np.float32), pred_on)
    t_host = np.array([0, 1, 1]) if isinstance(loss, losses.SoftmaxCrossEntropy) else np.ones((3, 2), np.float32)
    t = nnxp.to_device(t_host, true_on)
    with pytest.raises(BackendMismatchError) as info:
        loss.forward(p, t)
    msg = str(info.value)
    assert f"'{pred_on}'" in msg and f"'{true_on}'" in msg
    assert f"nnxp.to_device(y_true, '{pred_on}')" in msg


@pytest.mark.filterwarnings("ignore:You are comparing a array_api_strict dtype:UserWarning")
@pytest.mark.parametrize(("layer_on", "data_on"), _mismatch_pairs())
def test_layer_never_moves_inputs(layer_on: str, data_on: str) -> None:
    """A standalone layer given an array of another backend/device raises (never computes silently)."""
    dense = layers.Dense(2, 3).build(layer_on, "float32", 0)
    x = nnxp.to_device(np.ones((4, 2), dtype=np.float32), data_on)
    if layer_on.split(":")[0] != data_on.split(":")[0]:  # another namespace: nnxp's own error
        with pytest.raises(BackendMismatchError) as info:
            dense.forward(x)
        assert f"'{data_on}'" in str(info.value) and f"'{layer_on}'" in str(info.value)
    else:  # same namespace, other device: the namespace refuses to combine them
        with pytest.raises(ValueError, match="device"):
            dense.forward(x)


def test_backend_check_names_what() -> None:
    b = resolve_backend("array_api_strict:device1")
    b.check(nnxp.to_device(np.ones(2), b), "labels")  # fine
    with pytest.raises(BackendMismatchError, match="The labels is on backend 'numpy'"):
        b.check(np.ones(2), "labels")
    with pytest.raises(BackendMismatchError, match=r"builtins\.list"):
        b.check([1.0], "input")


def test_strict_device1_never_silently_moves() -> None:
    import array_api_strict as xps

    d1 = resolve_backend("array_api_strict:device1")
    net = nnxp.Sequential([layers.Dense(2, 4), layers.ReLU(), layers.Dense(4, 2)], backend=d1)
    x = nnxp.to_device(np.random.default_rng(0).standard_normal((10, 2)), d1, dtype="float32")
    y = nnxp.to_device(np.arange(10) % 2, d1)
    net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer="sgd", epochs=1, batch_size=4, verbose=0)
    for layer in net.layers:
        for store in (layer.params, layer.grads):
            for v in store.values():
                assert_on(v, d1)
    for st in net.optimizer.state.values():
        for v in st.values():
            assert_on(v, d1)
    assert_on(net.predict(x), d1, "float32", (10, 2))
    # the namespace itself refuses to combine devices
    cpu = nnxp.to_device(np.ones(2, dtype=np.float32), "array_api_strict")
    with pytest.raises(ValueError, match="device"):
        cpu + nnxp.to_device(np.ones(2, dtype=np.float32), d1)
    assert cpu.device == xps.Device("CPU_DEVICE")


# -------------------------------------------------------------------- cupy
@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed here")
def test_cupy_not_installed_message() -> None:
    with pytest.raises(BackendUnavailableError, match="not installed") as info:
        resolve_backend("cupy")
    assert "pip install" in str(info.value)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        nnxp.Sequential([layers.Dense(2, 1)], backend="cupy:0")
    with pytest.raises(BackendUnavailableError, match="not installed"):
        nnxp.to_device(np.ones(2), "cupy")
    assert "cupy" not in nnxp.available_backends()


def _fake_cupy(count: int | Exception) -> types.ModuleType:
    cupy = types.ModuleType("cupy")

    class CUDARuntimeError(RuntimeError):
        pass

    def get_device_count() -> int:
        if isinstance(count, Exception):
            raise CUDARuntimeError(str(count))
        return count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count, CUDARuntimeError=CUDARuntimeError)
    cupy.cuda = types.SimpleNamespace(runtime=runtime)
    return cupy


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "no CUDA device"),
        (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), "no CUDA device"),
        (RuntimeError("cudaErrorInsufficientDriver: driver too old"), "driver"),
    ],
    ids=["zero-devices", "no-device-error", "driver-error"],
)
def test_cupy_unavailable_reasons(monkeypatch: pytest.MonkeyPatch, count, expected: str) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count))
    monkeypatch.setattr(backends, "_cache", {})
    with pytest.raises(BackendUnavailableError, match=expected):
        resolve_backend("cupy")
    assert "cupy" not in nnxp.available_backends()


def test_cupy_broken_import_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # import raises ImportError
    monkeypatch.setattr(backends, "_cache", {})
    with pytest.raises(BackendUnavailableError, match="not installed"):
        resolve_backend("cupy")


# ------------------------------------------------------ torch and jax: missing, no device, driver
@pytest.mark.parametrize("lib", ["torch", "jax"])
def test_library_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch, lib: str) -> None:
    monkeypatch.setitem(sys.modules, lib, None)  # import raises ImportError
    monkeypatch.setattr(backends, "_cache", {})
    with pytest.raises(BackendUnavailableError, match="not installed") as info:
        resolve_backend(lib)
    assert f"nnxp[{lib}]" in str(info.value)
    assert lib not in nnxp.available_backends()


def test_torch_device_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(backends, "_cache", {})
    with pytest.raises(ValueError, match="Unknown torch device 'tpu'"):
        resolve_backend("torch:tpu")
    # a CPU-only build
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(BackendUnavailableError, match="no CUDA support"):
        resolve_backend("torch:cuda")
    # a CUDA build that finds no usable device (no GPU or a failing driver)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(BackendUnavailableError, match="no CUDA device is usable"):
        resolve_backend("torch:cuda:0")
    # a device index past the count
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"torch:cuda:3 does not exist: this machine has 2"):
        resolve_backend("torch:cuda:3")
    # the driver fails at the first use
    real_zeros = torch.zeros

    def failing_zeros(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            raise RuntimeError("CUDA error: unknown error")
        return real_zeros(*args, device=device, **kwargs)

    monkeypatch.setattr(torch, "zeros", failing_zeros)
    with pytest.raises(BackendUnavailableError, match=r"failed its first use.*unknown error"):
        resolve_backend("torch:cuda:1")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="Metal backend is not available"):
        resolve_backend("torch:mps")


def test_jax_device_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    jax = pytest.importorskip("jax")
    monkeypatch.setattr(backends, "_cache", {})
    with pytest.raises(ValueError, match="Unknown jax device 'tpu'"):
        resolve_backend("jax:tpu")
    with pytest.raises(ValueError, match=r"jax:cpu:4 does not exist"):
        resolve_backend("jax:cpu:4")
    real_devices = jax.devices

    def no_gpu(kind=None):
        if kind == "gpu":
            raise RuntimeError("Unknown backend: 'gpu' requested, but no platforms that are instances of gpu")
        return real_devices(kind)

    monkeypatch.setattr(jax, "devices", no_gpu)
    with pytest.raises(BackendUnavailableError, match=r"JAX sees no GPU.*jax\[cuda12\]"):
        resolve_backend("jax:gpu")


def test_jax_float64_needs_x64() -> None:
    jax = pytest.importorskip("jax")
    b = resolve_backend("jax")
    assert jax.config.jax_enable_x64  # the backend switched it on
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(TypeError, match=r"64-bit mode.*jax_enable_x64"):
            b.dtype("float64")
        assert b.dtype("float32") == np.float32
    finally:
        jax.config.update("jax_enable_x64", True)
