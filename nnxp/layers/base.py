"""The :class:`Layer` contract shared by every layer."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..backends import Backend, backend_of, resolve_backend

Array = Any

_REGISTRY: dict[str, type[Layer]] = {}


class Layer:
    """A layer with a hand-written forward and backward pass.

    ``forward(x, training=True) -> y`` keeps what ``backward`` needs;
    ``backward(grad_y) -> grad_x`` writes the parameter gradients into
    ``self.grads`` (same keys as ``self.params``, overwritten, not summed)
    and never updates parameters: optimizers do that.

    Non-trainable state that must travel with the model (BatchNorm's running
    statistics) lives in ``self.buffers``.

    A layer is *built* (its arrays created on a backend) by
    :class:`~nnxp.Sequential`, by :meth:`build`, or on its first ``forward``
    from the input's backend and dtype.
    """

    #: a default initialiser can follow this layer's successor (He for ReLU, Glorot for tanh)
    activation_family: ClassVar[str | None] = None
    #: ``Sequential.fit`` sets this False on the first layer: its ``backward``
    #: may then skip the input gradient (nobody needs it) and return ``None``
    need_input_grad: bool = True
    #: ``Sequential.fit`` sets this True for its steps: a training step's outputs may then be
    #: written into buffers the next step overwrites (the backend's ``out=`` kernels)
    reuse_buffers: bool = False
    #: the model's training and inference loops may split this layer's kernels over the
    #: backend's own threads (``Backend.kernel_scope``): set by layers whose passes around
    #: the BLAS products are a large share of a step (convolution, pooling)
    splits_kernels: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self.backend: Backend | None = None
        self.xp: Any = None
        self.dtype: Any = None

    # ------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        return self.backend is not None

    def build(self, backend: str | Backend | None = None, dtype: Any = "float32",
              rng: np.random.Generator | int | None = 0) -> Layer:
        """Create the layer's arrays on a backend.

        Args:
            backend: backend name or :class:`Backend` (default: current).
            dtype: floating dtype of parameters, ``"float32"`` or ``"float64"``.
            rng: host NumPy ``Generator`` (or a seed) the initialisers draw from.

        Returns:
            ``self``.
        """
        self.backend = resolve_backend(backend)
        self.xp = self.backend.xp
        self.dtype = self.backend.dtype(dtype)
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        host = self.init_params(rng)
        self.params = {k: self.backend.from_host(v, self.dtype) for k, v in host.items()}
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {k: self.backend.from_host(v, self.dtype) for k, v in self.init_buffers().items()}
        self.init_state(rng)
        return self

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Host (NumPy, float64) initial values of the trainable parameters."""
        return {}

    def init_buffers(self) -> dict[str, np.ndarray]:
        """Host initial values of non-trainable state saved in checkpoints."""
        return {}

    def init_state(self, rng: np.random.Generator) -> None:
        """Set up per-step state after the arrays exist (e.g. a dropout generator)."""

    def _build_from(self, x: Array) -> None:
        """Build lazily from the first input's backend and dtype (standalone use)."""
        backend = backend_of(x)
        dtype = x.dtype if backend.xp.isdtype(x.dtype, "real floating") else "float32"
        self.build(backend, dtype, 0)

    # ------------------------------------------------------------ computing
    def forward(self, x: Array, training: bool = True) -> Array:
        """Compute the output and keep what :meth:`backward` needs.

        Args:
            x: input batch on the layer's backend.
            training: False in evaluation (dropout off, BatchNorm running stats).

        Returns:
            The output batch.
        """
        raise NotImplementedError

    def backward(self, grad_y: Array) -> Array:
        """Gradient of the loss with respect to the input of the last forward.

        Args:
            grad_y: gradient of the loss with respect to this layer's output.

        Returns:
            Gradient with respect to the input; parameter gradients go to ``self.grads``.
        """
        raise NotImplementedError

    def workspace(self, training: bool = True) -> Any:
        """The buffers this layer's kernels may reuse in a training step, or ``None``.

        Only while ``reuse_buffers`` is on (``Sequential.fit``) and only on
        backends with ``out=`` kernels (NumPy); everywhere else kernels allocate.
        """
        if not (training and self.reuse_buffers):
            return None
        return self.backend.workspace(self)

    def __call__(self, x: Array, training: bool = True) -> Array:
        # not ``__call__ = forward``: that would bind this abstract method, not the subclass's
        return self.forward(x, training)

    def output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Per-sample output shape for a per-sample input shape (``None`` = unknown).

        Raises:
            ValueError: the input shape cannot feed this layer.
        """
        return input_shape

    # ---------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild this layer (for checkpoints)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def to(self, backend: str | Backend) -> Layer:
        """Move parameters, gradients and buffers to another backend/device.

        Args:
            backend: target backend name or :class:`Backend`.

        Returns:
            ``self``.
        """
        target = resolve_backend(backend)
        if not self.built:  # nothing to move: build here (float32, seed 0) rather than fake a built state
            return self.build(target)
        for store in (self.params, self.grads, self.buffers):
            for k, v in store.items():
                store[k] = target.asarray(v, copy=True)  # never share a buffer with the old backend
        self.dtype = target.dtype(str(self.dtype).rsplit(".", 1)[-1])
        self.backend, self.xp = target, target.xp
        ws = getattr(self, "_workspace", None)
        if ws is not None:
            ws.clear()
        self.moved(target)
        return self

    def moved(self, backend: Backend) -> None:
        """Hook after :meth:`to`: move per-step state (random generators, caches)."""


def layer_class(name: str) -> type[Layer]:
    """The layer class registered under ``name`` (used when loading checkpoints)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown layer type {name!r} in checkpoint; known: {sorted(_REGISTRY)}") from None
