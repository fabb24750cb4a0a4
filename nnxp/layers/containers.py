"""Composition beyond a flat list: layers that hold layers.

A *container* holds child layers in a list ``layers``. It presents their
parameters, gradients and buffers as one flat mapping with dotted keys
(``"0.weight"``, ``"1.0.bias"`` for a container inside a container) whose
reads and writes go to the children. Everything that walks
``layer.params`` -- :meth:`nnxp.Sequential.slots`, the optimizers,
checkpoints, :func:`nnxp.gradcheck` -- therefore reaches nested parameters
without knowing about nesting: a parameter of child 1 of the layer at index
3 of a model has the slot key ``"3.1.weight"``.

:class:`~nnxp.Sequential` is a container too (it mixes in
:class:`LayerContainer`), so a ``Sequential`` nests inside another one, and
:class:`Residual` adds a skip connection around a chain of layers.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import numpy as np

from ..backends import Backend, resolve_backend
from .base import _REGISTRY, Array, Layer

__all__ = ["LayerContainer", "Residual", "first_leaf", "is_container", "layer_from_spec", "layer_spec",
           "pick_initialisers"]

#: activation families before which the preceding layer gets Glorot instead of He
GLOROT_FAMILY = {"tanh"}


def is_container(layer: Any) -> bool:
    """True for a layer that holds child layers (a :class:`LayerContainer`)."""
    return isinstance(layer, LayerContainer)


def first_leaf(layer: Any) -> Any:
    """The first non-container layer inside ``layer`` (``layer`` itself if it holds none)."""
    while is_container(layer) and layer.layers:
        layer = layer.layers[0]
    return layer


def pick_initialisers(layers: list[Any], last: str | None = None) -> None:
    """Set ``default_init`` on each layer: Glorot when the next one is tanh/sigmoid, else He.

    Args:
        layers: the layers of one chain, in order.
        last: the choice for the last layer (its successor lies outside the
            chain: the container's own ``default_init``); ``None`` means He.
    """
    for layer, nxt in zip(layers, [*layers[1:], None], strict=True):
        if nxt is None and last is not None:
            layer.default_init = last
            continue
        family = nxt.activation_family if nxt is not None else None
        layer.default_init = "glorot" if family in GLOROT_FAMILY else "he"


def layer_spec(layer: Any) -> dict[str, Any]:
    """A JSON-able description of ``layer`` (type, config and, for containers, children).

    Returns:
        ``{"type": name, "config": {...}}`` plus ``"layers": [spec, ...]`` for a container.
    """
    spec: dict[str, Any] = {"type": type(layer).__name__, "config": layer.config()}
    if is_container(layer):
        spec["layers"] = [layer_spec(child) for child in layer.layers]
    return spec


def layer_from_spec(spec: dict[str, Any]) -> Any:
    """Rebuild an (unbuilt, for plain layers) layer from :func:`layer_spec`'s description.

    Raises:
        ValueError: unknown layer type.
        TypeError: the config does not fit the constructor.
    """
    cls = _REGISTRY.get(spec["type"])
    if cls is None:
        raise ValueError(f"Unknown layer type {spec['type']!r} in checkpoint; known: {sorted(_REGISTRY)}")
    if "layers" in spec:
        return cls([layer_from_spec(s) for s in spec["layers"]], **spec["config"])
    return cls(**spec["config"])


class _StoreView(MutableMapping):
    """One store (``params``, ``grads`` or ``buffers``) of every child, under dotted keys.

    ``view["1.weight"]`` is ``owner.layers[1].params["weight"]``; assigning to
    an existing key assigns into the child's own dict (optimizers replace
    arrays this way on JAX, where nothing updates in place).
    """

    __slots__ = ("_owner", "_store")

    def __init__(self, owner: LayerContainer, store: str) -> None:
        self._owner, self._store = owner, store

    def _locate(self, key: str) -> tuple[MutableMapping, str]:
        head, _, rest = key.partition(".")
        try:
            child = self._owner.layers[int(head)]
        except (ValueError, IndexError):
            raise KeyError(key) from None
        return getattr(child, self._store), rest

    def __getitem__(self, key: str) -> Array:
        store, rest = self._locate(key)
        return store[rest]

    def __setitem__(self, key: str, value: Array) -> None:
        store, rest = self._locate(key)
        if rest not in store:  # a typo must not add an array that nothing reads
            raise KeyError(f"{key!r}: no such {self._store[:-1]} in {self._owner!r}")
        store[rest] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"cannot delete {key!r}: the {self._store} of a container follow its layers")

    def __iter__(self) -> Iterator[str]:
        for i, child in enumerate(self._owner.layers):
            for k in getattr(child, self._store):
                yield f"{i}.{k}"

    def __len__(self) -> int:
        return sum(len(getattr(child, self._store)) for child in self._owner.layers)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: {tuple(v.shape)}' for k, v in self.items())}}}"


class LayerContainer:
    """Mixin for layers that hold child layers in ``self.layers`` (a list).

    Provides the layer contract's composite parts: flat dotted views of the
    children's ``params``/``grads``/``buffers``, per-step state, the
    ``need_input_grad`` and ``reuse_buffers`` switches passed on to the
    children, a chained ``output_shape``, and the class registry entry used
    by checkpoints (whose ``"layers"`` entry carries the children, see
    :func:`layer_spec`). Subclasses define ``forward``/``backward`` and
    ``build``.
    """

    layers: list[Any]
    #: a container is not an activation: the layer before it gets He by default
    activation_family = None
    _need_input_grad = True
    _reuse_buffers = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls  # checkpoints rebuild containers by name, as plain layers

    # ------------------------------------------------------ children's stores
    @property
    def params(self) -> MutableMapping:
        """The children's trainable parameters under dotted keys (``"0.weight"``)."""
        return _StoreView(self, "params")

    @property
    def grads(self) -> MutableMapping:
        """The children's gradients, keyed like :attr:`params`."""
        return _StoreView(self, "grads")

    @property
    def buffers(self) -> MutableMapping:
        """The children's non-trainable state (e.g. BatchNorm statistics), dotted keys."""
        return _StoreView(self, "buffers")

    # ---------------------------------------------------------------- switches
    @property
    def need_input_grad(self) -> bool:
        """False: nobody needs the input gradient; the first child may skip it too."""
        return self._need_input_grad

    @need_input_grad.setter
    def need_input_grad(self, value: bool) -> None:
        self._need_input_grad = bool(value)
        if self.layers:
            self.layers[0].need_input_grad = bool(value)

    @property
    def reuse_buffers(self) -> bool:
        """``Sequential.fit``'s switch for NumPy buffer reuse, passed to the children that have one."""
        return self._reuse_buffers

    @reuse_buffers.setter
    def reuse_buffers(self, value: bool) -> None:
        self._reuse_buffers = bool(value)
        for child in self.layers:
            if hasattr(type(child), "reuse_buffers"):
                child.reuse_buffers = bool(value)

    # ----------------------------------------------------------------- state
    def init_state(self, rng: np.random.Generator) -> None:
        """Per-step state of every child, drawn from ``rng`` in order (as a flat list would)."""
        for child in self.layers:
            child.init_state(rng)

    def _build_children(self, backend: Backend, dtype: Any, rng: np.random.Generator) -> None:
        """Pick default initialisers (the last child follows this container's) and build every child."""
        pick_initialisers(self.layers, getattr(self, "default_init", None))
        for child in self.layers:
            child.build(backend, dtype, rng)

    def _chain_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        for i, child in enumerate(self.layers):
            try:
                shape = tuple(child.output_shape(shape))
            except ValueError as exc:
                raise ValueError(f"inside {type(self).__name__}, layer {i} ({child!r}): {exc}") from None
        return shape

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Per-sample output shape: the children's shapes chained."""
        return self._chain_shape(input_shape)

    def config(self) -> dict[str, Any]:
        """Constructor arguments besides the children (which checkpoints store separately)."""
        return {}


