"""Array calls per training step: nnxp's portable path against the hand-written twin.

At batch 64 a GPU training step is bound by how many array calls the host
issues (each CuPy call costs some 10-20 µs of host time, see
``../shared/MEASURED.md``), not by arithmetic. That number does not depend on
the machine, so it can be counted here, without a GPU: both contenders train
the seed MLP (784-200-200-10, SGD) for one epoch on ``array_api_strict`` while
a profile hook counts every call into the library that would launch work on a
GPU. nnxp's backend is marked as a GPU one (``sync_free = False``), so ``fit``
takes its GPU branch: one gather per epoch, views per step, and by default the
on-device non-finite guard (``check_finite="device"``).

Counted: functions of the namespace and array operators and methods
(``@``, ``+``, ``-=``, ``astype``, indexing with arrays, ...), once per call
from outside the library. Not counted, because they launch nothing on CuPy:
``shape``/``dtype``/``device``/``T``/``mT``, ``matrix_transpose``, ``reshape``, basic slicing
(views), ``isdtype``, dtype comparisons. Host reads (``float(x)``, ``bool(x)``)
are counted separately as syncs.

Run from the repository root::

    python benchmarks/calls.py
    python benchmarks/calls.py --batch-sizes 64 --check-finite device,step,off --by-op
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = ["CallCounter", "count_nnxp", "count_twin", "main", "markdown", "measure"]

#: operations that launch nothing on a GPU array library (metadata, views)
FREE = frozenset({
    "shape", "dtype", "device", "ndim", "size", "T", "mT", "matrix_transpose", "reshape", "isdtype",
    "__array_namespace__",
    "__len__", "__hash__", "__repr__", "__index__", "__dlpack__", "__dlpack_device__", "to_device",
})
#: host reads: a device-to-host copy and a wait for the queue on a GPU
SYNCS = frozenset({"__float__", "__bool__", "__int__"})


class CallCounter:
    """Counts calls into ``array_api_strict`` made from outside it, by operation.

    Use as a context manager around the code to count; ``calls`` and ``syncs``
    then hold ``Counter`` objects keyed by operation name.
    """

    def __init__(self) -> None:
        import array_api_strict

        self._root = os.path.dirname(array_api_strict.__file__)
        self._array = type(array_api_strict.asarray(0.0))
        self.calls: collections.Counter[str] = collections.Counter()
        self.syncs: collections.Counter[str] = collections.Counter()

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        root = self._root
        if not code.co_filename.startswith(root):
            return
        caller = frame.f_back
        if caller is not None and caller.f_code.co_filename.startswith(root):
            return  # a call inside the library: part of the operation already counted
        name = code.co_name
        local = frame.f_locals
        if name in ("wrapper", "func", "inner"):  # a decorator's wrapper: name what it wraps
            name = next((v.__name__ for v in local.values()
                         if callable(v) and getattr(v, "__name__", name) not in ("wrapper", "func", "inner")),
                        name)
        this = local.get("self")
        if this is not None and not isinstance(this, self._array):
            return  # dtype and device objects: host-side comparisons
        if name in FREE or (name.startswith("_") and not name.startswith("__")):
            return
        if name == "__getitem__" and _is_view(local.get("key")):
            return
        if name in SYNCS:
            self.syncs[name] += 1
        else:
            self.calls[name] += 1

    def __enter__(self) -> CallCounter:
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def _is_view(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, slice)) for k in keys)


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)


def _seed_mlp(backend: Any) -> Any:
    import nnxp
    from nnxp.layers import Dense, ReLU

    return nnxp.Sequential([Dense(784, 200), ReLU(), Dense(200, 200), ReLU(), Dense(200, 10)],
                           backend=backend, seed=0)


def count_nnxp(batch_size: int = 64, steps: int = 20, check_finite: str = "device",
               optimizer: Callable[[], Any] | None = None,
               metrics: tuple[str, ...] | None = None) -> tuple[CallCounter, int]:
    """Count nnxp's calls for one epoch of ``steps`` full batches of the seed MLP.

    The model trains one epoch first (building parameters and optimizer state),
    then the counted one.

    Args:
        batch_size: samples per step.
        steps: steps in the counted epoch.
        check_finite: passed to ``fit``.
        optimizer: a factory for the optimizer; default ``SGD(lr=0.1)``.
        metrics: passed to ``fit`` (default: its own, the training accuracy).

    Returns:
        The counter and the number of steps counted.
    """
    from nnxp import optim
    from nnxp.backends import strict

    backend = strict.make(None)  # a private instance: the shared one stays a CPU backend
    backend.sync_free = False  # take fit's GPU branch
    net = _seed_mlp(backend)
    x, y = _data(batch_size * steps)
    xd, yd = backend.from_host(x), backend.from_host(y)
    opt = optimizer() if optimizer else optim.SGD(lr=0.1)
    kw = {"loss": "softmax_cross_entropy", "optimizer": opt, "epochs": 1, "batch_size": batch_size,
          "verbose": 0, "check_finite": check_finite, "metrics": metrics}
    net.fit(xd, yd, **kw)
    counter = CallCounter()
    with counter:
        net.fit(xd, yd, **kw)
    return counter, steps


def count_twin(batch_size: int = 64, steps: int = 20) -> tuple[CallCounter, int]:
    """Count the hand-written twin's calls for one epoch of ``steps`` full batches
    (written as for CuPy: the loss accumulates on the device, read once)."""
    import array_api_strict as xps

    from benchmarks.twins import ArrayMLPTwin

    net = _seed_mlp("numpy")
    dense = [layer for layer in net.layers if "weight" in layer.params]
    twin = ArrayMLPTwin([d.params["weight"] for d in dense], [d.params["bias"] for d in dense], xps, lr=0.1)
    x, y = _data(batch_size * steps)
    xd, yd = xps.asarray(x), xps.asarray(y)
    twin.fit_epoch(xd, yd, batch_size)
    counter = CallCounter()
    with counter:
        twin.fit_epoch(xd, yd, batch_size)
    return counter, steps


def measure(batch_size: int = 64, steps: int = 20, modes: tuple[str, ...] = ("device", "off")) -> list[dict[str, Any]]:
    """Calls per step of the twin, of nnxp's ``fit`` in each ``check_finite`` mode, and of
    ``fit(check_finite="off", metrics=())``: the twin's work and nothing more.

    Returns:
        One row per contender: ``contender``, ``batch``, ``calls_per_step``,
        ``vs_twin``, ``host_reads_per_step`` and ``by_op`` (calls per step by operation).
    """
    counted = [("hand-written twin", count_twin(batch_size, steps)[0])]
    counted += [(f"nnxp fit, check_finite={m}", count_nnxp(batch_size, steps, m)[0]) for m in modes]
    counted.append(("nnxp fit, check_finite=off, metrics=()", count_nnxp(batch_size, steps, "off", metrics=())[0]))
    base = counted[0][1].total / steps
    return [{"contender": name, "batch": batch_size, "calls_per_step": c.total / steps,
             "vs_twin": c.total / steps / base, "host_reads_per_step": sum(c.syncs.values()) / steps,
             "by_op": {k: v / steps for k, v in c.calls.most_common()}} for name, c in counted]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`measure` as a markdown table."""
    out = ["| batch | contender | calls per step | vs twin | host reads per step |", "|---:|---|---:|---:|---:|"]
    out += [f"| {r['batch']} | {r['contender']} | {r['calls_per_step']:.2f} | {r['vs_twin']:.2f}x "
            f"| {r['host_reads_per_step']:.2f} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="64,1024", help="comma separated (default 64,1024)")
    p.add_argument("--steps", type=int, default=100, help="steps in the counted epoch (default 100)")
    p.add_argument("--check-finite", default="device,off", help="nnxp fit modes to count, comma separated")
    p.add_argument("--by-op", action="store_true", help="also list the calls per step by operation")
    args = p.parse_args(argv)
    rows = [r for bs in args.batch_sizes.split(",")
            for r in measure(int(bs), args.steps, tuple(args.check_finite.split(",")))]
    print(f"Seed MLP 784-200-200-10, SGD: array calls per step, counted on array_api_strict with fit "
          f"on its GPU branch ({args.steps} steps per epoch)\n")
    print(markdown(rows))
    if args.by_op:
        for r in rows:
            ops = ", ".join(f"{k} {v:g}" for k, v in r["by_op"].items())
            print(f"\nbatch {r['batch']}, {r['contender']}: {ops}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
