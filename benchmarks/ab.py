"""A/B of one tuning constant inside nnxp's training, interleaved with PyTorch, in one process.

On a noisy machine two benchmark runs one after the other can differ by more than the change
being measured. This trains the ``bench.py`` case (default ``cnn``) for one epoch per repeat with
a module attribute at value A, then at value B, then PyTorch's twin, rotating the order, and
prints the medians and the ratio B/A::

    python benchmarks/ab.py nnxp.backends.numpy_conv STEP_BYTES "1<<40" "1<<20"
    python benchmarks/ab.py nnxp.backends.numpy_threads _num 1 None    # kernel threads off / on
    python benchmarks/ab.py nnxp.backends.numpy_conv PER_IMAGE_K 0 32

The values are Python expressions. Data are ``bench.py``'s synthetic samples.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", help="module holding the constant, e.g. nnxp.backends.numpy_conv")
    ap.add_argument("attr", help="the module attribute to switch")
    ap.add_argument("a", help="value A (a Python expression)")
    ap.add_argument("b", help="value B (a Python expression)")
    ap.add_argument("--case", default="cnn", choices=sorted(bench.CASES))
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args(argv)
    mod = importlib.import_module(args.module)
    if not hasattr(mod, args.attr):
        ap.error(f"{args.module} has no attribute {args.attr!r}")
    values = {"A": eval(args.a), "B": eval(args.b)}
    case = bench.CASES[args.case]
    bargs = bench.parse_args(["--backend", "numpy", "--cases", args.case, "--no-calls"])
    x, y = bench.synthetic_data(case, args.samples, bargs.seed)
    contenders, _ = bench.make_contenders(case, bargs, x, y)
    by_name = {c.name: c for c in contenders}
    if "nnxp" not in by_name:
        print("nnxp could not be built for this case", file=sys.stderr)
        return 1
    saved = getattr(mod, args.attr)

    def epoch(c: Any, value: Any = None, switch: bool = False) -> float:
        if switch:
            setattr(mod, args.attr, value)
        xd, yd = c.data()
        t0 = time.perf_counter()
        c.fit_epoch(xd, yd)
        c.sync()
        return time.perf_counter() - t0

    runs = [("A", lambda: epoch(by_name["nnxp"], values["A"], True)),
            ("B", lambda: epoch(by_name["nnxp"], values["B"], True))]
    if "torch" in by_name:
        runs.append(("torch", lambda: epoch(by_name["torch"])))
    try:
        for _, run in runs:  # warm-up
            run()
        times: dict[str, list[float]] = {k: [] for k, _ in runs}
        for r in range(args.repeats):
            for k, run in runs if r % 2 == 0 else runs[::-1]:
                times[k].append(run())
    finally:
        setattr(mod, args.attr, saved)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in med:
        vs = f"  {med[k] / med['torch']:.3f}x torch" if "torch" in med else ""
        label = {"A": f"A = {args.a}", "B": f"B = {args.b}"}.get(k, k)
        print(f"{label:<28} median {med[k]:.3f} s{vs}   all {[round(t, 3) for t in times[k]]}")
    print(f"B/A {med['B'] / med['A']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