def _as_layers(f: Any, owner: str) -> list[Any]:
    items = list(f) if isinstance(f, list | tuple) else [f]
    if not items:
        raise ValueError(f"{owner} needs at least one layer")
    for i, item in enumerate(items):
        if not isinstance(item, Layer | LayerContainer):
            raise TypeError(f"{owner} takes layers (or a list of layers); item {i} is {type(item).__name__}")
    return items


class Residual(LayerContainer, Layer):
    """Skip connection ``y = x + f(x)`` around a layer or a chain of layers.

    ``f`` must keep the shape of its input, as in a transformer block:
    ``Residual([LayerNorm(d), MultiHeadAttention(d, heads, causal=True)])``.
    Parameters of ``f`` appear as ``params["0.weight"]`` and so on (see the
    module docstring); checkpoints store the children.

    Args:
        f: a layer (also an ``nnxp.Sequential``) or a list of layers applied in order.
    """

    def __init__(self, f: Any) -> None:
        # not Layer.__init__: it would assign params/grads/buffers, which here are views of the children
        self.layers = _as_layers(f, "Residual")
        self.backend: Backend | None = None
        self.xp: Any = None
        self.dtype: Any = None

    def build(self, backend: str | Backend | None = None, dtype: Any = "float32",
              rng: np.random.Generator | int | None = 0) -> Residual:
        """Build every child on ``backend`` (see :meth:`Layer.build`).

        Returns:
            ``self``.
        """
        self.backend = resolve_backend(backend)
        self.xp = self.backend.xp
        self.dtype = self.backend.dtype(dtype)
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        self._build_children(self.backend, dtype, rng)
        return self

    def forward(self, x: Array, training: bool = True) -> Array:
        if self.backend is None:
            self._build_from(x)
        h = x
        for child in self.layers:
            h = child.forward(h, training)
        if tuple(h.shape) != tuple(x.shape):
            raise ValueError(f"{self!r}: the residual branch turns shape {tuple(x.shape)} into {tuple(h.shape)}; "
                             "y = x + f(x) needs f to keep the shape.")
        return x + h

    def backward(self, grad_y: Array) -> Array:
        g = grad_y
        for child in reversed(self.layers):
            g = child.backward(g)
        if not self.need_input_grad:
            return None
        return grad_y + g

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        out = self._chain_shape(shape)
        if len(out) != len(shape) or any(a is not None and b is not None and a != b for a, b in zip(out, shape)):
            raise ValueError(f"the residual branch turns per-sample shape {shape} into {out}; "
                             "y = x + f(x) needs f to keep the shape.")
        return shape

    def to(self, backend: str | Backend) -> Residual:
        """Move every child to another backend/device.

        Returns:
            ``self``.
        """
        target = resolve_backend(backend)
        if not self.built:
            return self.build(target)
        for child in self.layers:
            child.to(target)
        self.dtype = target.dtype(str(self.dtype).rsplit(".", 1)[-1])
        self.backend, self.xp = target, target.xp
        return self

    def __repr__(self) -> str:
        return f"Residual([{', '.join(repr(child) for child in self.layers)}])"
