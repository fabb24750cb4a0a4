"""Threads for the NumPy kernels' memory-bound passes (intra-op parallelism).

NumPy's BLAS runs the matrix products of a convolution on several threads, but
the passes around them (the im2col copies, the col2im sums, pooling, ReLU, the
layout transposes) run on one. NumPy releases the GIL inside its ufunc loops
and copies, so such a pass split along its first axis over a small thread pool
runs its parts at the same time, as oneDNN does inside PyTorch's CPU kernels.
On two cores, one pass at a time on the benchmark's arrays, this took ReLU from
1.8 to 0.9 ms, max pooling from 2.2 to 1.2 ms and the im2col copies from 2.4 to
1.8 ms; ``benchmarks/ab.py`` measures it in a whole training epoch.

The split happens only inside :func:`owned_threads`, which ``Sequential.fit``,
``evaluate`` and ``predict`` enter for models with convolution or pooling layers
(``Backend.kernel_scope``). Inside it BLAS runs on one thread and each part
makes its own matrix products: OpenBLAS's idle threads spin for about 0.1 s
after every product, and on a machine with as many cores as threads they take
the cores the parts need (a ReLU pass split in two took 1.2-2.0 ms after a
two-thread product instead of 1.0 ms). Elsewhere (an MLP, a hand-written
training loop) the kernels run in one piece and BLAS keeps its own threads,
whose hand-off is faster than a Python thread pool's for small products.

Results do not depend on the number of threads: parts write their own rows,
and where shares are summed (a convolution's weight and bias gradients) they
are summed in a fixed order. A Dense layer's product split over batch rows is
BLAS's product of fewer rows, which may round differently.

The number of threads is, in this order: :func:`set_num_threads`, the
``NNXP_NUM_THREADS`` environment variable, ``OMP_NUM_THREADS`` (so
``OMP_NUM_THREADS=1`` keeps a process on one core for BLAS and for these
passes alike), and the CPUs this process may run on, divided among the MPI
ranks an MPI launcher started on this machine, at most 8.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["get_num_threads", "owned_threads", "parallel_rows", "part_bounds", "set_num_threads", "splitting"]

# A part smaller than this many array elements is not worth a thread hand-off
# (40-90 us on the 2-core VM measured, most of it waking the idle core): below it
# the pass runs in the calling thread.
MIN_PART = 1 << 15
MAX_DEFAULT = 8

_lock = threading.Lock()
_num: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_local = threading.local()  # .active: inside owned_threads; .inside: running a part (no nested split)
_blas: Any = None  # threadpoolctl controller of the BLAS libraries, made on first use
_blas_users = 0  # threads inside owned_threads (BLAS is limited while any is)
_blas_limiter: Any = None  # threadpoolctl's limiter while BLAS is limited


def _env_threads(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        n = int(value.split(",")[0])
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a thread count; set it to a positive integer "
                         f"(e.g. {name}=2) or unset it.") from None
    if n < 1:
        raise ValueError(f"{name}={value!r}: the thread count must be at least 1.")
    return n


#: set by MPI launchers to the number of ranks on this machine (MPICH's hydra, Open MPI, Slurm)
_LOCAL_RANKS_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")


def _default_threads() -> int:
    for name in ("NNXP_NUM_THREADS", "OMP_NUM_THREADS"):
        n = _env_threads(name)
        if n is not None:
            return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    local = 1
    for name in _LOCAL_RANKS_VARS:  # ranks of one machine share its cores
        value = os.environ.get(name, "").split("(")[0]
        if value.strip().isdigit() and int(value) > 0:
            local = int(value)
            break
    return max(1, min(cpus // local, MAX_DEFAULT))


def get_num_threads() -> int:
    """The number of threads the NumPy backend's kernels split their non-BLAS passes over.

    Returns:
        The count set by :func:`set_num_threads`, else read from ``NNXP_NUM_THREADS``,
        ``OMP_NUM_THREADS`` or the CPUs available (at most 8).
    """
    global _num
    if _num is None:
        _num = _default_threads()
    return _num


def set_num_threads(n: int | None) -> None:
    """Set the number of threads for the NumPy backend's memory-bound passes.

    It does not change BLAS's own threads (``OPENBLAS_NUM_THREADS`` before NumPy
    loads, or ``threadpoolctl``).

    Args:
        n: a positive count; ``1`` runs every pass in the calling thread; ``None``
            goes back to the default (environment variables, then the CPU count).
    """
    global _num
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads expects a positive integer or None, got {n!r}.")
    _num = n


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="nnxp-kernel")
            _pool_size = workers
        return _pool


def _forget_pool() -> None:  # a forked child has the pool object but not its threads
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def part_bounds(n: int, work: int) -> list[tuple[int, int]]:
    """The contiguous parts :func:`parallel_rows` splits ``range(n)`` into.

    Args:
        n: the number of rows.
        work: the pass's total size in array elements (at least :data:`MIN_PART` per part).

    Returns:
        ``[(start, stop), ...]``: one part per thread, fewer for small work; one outside
        :func:`owned_threads` and inside a part.
    """
    parts = min(get_num_threads(), n, max(1, work // MIN_PART)) if splitting() else 1
    bounds = [(i * n) // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def _run_part(fn: Callable[[int, int], object], a: int, b: int) -> object:
    _local.inside = True
    try:
        return fn(a, b)
    finally:
        _local.inside = False


def parallel_rows(fn: Callable[[int, int], object], n: int, work: int,
                  parts: list[tuple[int, int]] | None = None) -> list[object]:
    """Run ``fn(start, stop)`` over ``range(n)`` split into contiguous parts, on the threads.

    Without ``parts``, ``range(n)`` is split into one part per thread
    (:func:`part_bounds`). With ``parts`` (more of them than threads, e.g. the
    cache-sized steps of a window kernel), each thread takes the next part not
    yet taken until none is left, so a thread that started late or runs slower
    takes fewer. Outside :func:`owned_threads` (and inside a part) the parts run
    in order in the calling thread. An exception in any part is raised here
    after the running parts have finished; no new part starts after it.

    Args:
        fn: computes rows ``start:stop``; the parts must write disjoint memory.
        n: the number of rows (the length of the split axis).
        work: the pass's total size in array elements, which decides how many
            parts are worth a thread (at least :data:`MIN_PART` elements each).
        parts: the ``(start, stop)`` ranges to run instead of :func:`part_bounds` ``(n, work)``
            (``fn`` gets them as they are).

    Returns:
        What ``fn`` returned for each part, in the order of the parts.
    """
    parts = parts if parts is not None else part_bounds(n, work)
    threads = min(get_num_threads(), len(parts)) if splitting() else 1
    if threads <= 1:
        return [fn(a, b) for a, b in parts]
    results: list[object] = [None] * len(parts)
    order = iter(range(len(parts)))
    take = threading.Lock()
    failed: list[BaseException] = []

    def drain() -> None:
        while not failed:
            with take:
                i = next(order, None)
            if i is None:
                return
            try:
                results[i] = _run_part(fn, *parts[i])
            except BaseException as e:  # reported by the caller once every thread has stopped
                failed.append(e)

    futures = [_executor(threads - 1).submit(drain) for _ in range(threads - 1)]
    drain()
    for f in futures:
        f.result()
    if failed:
        raise failed[0]
    return results


def splitting() -> bool:
    """Whether kernels called from this thread now split their passes (inside
    :func:`owned_threads`, not inside a part, more than one thread)."""
    return (getattr(_local, "active", False) and not getattr(_local, "inside", False)
            and get_num_threads() > 1)


def _blas_controller() -> Any:
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = ThreadpoolController().select(user_api="blas")
        except ImportError:  # a dependency; without it the parts share the cores with BLAS's threads
            _blas = False
    return _blas


@contextlib.contextmanager
def owned_threads() -> Iterator[None]:
    """Kernels called from this thread split their passes over the thread pool, and BLAS
    runs on one thread, until the block ends.

    Nested and concurrent blocks (ranks that are threads of one process) are fine: BLAS
    gets its threads back when the last block ends.
    """
    global _blas_users, _blas_limiter
    if get_num_threads() <= 1 or getattr(_local, "active", False):
        yield
        return
    ctl = _blas_controller()
    with _lock:
        if _blas_users == 0 and ctl:
            _blas_limiter = ctl.limit(limits=1)  # applies now; restored when the last block ends
        _blas_users += 1
    _local.active = True
    try:
        yield
    finally:
        _local.active = False
        with _lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None
