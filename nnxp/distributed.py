"""Communicators for data-parallel training: MPI under ``mpiexec``, one process otherwise.

::

    from nnxp import distributed
    comm = distributed.init()      # under mpiexec/mpirun: MPI (mpi4py); otherwise size 1
    net = nnxp.Sequential([...], backend="numpy", seed=0)    # GPUs: f"cupy:{comm.local_rank}"
    net.fit(x, y, loss=..., optimizer=..., batch_size=32, distributed=comm)

Run with ``mpiexec -n 4 python train.py`` (``pip install 'nnxp[mpi]'`` brings mpi4py and
MPICH's ``mpiexec``); without a launcher the same script trains as one process.

A communicator moves host NumPy buffers only (``allreduce_``, ``bcast_``) plus small
picklable objects (``allgather``, ``bcast``). How gradients of a backend reach those
buffers is the business of a *gradient transport* (:mod:`nnxp.dataparallel`), chosen
by backend kind; a GPU transport (NCCL, CUDA-aware MPI) slots in there.

Faults. A rank that raises inside ``fit`` while the others wait in a collective would
leave them blocked forever (MPICH does not notice an exception, and Python's exit then
blocks in ``MPI_Finalize``). So, with more than one rank:

* errors every rank sees alike (arguments or data that differ between ranks, a
  non-finite loss, parameters that drifted apart) are found by a collective check and
  raised on every rank, as :class:`DistributedError` or ``NonFiniteLossError``: a
  script may catch them;
* any other exception inside ``fit`` on one rank prints
  ``nnxp.distributed: rank R of N (pid P on HOST) failed ...: <cause>`` with its
  traceback and ends every rank through ``MPI_Abort``;
* an uncaught exception anywhere else does the same (``init`` installs a
  ``sys.excepthook``, like ``python -m mpi4py``);
* a rank killed by a signal is reported by ``mpiexec`` (``BAD TERMINATION ... PID P``),
  which ends the others; ``fit`` prints which rank runs as which pid at its start
  (``verbose >= 1``) and :attr:`Communicator.peers` holds the same table;
* a collective that waits longer than ``timeout`` seconds (a rank stuck, or one that
  never called ``fit``) ends the job with a message naming the rank, the collective
  and the epoch and batch.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "Communicator",
    "DistributedError",
    "MPICommunicator",
    "ThreadCommunicator",
    "init",
    "launched_by_mpi",
    "run_threads",
]

#: environment variables that MPI launchers set in the processes they start
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                  "MPI_LOCALNRANKS")

#: default seconds a collective may wait for the other ranks before the job is ended
DEFAULT_TIMEOUT = 900.0
#: seconds between printing why the job ends and ``MPI_Abort``
ABORT_GRACE = 0.5


class DistributedError(RuntimeError):
    """Ranks disagree (arguments, data, model, parameters), or a peer failed or timed out.

    Attributes:
        all_ranks: the error was found by a collective check and is raised on every
            rank alike, so the ranks stay in step and a script may catch it.
    """

    def __init__(self, message: str, all_ranks: bool = False) -> None:
        super().__init__(message)
        self.all_ranks = all_ranks


def launched_by_mpi() -> bool:
    """True when an MPI launcher (``mpiexec``, ``mpirun``, ``srun``) started this process.

    Returns:
        Whether one of the launchers' environment variables (``PMI_RANK``,
        ``OMPI_COMM_WORLD_SIZE``, ``PMIX_RANK``, ...) is set, or ``NNXP_MPI=1``.
    """
    if os.environ.get("NNXP_MPI", "") == "1":
        return True
    return any(v in os.environ for v in _LAUNCHER_VARS)


class Communicator:
    """The single-process communicator (``size == 1``); base class of the others.

    Attributes:
        rank: this process's index, ``0 <= rank < size``.
        size: number of processes (ranks).
        local_rank: index among the ranks on this machine: the GPU to use.
        local_size: number of ranks on this machine.
        host: this machine's name.
        pid: this process's id.
        peers: ``[(host, pid)]`` of every rank, by rank.
        timeout: seconds a collective waits for the other ranks (``None``: forever).
        position: ``(epoch, batch)`` that ``fit`` is at, for messages (``None`` outside).
        stats: ``{"allreduce_calls", "allreduce_bytes", "allreduce_seconds"}`` so far.
    """

    kind = "single"

    def __init__(self) -> None:
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.peers = [(self.host, self.pid)]
        self.timeout: float | None = None
        self.position: tuple[int, int] | None = None
        self.stats = {"allreduce_calls": 0, "allreduce_bytes": 0, "allreduce_seconds": 0.0}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # ------------------------------------------------------- collectives
    def allreduce_(self, buf: np.ndarray, what: str = "allreduce") -> np.ndarray:
        """Sum a contiguous host buffer over the ranks, in place; every rank gets the same numbers.

        Args:
            buf: a C-contiguous NumPy array (float32 or float64).
            what: what the call is for, named in timeout messages.

        Returns:
            ``buf``.
        """
        t0 = time.perf_counter()
        self._allreduce(buf, what)
        st = self.stats
        st["allreduce_calls"] += 1
        st["allreduce_bytes"] += buf.nbytes
        st["allreduce_seconds"] += time.perf_counter() - t0
        return buf

    def bcast_(self, buf: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
        """Overwrite ``buf`` on every rank with ``root``'s, in place.

        Args:
            buf: a C-contiguous NumPy array, the same shape and dtype on every rank.
            root: the rank whose buffer is sent.
            what: named in timeout messages.

        Returns:
            ``buf``.
        """
        return buf

    def allgather(self, obj: Any, what: str = "allgather") -> list[Any]:
        """Every rank's ``obj`` (small and picklable), by rank.

        Returns:
            A list of ``size`` objects.
        """
        return [obj]

    def bcast(self, obj: Any, root: int = 0, what: str = "broadcast") -> Any:
        """``root``'s ``obj`` (small and picklable) on every rank.

        Returns:
            The object from ``root``.
        """
        return obj

    def barrier(self, what: str = "barrier") -> None:
        """Wait until every rank has called ``barrier``."""

    def _allreduce(self, buf: np.ndarray, what: str) -> None:
        pass

    # ------------------------------------------------------------ faults
    def who(self, rank: int | None = None) -> str:
        """``"rank R of N (pid P on HOST)"`` for messages.

        Args:
            rank: which rank (default: this one).
        """
        rank = self.rank if rank is None else rank
        host, pid = self.peers[rank] if rank < len(self.peers) else ("?", "?")
        return f"rank {rank} of {self.size} (pid {pid} on {host})"

    def where(self) -> str:
        """``" at epoch E, batch B"`` while ``fit`` runs, else ``""``."""
        return "" if self.position is None else f" at epoch {self.position[0]}, batch {self.position[1]}"

    def abort(self, message: str, code: int = 1) -> None:
        """End every rank: print ``message`` on stderr, then stop the job.

        The single-process communicator has nobody to stop and returns (the caller
        raises); the MPI one never returns.

        Args:
            message: names this rank and the cause.
            code: exit status of the job.
        """

    def fail(self, exc: BaseException, during: str) -> None:
        """This rank alone failed with ``exc``: tell the user which rank and why, then end the job.

        Args:
            exc: the exception.
            during: what was running (``"fit"``).
        """
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.abort(f"nnxp.distributed: {self.who()} failed in {during}{self.where()}: "
                   f"{type(exc).__name__}: {exc}\n{tb}"
                   f"nnxp.distributed: ending all {self.size} ranks.\n")


# ---------------------------------------------------------------- MPI
class MPICommunicator(Communicator):
    """Ranks of an MPI communicator (mpi4py), by default ``MPI.COMM_WORLD``.

    Args:
        comm: an ``mpi4py.MPI.Comm`` (e.g. a sub-communicator); default ``COMM_WORLD``.
        timeout: seconds a collective may wait before the job is ended (``None``: forever).
    """

    kind = "mpi"

    def __init__(self, comm: Any = None, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        from mpi4py import MPI

        self._MPI = MPI
        self._comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        local = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.host = MPI.Get_processor_name()
        self.timeout = None if timeout is None else float(timeout)
        self._pending: tuple[float, float, str] | None = None  # (deadline, start, what) of the collective in flight
        self._watchdog: threading.Thread | None = None
        self.peers = [tuple(p) for p in self._comm.allgather((self.host, self.pid))]

    @property
    def mpi_comm(self) -> Any:
        """The underlying ``mpi4py.MPI.Comm``."""
        return self._comm

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.timeout is None:
            return fn(*args)
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="nnxp-mpi-watchdog", daemon=True)
            self._watchdog.start()
        now = time.monotonic()
        self._pending = (now + self.timeout, now, what)
        try:
            return fn(*args)  # mpi4py releases the GIL inside MPI calls: the watchdog runs meanwhile
        finally:
            self._pending = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, max(self.timeout / 10, 0.05)))
            pending = self._pending
            if pending is not None and time.monotonic() > pending[0]:
                waited = time.monotonic() - pending[1]
                self.abort(
                    f"nnxp.distributed: {self.who()} waited {waited:.0f} s in {pending[2]}{self.where()} for the "
                    f"other ranks (timeout {self.timeout:g} s); ending all {self.size} ranks. A rank is stuck, or "
                    "not every rank reached this call: every rank must call fit(..., distributed=comm) with the "
                    "same arguments. Raise the limit with distributed.init(timeout=...).\n")

    def _allreduce(self, buf: np.ndarray, what: str) -> None:
        self._call(what, self._comm.Allreduce, self._MPI.IN_PLACE, buf, self._MPI.SUM)

    def bcast_(self, buf: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
        self._call(what, self._comm.Bcast, buf, root)
        return buf

    def allgather(self, obj: Any, what: str = "allgather") -> list[Any]:
        return self._call(what, self._comm.allgather, obj)

    def bcast(self, obj: Any, root: int = 0, what: str = "broadcast") -> Any:
        return self._call(what, self._comm.bcast, obj, root)

    def barrier(self, what: str = "barrier") -> None:
        self._call(what, self._comm.Barrier)

    def abort(self, message: str, code: int = 1) -> None:
        try:
            sys.stderr.write(message)
            sys.stderr.flush()
            # MPI_Abort makes the launcher tear the job down at once; give it a moment to forward
            # the message first (hydra once lost a whole rank's last stderr lines without this)
            time.sleep(ABORT_GRACE)
        finally:
            try:
                self._comm.Abort(code)
            finally:  # MPICH's Abort may return once it has told the process manager: never run on
                os._exit(code)


# ------------------------------------------------------------- threads
class _Group:
    """What the threads of one :func:`run_threads` group share."""

    def __init__(self, size: int, timeout: float | None) -> None:
        self.size, self.timeout = size, timeout
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.slots: list[Any] = [None] * size
        self.result: np.ndarray | None = None  # rank 0's sum, copied by every rank
        self.failure: str | None = None


class ThreadCommunicator(Communicator):
    """One rank of a group of threads in one process (see :func:`run_threads`).

    For tests and debugging: the data-parallel code runs unchanged, without MPI,
    on every backend. Sums are taken in rank order, so every rank gets the same numbers.
    A failing rank breaks the group: the others raise :class:`DistributedError`
    naming it, instead of waiting.
    """

    kind = "threads"

    def __init__(self, group: _Group, rank: int) -> None:
        super().__init__()
        self._group = group
        self.rank, self.size, self.local_rank, self.local_size = rank, group.size, rank, group.size
        self.timeout = group.timeout
        self.peers = [(self.host, self.pid)] * group.size

    def who(self, rank: int | None = None) -> str:
        return f"rank {self.rank if rank is None else rank} of {self.size} (thread)"

    def _sync(self, what: str) -> None:
        g = self._group
        try:
            g.barrier.wait()
        except threading.BrokenBarrierError:
            if g.failure is not None:
                raise DistributedError(f"{self.who()} stopped in {what}{self.where()}: {g.failure}") from None
            raise DistributedError(f"{self.who()} waited longer than {self.timeout} s in {what}{self.where()} "
                                   "for the other ranks") from None

    def _allreduce(self, buf: np.ndarray, what: str) -> None:
        g = self._group
        g.slots[self.rank] = buf
        self._sync(what)
        if self.rank == 0:
            total = g.slots[0].copy()
            for other in g.slots[1:]:
                total += other
            g.result = total
        self._sync(what)
        np.copyto(buf, g.result)
        self._sync(what)

    def bcast_(self, buf: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
        g = self._group
        if self.rank == root:
            g.slots[root] = buf
        self._sync(what)
        if self.rank != root:
            np.copyto(buf, g.slots[root])
        self._sync(what)
        return buf

    def allgather(self, obj: Any, what: str = "allgather") -> list[Any]:
        g = self._group
        g.slots[self.rank] = obj
        self._sync(what)
        out = list(g.slots)
        self._sync(what)
        return out

    def bcast(self, obj: Any, root: int = 0, what: str = "broadcast") -> Any:
        return self.allgather(obj if self.rank == root else None, what)[root]

    def barrier(self, what: str = "barrier") -> None:
        self._sync(what)

    def abort(self, message: str, code: int = 1) -> None:
        g = self._group
        if g.failure is None:
            g.failure = message.splitlines()[0].removeprefix("nnxp.distributed: ")
        g.barrier.abort()


def run_threads(fn: Callable[[Communicator], Any], size: int, timeout: float | None = 60.0) -> list[Any]:
    """Run ``fn(comm)`` on ``size`` ranks that are threads of this process.

    Args:
        fn: the per-rank program; it gets a :class:`ThreadCommunicator`.
        size: number of ranks.
        timeout: seconds a collective waits for the other threads.

    Returns:
        Per rank, what ``fn`` returned or the exception it raised.
    """
    group = _Group(size, timeout)
    out: list[Any] = [None] * size

    def one(rank: int) -> None:
        try:
            out[rank] = fn(ThreadCommunicator(group, rank))
        except BaseException as exc:  # handed back to the caller, like a return value
            out[rank] = exc

    threads = [threading.Thread(target=one, args=(r,), name=f"nnxp-rank-{r}") for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# ---------------------------------------------------------------- init
_WORLD: Communicator | None = None


def init(comm: Any = None, timeout: float | None = DEFAULT_TIMEOUT, abort_on_error: bool = True) -> Communicator:
    """The communicator of this run: MPI under a launcher, else a single process.

    Args:
        comm: an ``mpi4py.MPI.Comm`` to use instead of ``COMM_WORLD`` (or a
            :class:`Communicator`, returned as is).
        timeout: seconds any collective may wait for the other ranks before the
            job is ended with a message (``None``: wait forever, MPI's default).
        abort_on_error: with more than one rank, install a ``sys.excepthook`` that
            prints the rank and the exception, then ends every rank
            (``MPI_Abort``) instead of leaving them blocked.

    Returns:
        A :class:`Communicator` with ``rank``, ``size`` and ``local_rank``. Without an
        MPI launcher (and without ``comm``) it is the single-process one, so a script
        runs unchanged with ``python script.py``.

    Raises:
        DistributedError: started by ``mpiexec`` but mpi4py is not installed.
    """
    global _WORLD
    if isinstance(comm, Communicator):
        return comm
    if comm is None and _WORLD is not None:
        return _WORLD
    if comm is None and not launched_by_mpi():
        _WORLD = Communicator()
        return _WORLD
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise DistributedError(
            "This process was started by an MPI launcher (mpiexec/mpirun/srun), but mpi4py is not installed: "
            "pip install 'nnxp[mpi]' (mpi4py and MPICH), or run without mpiexec for one process."
        ) from None
    made = MPICommunicator(comm, timeout)
    if made.size > 1 and abort_on_error:
        _install_excepthook(made)
    if comm is None:
        _WORLD = made
    return made


def _install_excepthook(comm: Communicator) -> None:
    previous = sys.excepthook

    @functools.wraps(previous)
    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(kind, exc, tb))
        comm.abort(f"nnxp.distributed: {comm.who()} ended with an uncaught exception: {kind.__name__}: {exc}\n"
                   f"{text}nnxp.distributed: ending all {comm.size} ranks.\n")
        previous(kind, exc, tb)

    sys.excepthook = hook


def guard(during: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a method that takes ``distributed=comm``: an exception it raises on one rank
    alone ends every rank (:meth:`Communicator.fail`) instead of leaving them blocked.

    Exceptions marked ``all_ranks`` (found by a collective check, raised on every rank
    alike) pass through, as does everything when there is one rank.

    Args:
        during: what to call the method in messages.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            comm = kwargs.get("distributed")
            if comm is None or comm.size == 1:
                return fn(*args, **kwargs)
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                if not getattr(exc, "all_ranks", False):
                    comm.fail(exc, during)
                raise
            finally:
                comm.position = None

        return guarded

    return wrap
