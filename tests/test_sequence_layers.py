"""Sequence layers (Embedding, PositionalEmbedding, LayerNorm, LSTM, GRU, MultiHeadAttention) and composition
(Residual, nested Sequential): finite-difference gradients on every backend, PyTorch
twins, placement, bad input, the causal mask, the scatter-add kernel, checkpoints and
training of a small transformer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch_twins
from helpers import assert_close, assert_on

import nnxp
from nnxp import layers, losses, optim

V, T, E = 7, 5, 8  # vocabulary, sequence length, embedding size of the small models


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _ids(shape: tuple[int, ...], seed: int = 0, vocab: int = V) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape)


# (id, factory, input shape, integer input?)
CASES: list[tuple[str, Callable[[], layers.Layer], tuple[int, ...], bool]] = [
    ("embedding", lambda: layers.Embedding(V, 3), (2, 4), True),
    ("embedding-1d", lambda: layers.Embedding(V, 3), (6,), True),
    ("positional", lambda: layers.PositionalEmbedding(6, 4), (2, 3, 4), False),
    ("positional-full", lambda: layers.PositionalEmbedding(3, 4), (2, 3, 4), False),
    ("layernorm", lambda: layers.LayerNorm(4), (3, 4), False),
    ("layernorm-seq", lambda: layers.LayerNorm(4), (2, 3, 4), False),
    ("layernorm-2axes", lambda: layers.LayerNorm((3, 4), eps=1e-3), (2, 3, 4), False),
    ("lstm", lambda: layers.LSTM(3, 4), (2, 4, 3), False),
    ("lstm-last", lambda: layers.LSTM(3, 4, return_sequences=False), (2, 4, 3), False),
    ("gru", lambda: layers.GRU(3, 4), (2, 4, 3), False),
    ("gru-last", lambda: layers.GRU(3, 4, return_sequences=False), (2, 4, 3), False),
    ("mha", lambda: layers.MultiHeadAttention(4, 2), (2, 3, 4), False),
    ("mha-causal", lambda: layers.MultiHeadAttention(4, 2, causal=True), (2, 3, 4), False),
    ("mha-nobias-1head", lambda: layers.MultiHeadAttention(4, 1, causal=True, bias=False), (2, 3, 4), False),
    ("residual", lambda: layers.Residual([layers.Dense(4, 5), layers.Tanh(), layers.Dense(5, 4)]), (2, 3, 4), False),
    ("residual-attention", lambda: layers.Residual([layers.LayerNorm(4), layers.MultiHeadAttention(4, 2, causal=True)]),
     (2, 3, 4), False),
    ("nested-block", lambda: nnxp.Sequential([
        layers.Residual([layers.LayerNorm(4), layers.MultiHeadAttention(4, 2, causal=True)]),
        layers.Residual([layers.LayerNorm(4), layers.Dense(4, 6), layers.GELU(), layers.Dense(6, 4)]),
        layers.LSTM(4, 3)]), (2, 3, 4), False),
]
IDS = [c[0] for c in CASES]


def _make(make: Callable[[], layers.Layer], backend: nnxp.Backend, dtype: str, seed: int = 3) -> layers.Layer:
    return make().build(backend, dtype, rng=seed)


def _input(shape: tuple[int, ...], ints: bool, backend: nnxp.Backend, dtype: str, seed: int = 0):
    return nnxp.to_device(_ids(shape, seed), backend) if ints else nnxp.to_device(_x(shape, seed), backend, dtype)


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize(("name", "make", "shape", "ints"), CASES, ids=IDS)
def test_gradcheck(backend: nnxp.Backend, name: str, make, shape, ints) -> None:
    layer = _make(make, backend, "float64")
    errors = nnxp.gradcheck(layer, _input(shape, ints, backend, "float64"))
    assert set(errors) == ({*layer.params} if ints else {"input", *layer.params})
    assert len(layer.params) > 0
    assert all(e < 1e-6 for e in errors.values()), errors


def test_gradcheck_whole_language_model(backend: nnxp.Backend) -> None:
    """Integer inputs through a whole model (Embedding first): every parameter gradient checked."""
    net = _lm(backend, "float64", vocab=5, dim=4, heads=2, hidden=6)
    errors = nnxp.gradcheck(net, nnxp.to_device(_ids((2, 3), vocab=5), backend))
    assert "input" not in errors and set(errors) == {k for k, _, _ in net.slots()}
    assert all(e < 1e-6 for e in errors.values()), errors


# ------------------------------------------------------------ placement
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "make", "shape", "ints"), CASES, ids=IDS)
def test_outputs_on_backend(backend: nnxp.Backend, dtype: str, name: str, make, shape, ints) -> None:
    layer = _make(make, backend, dtype)
    for p in layer.params.values():
        assert_on(p, backend, dtype)
    y = layer.forward(_input(shape, ints, backend, dtype))
    out_shape = (*shape, layer.embedding_dim) if ints else (shape[0], *layer.output_shape(shape[1:]))
    assert_on(y, backend, dtype, out_shape)
    gx = layer.backward(nnxp.to_device(np.ones(out_shape), backend, dtype=dtype))
    if ints:
        assert gx is None  # integer indices have no gradient
    else:
        assert_on(gx, backend, dtype, shape)
    assert set(layer.grads) == set(layer.params)
    for k, g in layer.grads.items():
        assert_on(g, backend, dtype, tuple(layer.params[k].shape))


@pytest.mark.parametrize(("name", "make", "shape", "ints"), CASES, ids=IDS)
def test_layer_to_keeps_outputs(backend: nnxp.Backend, name: str, make, shape, ints) -> None:
    layer = _make(make, "numpy", "float64")
    x = _ids(shape) if ints else _x(shape)
    ref = nnxp.to_numpy(layer(nnxp.to_device(x, "numpy")))
    layer.to(backend)
    assert layer.backend is backend
    for k in layer.params:
        assert_on(layer.params[k], backend, "float64")
        assert_on(layer.grads[k], backend, "float64")
    assert_close(layer(nnxp.to_device(x, backend)), ref, backend, "float64", rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "make", "shape", "ints"), CASES, ids=IDS)
def test_config_round_trip(name: str, make, shape, ints) -> None:
    from nnxp.layers.containers import layer_from_spec, layer_spec

    layer = make()
    clone = layer_from_spec(layer_spec(layer))
    assert type(clone) is type(layer) and layer_spec(clone) == layer_spec(layer)
    a, b = layer.build("numpy", "float64", 4), clone.build("numpy", "float64", 4)
    assert list(a.params) == list(b.params)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


# ---------------------------------------------------------- torch twins
@pytest.mark.torch
@pytest.mark.parametrize(("name", "make", "shape", "ints"), CASES, ids=IDS)
def test_torch_twin(backend: nnxp.Backend, name: str, make, shape, ints) -> None:
    torch_twins.torch()
    layer = _make(make, backend, "float64", seed=5)
    x_host = _ids(shape, 1) if ints else _x(shape, 1)
    y = layer.forward(nnxp.to_device(x_host, backend))
    gy_host = _x(tuple(y.shape), 2)
    gx = layer.backward(nnxp.to_device(gy_host, backend))
    ref = torch_twins.layer_twin(layer, x_host, gy_host)
    tol = dict(rtol=1e-10, atol=1e-12)
    assert_close(y, ref["y"], backend, "float64", **tol)
    if ints:
        assert gx is None and ref["grad_x"] is None
    else:
        assert_close(gx, ref["grad_x"], backend, "float64", **tol)
    assert set(ref["grads"]) == set(layer.grads) and ref["grads"]
    for k, g in ref["grads"].items():
        assert_close(layer.grads[k], g, backend, "float64", **tol, err_msg=k)
    twin_params = torch_twins.torch_params(layer, torch_twins.torch_layer(layer))
    for k, v in twin_params.items():  # the mapping of the layouts goes both ways
        np.testing.assert_array_equal(nnxp.to_numpy(layer.params[k]), v, err_msg=k)


@pytest.mark.torch
def test_embedding_repeated_indices_accumulate_like_torch(backend: nnxp.Backend) -> None:
    torch_twins.torch()
    emb = layers.Embedding(4, 3).build(backend, "float64", 0)
    idx = np.array([[1, 1, 1], [3, 1, 0]])  # row 1 four times, row 2 never
    emb.forward(nnxp.to_device(idx, backend))
    gy = _x((2, 3, 3), 1)
    emb.backward(nnxp.to_device(gy, backend))
    ref = torch_twins.layer_twin(emb, idx, gy)["grads"]["weight"]
    assert_close(emb.grads["weight"], ref, backend, "float64", rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(nnxp.to_numpy(emb.grads["weight"])[2], 0)


@pytest.mark.torch
def test_language_model_training_matches_torch(backend: nnxp.Backend) -> None:
    """Three Adam steps of the whole model (nested block, residuals, causal attention, MSE on
    the logits) give the parameters torch gets."""
    torch_twins.torch()
    net = _lm(backend, "float64", vocab=5, dim=4, heads=2, hidden=6)
    x = _ids((6, 3), 3, vocab=5)
    y = _x((6, 3, 5), 4)
    batches = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 6, 2)]
    twin, twin_losses = torch_twins.torch_train_steps(net, losses.MSE(), optim.Adam(lr=0.01), batches)
    hist = net.fit(x, y, loss=losses.MSE(), optimizer=optim.Adam(lr=0.01), epochs=1, batch_size=2,
                   shuffle=False, verbose=0)
    np.testing.assert_allclose(hist["loss"][0], np.mean(twin_losses), rtol=1e-10)
    expected = torch_twins.torch_model_params(net, twin)
    assert set(expected) == {k for k, _, _ in net.slots()}
    for key, layer, k in net.slots():  # atol: the key bias has gradient 0 (softmax ignores a shift), so Adam
        # moves it by lr * noise / eps, about 1e-11, differently in the two libraries
        assert_close(layer.params[k], expected[key], backend, "float64", rtol=1e-9, atol=1e-9, err_msg=key)


# ------------------------------------------------------------ the layers
def test_causal_attention_ignores_the_future(backend: nnxp.Backend) -> None:
    mha = layers.MultiHeadAttention(E, 2, causal=True).build(backend, "float64", 0)
    x = _x((3, T, E))
    y = nnxp.to_numpy(mha(nnxp.to_device(x, backend)))
    for t in range(T - 1):
        x2 = x.copy()
        x2[:, t + 1:, :] = _x((3, T - t - 1, E), seed=t + 10) * 100  # change every later position
        y2 = nnxp.to_numpy(mha(nnxp.to_device(x2, backend)))
        np.testing.assert_array_equal(y2[:, :t + 1], y[:, :t + 1], err_msg=f"output at t <= {t} changed")
        assert np.abs(y2[:, t + 1:] - y[:, t + 1:]).min() > 0
    # the gradient of an early output reaches no later input
    g = np.zeros((3, T, E))
    g[:, 1] = 1.0
    mha(nnxp.to_device(x, backend))
    gx = nnxp.to_numpy(mha.backward(nnxp.to_device(g, backend)))
    assert np.all(gx[:, 2:] == 0) and np.abs(gx[:, :2]).max() > 0
    # without the mask the first position sees the last one
    full = layers.MultiHeadAttention(E, 2).build(backend, "float64", 0)
    x2 = x.copy()
    x2[:, -1] += 1.0
    a, b = (nnxp.to_numpy(full(nnxp.to_device(v, backend))) for v in (x, x2))
    assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-6


def test_causal_mask_made_once_per_length(backend: nnxp.Backend) -> None:
    mha = layers.MultiHeadAttention(4, 2, causal=True).build(backend, "float32", 0)
    for _ in range(3):
        mha(nnxp.to_device(_x((2, 3, 4)), backend, "float32"))
    mask = mha._mask(3, backend.dtype("float32"))
    assert len(mha._masks) == 1 and mha._mask(3, backend.dtype("float32")) is mask
    assert_on(mask, backend, "float32", (3, 3))
    np.testing.assert_array_equal(nnxp.to_numpy(mask), np.triu(np.full((3, 3), -np.inf), 1))
    mha(nnxp.to_device(_x((2, 5, 4)), backend, "float32"))
    assert len(mha._masks) == 2
    mha.to("array_api_strict:device1" if backend.name != "array_api_strict:device1" else "numpy")
    assert not mha._masks


def test_layernorm_values(backend: nnxp.Backend) -> None:
    ln = layers.LayerNorm(6).build(backend, "float64", 0)
    x = _x((2, 3, 6)) * 5 + 3
    y = nnxp.to_numpy(ln(nnxp.to_device(x, backend)))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1 / (1 + 1e-5 / x.var(-1)), rtol=1e-10)
    assert ln.output_shape((3, 6)) == (3, 6) and ln.config() == {"normalized_shape": 6}
    assert layers.LayerNorm([3, 4], eps=0.1).config() == {"normalized_shape": [3, 4], "eps": 0.1}


def test_recurrent_last_step_is_last_of_sequence(backend: nnxp.Backend) -> None:
    for cls in (layers.LSTM, layers.GRU):
        seq = cls(3, 4).build(backend, "float64", 0)
        last = cls(3, 4, return_sequences=False).build(backend, "float64", 0)
        x = nnxp.to_device(_x((2, 5, 3)), backend)
        assert_close(last(x), nnxp.to_numpy(seq(x))[:, -1], backend, "float64", rtol=0, atol=0)
        assert last.output_shape((5, 3)) == (4,) and seq.output_shape((None, 3)) == (None, 4)


def test_lstm_forget_bias_starts_at_one() -> None:
    b = nnxp.to_numpy(layers.LSTM(2, 3).build("numpy", "float64", 0).params["bias"])
    np.testing.assert_array_equal(b, [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_embedding_looks_up_rows(backend: nnxp.Backend) -> None:
    emb = layers.Embedding(5, 2).build(backend, "float32", 0)
    w = nnxp.to_numpy(emb.params["weight"])
    idx = np.array([[4, 0], [0, 2]], dtype=np.int32)
    assert_close(emb(nnxp.to_device(idx, backend)), w[idx], backend, "float32", rtol=0, atol=0)
    assert emb.output_shape((7,)) == (7, 2) and emb.output_shape(()) == (2,)


# ------------------------------------------------------------ bad input
def test_bad_input(backend: nnxp.Backend) -> None:
    f32 = "float32"
    with pytest.raises(ValueError, match=r"LayerNorm.*shape \(4,\).*got input of shape \(2, 3, 5\)"):
        layers.LayerNorm(4).build(backend)(nnxp.to_device(_x((2, 3, 5)), backend, f32))
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, time, 3\), got \(2, 4, 5\).*input_size=5"):
        layers.LSTM(3, 4).build(backend)(nnxp.to_device(_x((2, 4, 5)), backend, f32))
    with pytest.raises(ValueError, match=r"add a time axis"):
        layers.GRU(3, 4).build(backend)(nnxp.to_device(_x((2, 3)), backend, f32))
    with pytest.raises(ValueError, match=r"\(batch, time, 8\), got \(2, 3, 6\).*embed_dim=6"):
        layers.MultiHeadAttention(8, 2).build(backend)(nnxp.to_device(_x((2, 3, 6)), backend, f32))
    with pytest.raises(TypeError, match="float64 parameters but got a float32 input"):
        layers.LSTM(3, 4).build(backend, "float64")(nnxp.to_device(_x((2, 4, 3)), backend, f32))
    emb = layers.Embedding(V, 3).build(backend)
    with pytest.raises(TypeError, match=r"takes integer indices, got a float32 array.*astype"):
        emb(nnxp.to_device(_x((2, 3)), backend, f32))
    for bad, found in (([[0, V]], rf"\[0, {V}\]"), ([[-1, 2]], r"\[-1, 2\]")):
        ids = nnxp.to_device(np.array(bad), backend)
        with pytest.raises(IndexError, match=rf"indices in {found} but has rows 0..{V - 1}.*at least"):
            emb.check_indices(ids)
        if backend.sync_free:  # forward checks where a host read costs nothing; elsewhere Sequential does, once
            with pytest.raises(IndexError, match=rf"indices in {found}"):
                emb(ids)
    residual = layers.Residual([layers.Dense(4, 3)]).build(backend)
    with pytest.raises(ValueError, match="needs f to keep the shape"):
        residual(nnxp.to_device(_x((2, 4)), backend, f32))
    with pytest.raises(ValueError, match="needs f to keep the shape"):
        residual.output_shape((4,))


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match=r"embed_dim=10 is not divisible by num_heads=4.*\[1, 2, 5, 10\]"):
        layers.MultiHeadAttention(10, 4)
    for bad in (lambda: layers.Embedding(0, 3), lambda: layers.Embedding(3, 2.0), lambda: layers.LSTM(0, 3),
                lambda: layers.GRU(3, True), lambda: layers.MultiHeadAttention(4, 0), lambda: layers.LayerNorm(0),
                lambda: layers.LayerNorm(()), lambda: layers.LayerNorm(4, eps=0)):
        with pytest.raises(ValueError, match="must be"):
            bad()
    with pytest.raises(TypeError, match="Residual takes layers"):
        layers.Residual([layers.Dense(2, 2), "relu"])
    with pytest.raises(ValueError, match="at least one layer"):
        layers.Residual([])


def test_model_with_embedding_takes_integer_inputs(backend: nnxp.Backend) -> None:
    net = _lm(backend)
    x = _ids((4, T))
    assert_on(net.predict(x), backend, "float32", (4, T, V))
    assert_on(net.predict(x.astype(np.int32)), backend, "float32", (4, T, V))
    with pytest.raises(TypeError, match=r"first layer \(Embedding.*takes integer indices"):
        net.predict(x.astype(np.float32))
    with pytest.raises(IndexError, match="Raise num_embeddings"):
        net.predict(x + V)
    # a model of floats still refuses integer inputs
    with pytest.raises(TypeError, match="Convert it first"):
        nnxp.Sequential([layers.Dense(T, 2)], backend=backend).predict(x)


# ----------------------------------------------------- the scatter kernel
def _scatter_case(n: int, rows: int, d: int, dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, rows, n), rng.standard_normal((n, d)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("n", "rows", "d"), [(50, 7, 3), (1, 4, 2), (0, 3, 2), (300, 1, 4)])
def test_scatter_add_rows_override_matches_portable(backend: nnxp.Backend, dtype: str, n: int, rows: int,
                                                    d: int) -> None:
    """Each backend's kernel (NumPy bincount, torch index_add_, JAX .at[].add, else the portable
    one-hot product) and the portable one sum repeated indices."""
    idx, vals = _scatter_case(n, rows, d, dtype)
    expected = np.zeros((rows, d))
    np.add.at(expected, idx, vals.astype(np.float64))
    i, v = nnxp.to_device(idx, backend), nnxp.to_device(vals, backend)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    assert_close(backend.scatter_add_rows(i, v, rows), expected, backend, dtype, **tol)
    assert_close(backend.portable().scatter_add_rows(i, v, rows), expected, backend, dtype, **tol)


def test_scatter_add_rows_portable_in_chunks(backend: nnxp.Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    import nnxp.backends.base as base

    idx, vals = _scatter_case(40, 6, 3, "float64", seed=1)
    i, v = nnxp.to_device(idx, backend), nnxp.to_device(vals, backend)
    portable = backend.portable()
    whole = portable.scatter_add_rows(i, v, 6)
    monkeypatch.setattr(base, "_ONEHOT_BUDGET", 6 * 7)  # chunks of 7 indices
    chunked = portable.scatter_add_rows(i, v, 6)
    expected = np.zeros((6, 3))
    np.add.at(expected, idx, vals)
    assert_close(whole, expected, backend, "float64", rtol=1e-12, atol=1e-12)
    assert_close(chunked, expected, backend, "float64", rtol=1e-12, atol=1e-12)


def test_embedding_on_portable_kernels_matches(backend: nnxp.Backend) -> None:
    """The layer trains the same on the backend and on its portable twin."""
    idx = _ids((4, 6), 2)
    gy = _x((4, 6, 3), 3)
    grads = []
    for b in (backend, backend.portable()):
        emb = layers.Embedding(V, 3).build(b, "float64", 0)
        emb(nnxp.to_device(idx, backend))
        emb.backward(nnxp.to_device(gy, backend))
        grads.append(emb.grads["weight"])
    assert_close(grads[0], grads[1], backend, "float64", rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------- composition
def _block(dim: int = E, heads: int = 2, hidden: int = 16) -> nnxp.Sequential:
    """A pre-norm transformer block as one nested Sequential."""
    return nnxp.Sequential([
        layers.Residual([layers.LayerNorm(dim), layers.MultiHeadAttention(dim, heads, causal=True)]),
        layers.Residual([layers.LayerNorm(dim), layers.Dense(dim, hidden), layers.GELU(), layers.Dense(hidden, dim)]),
    ])


def _lm(backend, dtype: str = "float32", seed: int = 0, vocab: int = V, dim: int = E, heads: int = 2,
        hidden: int = 16) -> nnxp.Sequential:
    return nnxp.Sequential([layers.Embedding(vocab, dim), _block(dim, heads, hidden), layers.LayerNorm(dim),
                            layers.Dense(dim, vocab)], backend=backend, dtype=dtype, seed=seed)


def test_nested_parameters_have_dotted_keys() -> None:
    net = _lm("numpy")
    keys = [k for k, _, _ in net.slots()]
    assert keys[:4] == ["0.weight", "1.0.0.weight", "1.0.0.bias", "1.0.1.in_proj_weight"]
    assert "1.1.3.bias" in keys and keys[-1] == "3.bias"
    block = net.layers[1]
    dense = block.layers[1].layers[1]
    assert block.params["1.1.weight"] is dense.params["weight"]
    assert net.params["1.1.1.weight"] is dense.params["weight"]
    new = np.zeros_like(dense.params["weight"])
    block.params["1.1.weight"] = new  # writes go to the child (what optimizers do on JAX)
    assert dense.params["weight"] is new
    with pytest.raises(KeyError):
        block.params["1.1.wieght"] = new
    with pytest.raises(KeyError):
        block.params["9.weight"]
    assert len(block.params) == len(list(block.params)) == 12  # LayerNorm 2, attention 4, LayerNorm 2, 2 Dense 4
    assert net.num_params() == sum(int(np.prod(p.shape)) for p in net.params.values())


def test_nested_equals_flat(backend: nnxp.Backend) -> None:
    """A nested Sequential draws the same initial parameters, computes and trains the same
    as the flat list of its layers (Glorot before Tanh also for the last layer of a block)."""
    def make(nested: bool) -> nnxp.Sequential:
        inner = [layers.Dense(3, 5), layers.ReLU(), layers.Dense(5, 4)]
        body = [nnxp.Sequential(inner)] if nested else inner
        return nnxp.Sequential([*body, layers.Tanh(), layers.Dense(4, 2)], backend=backend, dtype="float64",
                               seed=7)

    flat, nested = make(False), make(True)
    assert nested.layers[0].layers[2].default_init == "glorot" and nested.layers[0].layers[0].default_init == "he"
    flat_params = [nnxp.to_numpy(layer.params[k]) for _, layer, k in flat.slots()]
    nested_params = [nnxp.to_numpy(layer.params[k]) for _, layer, k in nested.slots()]
    for a, b in zip(flat_params, nested_params, strict=True):
        np.testing.assert_array_equal(a, b)
    x, y = _x((12, 3)), np.arange(12) % 2
    kw = dict(loss=losses.SoftmaxCrossEntropy(), optimizer="adam", epochs=2, batch_size=4, verbose=0)
    hf, hn = flat.fit(x, y, **kw), nested.fit(x, y, **kw)
    np.testing.assert_allclose(hn["loss"], hf["loss"], rtol=1e-12)
    for (_, la, ka), (kb, lb, kk) in zip(flat.slots(), nested.slots(), strict=True):
        assert_close(lb.params[kk], la.params[ka], backend, "float64", rtol=1e-12, atol=1e-14, err_msg=kb)
    assert set(nested.optimizer.state) == {"0.0.weight", "0.0.bias", "0.2.weight", "0.2.bias", "2.weight",
                                           "2.bias"}


def test_initialisers_inside_containers() -> None:
    res = layers.Residual([layers.Dense(4, 4), layers.Tanh(), layers.Dense(4, 4)])
    nnxp.Sequential([res, layers.Sigmoid()])
    assert [getattr(c, "default_init", None) for c in res.layers] == ["glorot", "he", "glorot"]
    res = layers.Residual([layers.Dense(4, 4), layers.ReLU(), layers.Dense(4, 4)])
    nnxp.Sequential([res, layers.Dense(4, 2)])
    assert [getattr(c, "default_init", None) for c in res.layers] == ["he", "he", "he"]


def test_switches_reach_the_children() -> None:
    net = _lm("numpy")
    block = net.layers[1]
    block.need_input_grad = False
    assert block.layers[0].need_input_grad is False and block.layers[0].layers[0].need_input_grad is False
    block.need_input_grad = True
    assert block.layers[0].layers[0].need_input_grad is True
    res = layers.Residual([layers.Dense(4, 4), layers.ReLU()])
    res.reuse_buffers = True
    assert res.layers[0].reuse_buffers and res.layers[1].reuse_buffers
    res.reuse_buffers = False
    assert not res.layers[0].reuse_buffers


def test_residual_first_skips_input_gradient(backend: nnxp.Backend) -> None:
    res = layers.Residual([layers.Dense(4, 4), layers.Tanh()]).build(backend, "float64", 0)
    x = nnxp.to_device(_x((2, 4)), backend)
    res(x)
    g = nnxp.to_device(np.ones((2, 4)), backend)
    full = res.backward(g)
    gw = nnxp.to_numpy(res.grads["0.weight"]).copy()
    res.need_input_grad = False
    assert res.backward(g) is None
    assert_close(res.grads["0.weight"], gw, backend, "float64", rtol=0, atol=0)
    assert_on(full, backend, "float64", (2, 4))


def test_summary_and_repr_show_nesting() -> None:
    net = _lm("numpy")
    s = net.summary((T,))
    lines = s.splitlines()
    assert any(line.split()[:2] == ["1", "Sequential"] for line in lines)
    assert any(line.split()[:2] == ["1.0", "Residual"] for line in lines)
    row = next(line for line in lines if line.split()[0] == "1.0.1")
    assert "MultiHeadAttention(embed_dim=8, num_heads=2, causal=True)" in row and "(5, 8)" in row
    assert f"{4 * E * E + 4 * E:,}" in row  # in/out projections and biases
    last = next(line for line in lines if line.split()[0] == "3")
    assert "(5, 7)" in last and last.split()[-1] == f"{E * V + V:,}"
    assert f"total parameters: {net.num_params():,}" in s
    assert "    Sequential([\n        Residual([LayerNorm" in repr(net)


def test_to_moves_nested_layers(backend: nnxp.Backend) -> None:
    net = _lm("numpy", "float64")
    x = _ids((3, T))
    ref = nnxp.to_numpy(net.predict(x))
    net.fit(x, _x((3, T, V)), loss="mse", optimizer="adam", epochs=1, verbose=0)
    ref = nnxp.to_numpy(net.predict(x))
    net.to(backend)
    for _, layer, k in net.slots():
        assert layer.backend is backend
        assert_on(layer.params[k], backend, "float64")
        assert_on(layer.grads[k], backend, "float64")
    for st in net.optimizer.state.values():
        for v in st.values():
            assert_on(v, backend, "float64")
    assert net.layers[1].backend is backend and net.layers[1].layers[0].backend is backend
    assert_close(net.predict(x), ref, backend, "float64", rtol=1e-12, atol=1e-12)
    net.fit(x, _x((3, T, V)), loss="mse", epochs=1, verbose=0)  # trains where it now lives


# --------------------------------------------------- checkpoints, training
def _next_token_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences that count up modulo V from a random start; targets: the next token, one-hot."""
    start = np.random.default_rng(seed).integers(0, V, (n, 1))
    seq = (start + np.arange(T + 1)) % V
    return seq[:, :-1], np.eye(V, dtype=np.float32)[seq[:, 1:]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_checkpoint_round_trip(backend: nnxp.Backend, dtype: str, tmp_path: Path) -> None:
    net = _lm(backend, dtype, seed=2)
    x, y = _next_token_data(16)
    net.fit(x, y, loss=losses.MSE(), optimizer=optim.AdamW(lr=0.01), epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "lm.npz"
    net.save(path)
    loaded = nnxp.load(path, backend=backend)
    assert repr(loaded) == repr(net)
    assert [k for k, _, _ in loaded.slots()] == [k for k, _, _ in net.slots()]
    for (key, la, ka), (_, lb, kb) in zip(net.slots(), loaded.slots(), strict=True):
        a, b = nnxp.to_numpy(la.params[ka]), nnxp.to_numpy(lb.params[kb])
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key
        assert_on(lb.params[kb], backend, dtype)
    assert net.optimizer.state.keys() == loaded.optimizer.state.keys()
    for key, st in net.optimizer.state.items():
        for k, v in st.items():
            assert nnxp.to_numpy(v).tobytes() == nnxp.to_numpy(loaded.optimizer.state[key][k]).tobytes()
    assert_close(loaded.predict(x), net.predict(x), backend, dtype, rtol=0, atol=0)
    # both continue identically
    h1 = net.fit(x, y, epochs=1, batch_size=8, verbose=0)
    h2 = loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert h1["loss"] == h2["loss"]
    # into a fresh model of the same architecture, and not into another one
    fresh = _lm(backend, dtype, seed=9)
    fresh.load_weights(path)
    assert_close(fresh.predict(x), nnxp.load(path, backend=backend).predict(x), backend, dtype, rtol=0, atol=0)
    other = nnxp.Sequential([layers.Embedding(V, E), _block(E, heads=4), layers.LayerNorm(E), layers.Dense(E, V)],
                            backend=backend, dtype=dtype)
    with pytest.raises(nnxp.CheckpointError, match="different architecture"):
        other.load_weights(path)


def test_checkpoint_stores_the_children(tmp_path: Path) -> None:
    import json

    path = tmp_path / "lm.npz"
    _lm("numpy").save(path)
    with np.load(path) as data:
        meta = json.loads(bytes(data["__meta__"]).decode())
        names = set(data.files)
    block = meta["layers"][1]
    assert block["type"] == "Sequential" and block["config"] == {}
    assert [c["type"] for c in block["layers"]] == ["Residual", "Residual"]
    assert block["layers"][0]["layers"][1] == {"type": "MultiHeadAttention",
                                               "config": {"embed_dim": E, "num_heads": 2, "causal": True}}
    assert {"param/0/weight", "param/1/0.1.in_proj_weight", "param/1/1.3.bias", "param/3/bias"} <= names


@pytest.mark.parametrize("name", ["numpy", "array_api_strict"])
def test_fit_trains_small_transformer(name: str) -> None:
    x, y = _next_token_data(64)
    net = _lm(name, seed=1)
    before = net.evaluate(x, y, loss=losses.MSE())["loss"]
    hist = net.fit(x, y, loss=losses.MSE(), optimizer=optim.Adam(lr=0.01), epochs=15, batch_size=16, verbose=0)
    after = net.evaluate(x, y)["loss"]
    assert hist["loss"][-1] < 0.5 * hist["loss"][0] and after < 0.5 * before, (before, hist["loss"], after)
    # the model predicts the next token (argmax) for most positions
    pred = np.argmax(nnxp.to_numpy(net.predict(x)), axis=-1)
    assert (pred == np.argmax(y, axis=-1)).mean() > 0.9


# ------------------------------------------------------- learned positions
def _gpt(backend, dtype: str = "float32", seed: int = 0, max_len: int = T) -> nnxp.Sequential:
    """Token and learned position embeddings before the block (GPT-style)."""
    return nnxp.Sequential([layers.Embedding(V, E), layers.PositionalEmbedding(max_len, E), _block(E, 2, 16),
                            layers.LayerNorm(E), layers.Dense(E, V)], backend=backend, dtype=dtype, seed=seed)


def test_positional_embedding_adds_rows(backend: nnxp.Backend) -> None:
    pos = layers.PositionalEmbedding(6, 3).build(backend, "float64", 0)
    w = nnxp.to_numpy(pos.params["weight"])
    x = _x((2, 4, 3))
    assert_close(pos(nnxp.to_device(x, backend)), x + w[:4], backend, "float64", rtol=0, atol=0)
    g = _x((2, 4, 3), 1)
    gx = pos.backward(nnxp.to_device(g, backend))
    assert_close(gx, g, backend, "float64", rtol=0, atol=0)
    expected = np.zeros((6, 3))
    expected[:4] = g.sum(axis=0)
    assert_close(pos.grads["weight"], expected, backend, "float64", rtol=1e-12, atol=1e-12)
    pos.need_input_grad = False
    assert pos.backward(nnxp.to_device(g, backend)) is None


def test_positional_embedding_bad_input(backend: nnxp.Backend) -> None:
    pos = layers.PositionalEmbedding(4, 3).build(backend)
    with pytest.raises(ValueError, match=r"sequences of 5 steps but has positions 0..3. Raise max_len to at least 5"):
        pos(nnxp.to_device(_x((2, 5, 3)), backend, "float32"))
    with pytest.raises(ValueError, match=r"\(batch, time, 3\), got \(2, 4, 2\)"):
        pos(nnxp.to_device(_x((2, 4, 2)), backend, "float32"))
    with pytest.raises(TypeError, match="float32 parameters but got a float64 input"):
        pos(nnxp.to_device(_x((2, 4, 3)), backend, "float64"))
    with pytest.raises(ValueError, match="time <= 4"):
        pos.output_shape((5, 3))
    for bad in ((0, 3), (4, 2.0), (True, 3)):
        with pytest.raises(ValueError, match="must be a positive integer"):
            layers.PositionalEmbedding(*bad)
    with pytest.raises(ValueError, match=r"Layer 1 \(PositionalEmbedding.*time <= 3"):
        _gpt(backend, max_len=3).predict(_ids((2, 5)))


def test_positional_model_gradcheck(backend: nnxp.Backend) -> None:
    net = _gpt(backend, "float64", max_len=4)
    errors = nnxp.gradcheck(net, nnxp.to_device(_ids((2, 3)), backend))
    assert set(errors) == {k for k, _, _ in net.slots()} and "1.weight" in errors
    assert all(e < 1e-6 for e in errors.values()), errors


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_positional_model_checkpoint_round_trip(backend: nnxp.Backend, dtype: str, tmp_path: Path) -> None:
    net = _gpt(backend, dtype, seed=4)
    x = _ids((16, T), 5)
    y = np.roll(x, -1, axis=1)
    net.fit(x, y, loss=losses.SoftmaxCrossEntropy(), optimizer=optim.AdamW(lr=0.01), epochs=1, batch_size=8,
            verbose=0)
    path = tmp_path / "gpt.npz"
    net.save(path)
    loaded = nnxp.load(path, backend=backend)
    assert repr(loaded) == repr(net) and "PositionalEmbedding(max_len=5, embedding_dim=8)" in repr(loaded)
    w, w2 = net.layers[1].params["weight"], loaded.layers[1].params["weight"]
    assert_on(w2, backend, dtype, (T, E))
    assert nnxp.to_numpy(w).tobytes() == nnxp.to_numpy(w2).tobytes()
    assert_close(loaded.predict(x), net.predict(x), backend, dtype, rtol=0, atol=0)
    h1, h2 = (m.fit(x, y, epochs=1, batch_size=8, verbose=0) for m in (net, loaded))
    assert h1["loss"] == h2["loss"]


@pytest.mark.torch
def test_positional_model_training_matches_torch(backend: nnxp.Backend) -> None:
    """Three AdamW steps with cross-entropy over (batch, time) labels give torch's parameters."""
    torch_twins.torch()
    net = _gpt(backend, "float64", seed=6)
    x = _ids((6, T), 7)
    y = _ids((6, T), 8)
    opt = optim.AdamW(lr=0.01, weight_decay=0.1, clip_norm=1.0)
    batches = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 6, 2)]
    twin, twin_losses = torch_twins.torch_train_steps(net, losses.SoftmaxCrossEntropy(), opt, batches)
    ours = torch_twins.nnxp_train_steps(net, losses.SoftmaxCrossEntropy(), opt, batches)
    np.testing.assert_allclose(ours, twin_losses, rtol=1e-10)
    expected = torch_twins.torch_model_params(net, twin)
    assert set(expected) == {k for k, _, _ in net.slots()}
    for key, layer, k in net.slots():
        assert_close(layer.params[k], expected[key], backend, "float64", rtol=1e-9, atol=1e-9, err_msg=key)
