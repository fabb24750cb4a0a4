"""What ``Sequential.fit(..., distributed=comm)`` does besides single-process training.

N ranks at batch ``b`` train like one process at batch ``N * b``:

* At the start, one collective check that every rank passes the same model (layers,
  dtype, seed, backend kind), the same data (shapes, dtypes and a digest of sampled
  rows) and the same ``fit`` arguments; any difference is raised on every rank as a
  :class:`~nnxp.distributed.DistributedError` naming the ranks and values. Then rank 0's
  state (parameters, buffers, optimizer state and step count, epoch and history) is
  broadcast, and a digest check confirms every rank holds the same numbers: rank 0
  alone may load a checkpoint.
* Each epoch uses the one shuffled order a single process would (seeded by
  ``(seed, epoch)``). Global batch ``k`` is rows ``k*N*b .. (k+1)*N*b`` of it, split
  into N contiguous slices (rank ``r`` takes the ``r``-th); a short last batch of
  ``M`` rows gives the first ``M % N`` ranks one row more, and ranks may get none.
* After the backward pass each rank scales its mean-over-its-rows gradients by
  ``m_r / M`` (its share of the global batch) into one flat buffer, and one
  ``allreduce`` per step sums them: the mean over the global batch, whatever the
  split. The same buffer carries each rank's loss sum and hit count, so every rank
  sees the global batch's loss (a non-finite one stops every rank at the same step,
  naming the ranks where it arose) and the epoch's metrics need no further call.
* Validation: each rank evaluates a contiguous share and the sums are reduced.
* At each epoch's end, floating buffers (BatchNorm running statistics) are averaged
  over the ranks and a digest check confirms the parameters are still identical.

Randomness: dropout masks come from per-rank streams (seeded by
``(seed, epoch, layer, rank)``), so ranks drop different units, as N independent
samples would. BatchNorm normalises with each rank's own batch statistics (the
statistics of ``b`` rows, not of ``N * b``; PyTorch DDP's default), so a model with
BatchNorm or Dropout trains like one process only in distribution, not number for
number; the running estimates are averaged over the ranks at each epoch's end.

Gradient transports are chosen by backend kind (:func:`register_transport`). The
:class:`HostTransport` works for every backend through ``nnxp.to_numpy`` and
``backend.from_host``; on NumPy it is zero-copy (the layers write their gradients
straight into the buffer). A GPU transport (NCCL through ``cupy.cuda.nccl`` with its
unique id broadcast over MPI, or CUDA-aware MPI, reached from torch/JAX through
DLPack) implements the same :meth:`HostTransport.reduce` on a device buffer.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import Backend, to_numpy
from .distributed import Communicator, DistributedError

if TYPE_CHECKING:
    from .losses import Loss
    from .model import Sequential
    from .optim import Optimizer

__all__ = ["DataParallel", "HostTransport", "register_transport"]

Array = Any


class HostTransport:
    """Sums gradients over the ranks through one host NumPy buffer per step.

    Args:
        comm: the communicator.
        backend: the model's backend.
        shapes: shape of each gradient, in order.
        dtype: the gradients' dtype name (the buffer's dtype).
        extras: number of host floats sent along (loss sums, hit counts).
    """

    def __init__(self, comm: Communicator, backend: Backend, shapes: list[tuple[int, ...]], dtype: str,
                 extras: int) -> None:
        self.comm, self.backend = comm, backend
        sizes = [math.prod(s) for s in shapes]
        self.offsets = np.cumsum([0, *sizes]).tolist()
        self.shapes = shapes
        self.size = self.offsets[-1]
        self.buf = np.zeros(self.size + extras, dtype=np.dtype(dtype))
        self.views = [self.buf[a:b].reshape(s) for a, b, s in zip(self.offsets, self.offsets[1:], shapes)]
        self.zero_copy = backend.kind == "numpy"

    def reduce(self, grads: list[Array] | None, weight: float, extras: np.ndarray) -> tuple[list[Array], np.ndarray]:
        """Sum ``weight * grads`` and ``extras`` over the ranks.

        Args:
            grads: this rank's gradients (on the backend), or ``None`` for zeros.
            weight: this rank's factor (its share of the global batch).
            extras: host floats summed along.

        Returns:
            The summed gradients on the backend (on NumPy, views of the buffer, valid
            until the next call) and the summed extras (a view of the buffer).
        """
        buf, n = self.buf, self.size
        if grads is None:
            buf[:n] = 0
        else:
            for g, view in zip(grads, self.views):
                host = g if self.zero_copy else to_numpy(g)
                np.multiply(host, weight, out=view)  # in place when the layer wrote into ``view``
        buf[n:] = extras
        self.comm.allreduce_(buf, "gradient allreduce")
        if self.zero_copy:
            return self.views, buf[n:]
        return [self.backend.from_host(v) for v in self.views], buf[n:]


_TRANSPORTS: dict[str, type] = {}


def register_transport(kind: str, transport: type) -> None:
    """Use ``transport`` for models on backends of ``kind`` (``"cupy"``, ``"torch"``, ...).

    Args:
        kind: the library part of a backend name.
        transport: a class taking ``(comm, backend, shapes, dtype, extras)`` with a
            ``reduce(grads, weight, extras)`` method, as :class:`HostTransport`.
    """
    _TRANSPORTS[kind] = transport


def _digest(arrays: list[Array]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(to_numpy(a)).tobytes())
    return h.hexdigest()


def _data_summary(x: Array, what: str) -> dict[str, Any]:
    """Shape, dtype and a digest of up to 64 evenly spaced rows."""
    n = x.shape[0]
    idx = np.unique(np.linspace(0, n - 1, min(n, 64)).astype(np.int64))
    from .backends import backend_of

    b = backend_of(x)
    rows = b.xp.take(x, b.from_host(idx), axis=0)
    return {f"{what} shape": tuple(x.shape), f"{what} dtype": str(x.dtype), f"{what} rows": _digest([rows])}


class DataParallel:
    """The data-parallel side of one ``fit`` call (see the module docstring).

    Args:
        comm: the communicator (``size > 1``).
        model: the model being trained.
        x, y: training inputs and targets, already on the model's backend.
        validation: ``(x_val, y_val)`` on the backend, or ``None``.
        loss, optimizer: the resolved loss and optimizer.
        settings: the other ``fit`` arguments that must agree (``batch_size``, ...).

    Raises:
        DistributedError: on every rank, when ranks disagree (``all_ranks``).
    """

    def __init__(self, comm: Communicator, model: Sequential, x: Array, y: Array,
                 validation: tuple[Array, Array] | None, loss: Loss, optimizer: Optimizer,
                 settings: dict[str, Any]) -> None:
        self.comm, self.model = comm, model
        self.rank, self.size = comm.rank, comm.size
        self.n = x.shape[0]
        self.batch_size = int(settings["batch_size"])
        self.global_batch = self.batch_size * self.size
        self.num_batches = -(-self.n // self.global_batch)
        self.stream = (self.rank,)  # appended to the per-epoch layer seeds: dropout differs per rank
        self.check_finite = settings.get("check_finite", "auto") != "off"
        self.track_accuracy = bool(settings.get("metrics"))
        self._agree(x, y, validation, loss, optimizer, settings)
        self._broadcast_state(optimizer)
        slots = model.slots()
        shapes = [tuple(layer.params[name].shape) for _, layer, name in slots]
        make = _TRANSPORTS.get(model.backend.kind, HostTransport)
        self.transport = make(comm, model.backend, shapes, model.dtype, self.size + 1)
        self._extras = np.zeros(self.size + 1)
        self._slots = slots

    # ------------------------------------------------------------ start
    def _signature(self, x: Array, y: Array, validation: tuple[Array, Array] | None, loss: Loss,
                   optimizer: Optimizer, settings: dict[str, Any]) -> dict[str, Any]:
        m = self.model
        sig: dict[str, Any] = {
            "layers": [(type(layer).__name__, layer.config()) for layer in m.layers],
            "parameter shapes": [(key, tuple(layer.params[name].shape)) for key, layer, name in m.slots()],
            "dtype": m.dtype,
            "seed": m.seed,
            "backend kind": m.backend.kind,
            "loss": (type(loss).__name__, loss.config()),
            "optimizer": (type(optimizer).__name__, optimizer.config()),
        }
        sig.update({k: (tuple(v) if isinstance(v, list | tuple) else v) for k, v in settings.items()})
        sig.update(_data_summary(x, "x"))
        sig.update(_data_summary(y, "y"))
        if validation is not None:
            sig.update(_data_summary(validation[0], "validation x"))
            sig.update(_data_summary(validation[1], "validation y"))
        else:
            sig["validation"] = None
        return sig

    def _agree(self, *args: Any) -> None:
        mine = self._signature(*args)
        every = self.comm.allgather(mine, "the start check of fit's arguments")
        diffs = []
        for key in every[0]:
            values = [s.get(key, "<missing>") for s in every]
            if any(v != values[0] for v in values[1:]):
                odd = [r for r, v in enumerate(values) if v != values[0]]
                diffs.append(f"  {key}: rank 0 has {_short(values[0])}; "
                             + "; ".join(f"rank {r} has {_short(values[r])}" for r in odd))
        if diffs:
            raise DistributedError(
                "fit(..., distributed=comm) needs the same model, data and arguments on every rank, but:\n"
                + "\n".join(diffs) + "\nEvery rank must pass the same x and y (the ranks split each batch "
                "among themselves) and build the same model.", all_ranks=True)

    def _state(self) -> list[tuple[dict[str, Array], str]]:
        """``(container, key)`` of every parameter and buffer, in a fixed order."""
        out = [(layer.params, name) for _, layer, name in self.model.slots()]
        for layer in self.model.layers:
            out += [(layer.buffers, k) for k in layer.buffers]
        return out

    def _broadcast_state(self, optimizer: Optimizer) -> None:
        """Rank 0's parameters, buffers, optimizer state, epoch and history on every rank."""
        m, comm = self.model, self.comm
        meta = None
        if self.rank == 0:
            meta = {"epoch": m.epoch, "steps": optimizer.steps,
                    "optim": sorted((k, s, tuple(v.shape)) for k, st in optimizer.state.items() for s, v in st.items()),
                    "history": (list(m.history.epochs), {k: list(v) for k, v in m.history.history.items()})}
        meta = comm.bcast(meta, what="the broadcast of rank 0's state")
        m.epoch = meta["epoch"]
        optimizer.steps = meta["steps"]
        epochs, metrics = meta["history"]  # copied: the thread communicator hands every rank one object
        m.history.epochs, m.history.history = list(epochs), {k: list(v) for k, v in metrics.items()}
        b = m.backend
        if self.rank != 0:
            optimizer.state = {}
            for key, slot, shape in meta["optim"]:
                optimizer.state.setdefault(key, {})[slot] = b.from_host(np.zeros(shape), m.dtype)
        places = self._state() + [(optimizer.state[k], s) for k, s, _ in meta["optim"]]
        sizes = [math.prod(c[k].shape) for c, k in places]
        flat = np.empty(sum(sizes), dtype=np.float64)
        offsets = np.cumsum([0, *sizes]).tolist()
        if self.rank == 0:
            for (c, k), a, e in zip(places, offsets, offsets[1:]):
                flat[a:e] = to_numpy(c[k]).reshape(-1)
        comm.bcast_(flat, 0, "the broadcast of rank 0's parameters")
        if self.rank != 0:
            for (c, k), a, e in zip(places, offsets, offsets[1:]):
                old = c[k]
                c[k] = b.from_host(flat[a:e].reshape(tuple(old.shape)), to_numpy(old).dtype.name)
        self._same_everywhere([c[k] for c, k in places], "after the broadcast of rank 0's state")

    def _same_everywhere(self, arrays: list[Array], when: str) -> None:
        digests = self.comm.allgather(_digest(arrays), f"the identity check {when}")
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise DistributedError(
                f"The parameters differ between ranks {when}: ranks {odd} hold other numbers than rank 0. "
                "Every rank should have the same parameters after each step (one allreduce gives every rank "
                "the same sums); report this with the MPI library's name and version.", all_ranks=True)

    # ------------------------------------------------------------ steps
    def rows(self, epoch: int, b: int) -> tuple[int, int]:
        """This rank's slice ``(start, stop)`` of the epoch's order for global batch ``b``."""
        self.comm.position = (epoch, b)
        lo = b * self.global_batch
        q, r = divmod(min(self.global_batch, self.n - lo), self.size)
        start = lo + self.rank * q + min(self.rank, r)
        return start, start + q + (self.rank < r)

    def reduce_step(self, b: int, m: int, value: float, out: Array, yb: Array, loss: Loss) -> tuple[float, float, int]:
        """Average the gradients of global batch ``b`` over the ranks (into ``layer.grads``).

        Args:
            b: the global batch's index.
            m: this rank's rows in it (may be 0).
            value: this rank's mean loss (ignored when ``m == 0``).
            out, yb: this rank's outputs and targets (for the hit count).
            loss: the loss.

        Returns:
            ``(mean loss, hits, rows)`` of the whole global batch, the same on every rank.
        """
        lo = b * self.global_batch
        total = min(self.global_batch, self.n - lo)
        ex = self._extras
        ex[:] = 0.0
        slots = self._slots
        if m:
            ex[self.rank] = value * m
            if self.track_accuracy:
                ex[self.size] = float(loss.correct(out, yb))
            grads = [layer.grads[name] for _, layer, name in slots]
        else:
            grads = None
        summed, ex_sum = self.transport.reduce(grads, m / total, ex)
        for (_, layer, name), g in zip(slots, summed):
            layer.grads[name] = g
        per_rank = [float(v) for v in ex_sum[:self.size]]
        self.last_rank_losses = per_rank
        return math.fsum(per_rank) / total, float(ex_sum[self.size]), total

    def non_finite(self, epoch: int, b: int, value: float) -> BaseException:
        """The ``NonFiniteLossError`` raised on every rank, naming where the loss arose."""
        from .model import NonFiniteLossError

        bad = [r for r, v in enumerate(self.last_rank_losses) if not math.isfinite(v)]
        err = NonFiniteLossError(epoch, b, value)
        err.args = (f"{err.args[0]} (distributed: the loss was non-finite on rank(s) {bad}; every rank stopped "
                    "at this step)",)
        err.ranks = bad
        err.all_ranks = True
        return err

    # ------------------------------------------------------------ epochs
    def evaluate(self, xv: Array, yv: Array, loss: Loss, batch_size: int) -> dict[str, float]:
        """Validation metrics over all of ``xv``: each rank evaluates a contiguous share."""
        n = xv.shape[0]
        q, r = divmod(n, self.size)
        start = self.rank * q + min(self.rank, r)
        stop = start + q + (self.rank < r)
        sums = np.zeros(2)
        if stop > start:
            res = self.model.evaluate(xv[start:stop, ...], yv[start:stop, ...], loss=loss, batch_size=batch_size)
            sums[:] = res["loss"] * (stop - start), round(res.get("accuracy", 0.0) * (stop - start))
        self.comm.allreduce_(sums, "the validation sums")
        out = {"loss": float(sums[0]) / n}
        if loss.classification:
            out["accuracy"] = float(sums[1]) / n
        return out

    def end_epoch(self, epoch: int) -> None:
        """Average floating buffers (BatchNorm statistics) over the ranks; check the parameters agree."""
        self.comm.position = (epoch, self.num_batches - 1)
        b = self.model.backend
        floating = [(layer.buffers, k) for layer in self.model.layers for k, v in layer.buffers.items()
                    if b.xp.isdtype(v.dtype, "real floating")]
        if floating:
            hosts = [to_numpy(c[k]) for c, k in floating]
            flat = np.concatenate([h.reshape(-1).astype(np.float64) for h in hosts])
            self.comm.allreduce_(flat, "the average of the BatchNorm statistics")
            flat /= self.size
            a = 0
            for (c, k), h in zip(floating, hosts):
                c[k] = b.from_host(flat[a:a + h.size].reshape(h.shape), h.dtype.name)
                a += h.size
        self._same_everywhere([c[k] for c, k in self._state()], f"after epoch {epoch}")
        self.comm.position = None

    def describe(self) -> str:
        """One line for the progress output: ranks, hosts, pids and the global batch."""
        where = ", ".join(f"{r}:{pid}@{host}" for r, (host, pid) in enumerate(self.comm.peers))
        return (f"data-parallel over {self.size} ranks (rank:pid@host {where}); global batch "
                f"{self.global_batch} = {self.size} x {self.batch_size}, {self.num_batches} steps per epoch")


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."
