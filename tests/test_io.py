"""Checkpoints: round trips on and across backends, resume equivalence,
atomic writes, damaged or foreign files, byte order."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TOLERANCES, works
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers, losses, optim
from nnxp.io import CheckpointError


def _data(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def _net(backend, dtype: str = "float32", seed: int = 0, hidden: int = 6) -> nnxp.Sequential:
    return nnxp.Sequential([layers.Dense(4, hidden), layers.ReLU(), layers.Dense(hidden, 5), layers.Tanh(),
                            layers.Dense(5, 3)], backend=backend, dtype=dtype, seed=seed)


def _trained(backend, dtype: str = "float32", opt=None, epochs: int = 2) -> nnxp.Sequential:
    x, y = _data()
    net = _net(backend, dtype)
    net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=opt or optim.Adam(lr=0.01), epochs=epochs,
            batch_size=8, validation_data=_data(9, seed=1), verbose=0)
    return net


def _same_model(a: nnxp.Sequential, b: nnxp.Sequential, same_seed: bool = True) -> None:
    """Same architecture, bit-identical parameters and optimizer state, same bookkeeping."""
    assert [repr(la) for la in a.layers] == [repr(lb) for lb in b.layers]
    assert a.dtype == b.dtype and a.epoch == b.epoch
    assert a.seed == b.seed or not same_seed
    for (key, la, k), (_, lb, _) in zip(a.slots(), b.slots()):
        ha, hb = nnxp.to_numpy(la.params[k]), nnxp.to_numpy(lb.params[k])
        assert ha.dtype == hb.dtype and ha.tobytes() == hb.tobytes(), key
        assert_on(lb.params[k], b.backend, b.dtype)
    assert type(a.optimizer) is type(b.optimizer)
    assert a.optimizer.config() == b.optimizer.config() and a.optimizer.steps == b.optimizer.steps
    assert a.optimizer.state.keys() == b.optimizer.state.keys()
    for key, st in a.optimizer.state.items():
        assert st.keys() == b.optimizer.state[key].keys()
        for k, v in st.items():
            assert nnxp.to_numpy(v).tobytes() == nnxp.to_numpy(b.optimizer.state[key][k]).tobytes(), (key, k)
            assert_on(b.optimizer.state[key][k], b.backend, b.dtype)
    assert type(a.loss) is type(b.loss) and a.loss.config() == b.loss.config()
    assert a.history.epochs == b.history.epochs and a.history.history == b.history.history


# ------------------------------------------------------------ round trip
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip(backend: nnxp.Backend, dtype: str, tmp_path: Path) -> None:
    net = _trained(backend, dtype)
    path = tmp_path / "model.npz"
    net.save(str(path))
    loaded = nnxp.load(path, backend=backend)
    assert loaded.backend is backend
    _same_model(net, loaded)
    x, _ = _data(11, seed=2)
    assert_close(loaded.predict(x), net.predict(x), backend, dtype, rtol=0, atol=0)
    assert loaded.epoch == 2 and loaded.history.epochs == [1, 2]
    assert set(loaded.history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    # the default backend is the current one
    assert nnxp.load(path).backend is backend


@pytest.mark.parametrize("src", [b for b in ("numpy", "array_api_strict:device1", "torch", "jax") if works(b)])
def test_across_backends(backend: nnxp.Backend, src: str, tmp_path: Path) -> None:
    net = _trained(src)
    path = tmp_path / "m.npz"
    nnxp.save(net, path)
    loaded = nnxp.load(path, backend=backend)
    assert loaded.backend is backend
    _same_model(net, loaded)
    x, _ = _data(11, seed=2)
    # bit for bit where both sides multiply with NumPy's BLAS; torch and JAX bring their own
    same_blas = {backend.kind, nnxp.backends.resolve_backend(src).kind} <= {"numpy", "array_api_strict"}
    tol = {"rtol": 0, "atol": 0} if same_blas else TOLERANCES["float32"]
    assert_close(loaded.predict(x), nnxp.to_numpy(net.predict(x)), backend, "float32", **tol)
    # and it keeps training where it is
    loaded.fit(*_data(), epochs=1, batch_size=8, verbose=0)
    for _, layer, k in loaded.slots():
        assert_on(layer.params[k], backend, "float32")


def test_load_weights_into_existing_model(backend: nnxp.Backend, tmp_path: Path) -> None:
    net = _trained("array_api_strict:device1", opt=optim.SGD(lr=0.1, momentum=0.9))
    path = tmp_path / "m.npz"
    net.save(path)
    fresh = _net(backend, seed=99)
    assert fresh.load_weights(path) is fresh
    _same_model(net, fresh, same_seed=False)  # the model keeps its own seed


def test_model_without_optimizer(tmp_path: Path) -> None:
    net = _net("numpy")
    net.save(tmp_path / "m.npz")
    loaded = nnxp.load(tmp_path / "m.npz", backend="numpy")
    assert loaded.optimizer is None and loaded.loss is None and loaded.epoch == 0
    for (_, la, k), (_, lb, _) in zip(net.slots(), loaded.slots()):
        np.testing.assert_array_equal(nnxp.to_numpy(lb.params[k]), nnxp.to_numpy(la.params[k]))


# ------------------------------------------------------------- resume
@pytest.mark.parametrize("make_opt", [lambda: optim.SGD(lr=0.05, momentum=0.9), lambda: optim.Adam(lr=0.01),
                                      lambda: optim.AdamW(lr=0.01, weight_decay=0.1)],
                         ids=["momentum", "adam", "adamw"])
def test_resume_equivalence(make_opt, tmp_path: Path) -> None:
    x, y = _data(45)
    kw = dict(batch_size=8, shuffle=True, verbose=0)
    straight = _net("numpy", seed=3)
    straight.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=make_opt(), epochs=3, **kw)

    first = _net("numpy", seed=3)
    first.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=make_opt(), epochs=2, **kw)
    first.save(tmp_path / "ckpt.npz")
    resumed = nnxp.load(tmp_path / "ckpt.npz", backend="numpy")
    resumed.fit(x, y, epochs=1, **kw)  # loss and optimizer come from the checkpoint
    assert resumed.epoch == 3 and resumed.history.epochs == [1, 2, 3]
    for k in ("loss", "accuracy"):
        assert resumed.history[k] == straight.history[k]
    for (key, la, k), (_, lb, _) in zip(straight.slots(), resumed.slots()):
        np.testing.assert_array_equal(nnxp.to_numpy(lb.params[k]), nnxp.to_numpy(la.params[k]), err_msg=key)


# ----------------------------------------------------------- atomicity
def test_failed_write_keeps_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _trained("numpy", epochs=1)
    path = tmp_path / "model.npz"
    net.save(path)
    good = path.read_bytes()
    net.fit(*_data(), epochs=1, batch_size=8, verbose=0)  # now differs from the file

    def broken_savez(f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="No space left"):
        net.save(path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temp files left behind
    with pytest.raises(OSError):
        net.save(tmp_path / "new.npz")
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]

    def interrupted(f, *args, **kwargs):
        f.write(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        net.save(path)
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["model.npz"]
    monkeypatch.undo()
    assert nnxp.load(path, backend="numpy").epoch == 1


def test_save_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    net = _trained("numpy", epochs=1)
    net.save(path)
    net.fit(*_data(), epochs=1, batch_size=8, verbose=0)
    net.save(path)
    assert nnxp.load(path, backend="numpy").epoch == 2
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


# ------------------------------------------------------- foreign files
def test_not_a_checkpoint_npz(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(CheckpointError, match="not an nnxp checkpoint"):
        nnxp.load(path)


def test_bare_npy_file(tmp_path: Path) -> None:
    path = tmp_path / "w.npy"
    np.save(path, np.ones(3))
    with pytest.raises(CheckpointError, match="not an nnxp checkpoint"):
        nnxp.load(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    _trained("numpy", epochs=1).save(path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 10, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"truncated or not an \.npz"):
            nnxp.load(path)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.npz"
    path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(CheckpointError, match="not a readable nnxp checkpoint"):
        nnxp.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        nnxp.load(tmp_path / "nope.npz")


def _rewrite(path: Path, edit) -> None:
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    edit(meta, arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_wrong_format_and_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    _trained("numpy", epochs=1).save(path)
    _rewrite(path, lambda meta, a: meta.update(format="something-else"))
    with pytest.raises(CheckpointError, match="format 'something-else'"):
        nnxp.load(path)
    _trained("numpy", epochs=1).save(path)
    _rewrite(path, lambda meta, a: meta.update(version=99))
    with pytest.raises(CheckpointError, match="newer nnxp"):
        nnxp.load(path)


def test_damaged_checkpoint_missing_array(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    _trained("numpy", epochs=1).save(path)
    _rewrite(path, lambda meta, a: a.pop("param/2/bias"))
    with pytest.raises(CheckpointError, match="lacks param/2/bias"):
        nnxp.load(path, backend="numpy")


def test_different_architecture(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    _trained("numpy", epochs=1).save(path)
    other = _net("numpy", hidden=7)
    before = nnxp.to_numpy(other.layers[0].params["weight"]).copy()
    with pytest.raises(CheckpointError, match="different architecture") as info:
        other.load_weights(path)
    assert "in_features=4, 'out_features': 6" in str(info.value) or "'out_features': 6" in str(info.value)
    np.testing.assert_array_equal(nnxp.to_numpy(other.layers[0].params["weight"]), before)
    shorter = nnxp.Sequential([layers.Dense(4, 3)])
    with pytest.raises(CheckpointError, match="different architecture"):
        shorter.load_weights(path)
    assert issubclass(CheckpointError, ValueError)


def test_unknown_layer_type(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    _trained("numpy", epochs=1).save(path)
    _rewrite(path, lambda meta, a: meta["layers"][1].update(type="Conv9D"))
    with pytest.raises(CheckpointError, match="Conv9D"):
        nnxp.load(path)


# ----------------------------------------------------------- byte order
def test_arrays_saved_little_endian(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    _trained("array_api_strict:device1", "float64", epochs=1).save(path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert any(n.startswith("param/") for n in names) and any(n.startswith("optim/") for n in names)
        for name in names:
            with z.open(name) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                _, _, dtype = read_header(f)
                assert dtype.byteorder in ("<", "|") or (dtype.byteorder == "=" and np.little_endian), name
                if name.startswith(("param/", "optim/")):
                    assert dtype.str == "<f8", (name, dtype.str)


def test_big_endian_input_is_written_little_endian() -> None:
    from nnxp.io import _le

    big = np.arange(4, dtype=">f4")
    le = _le(big)
    assert le.dtype.str == "<f4"
    np.testing.assert_array_equal(le, big)
