"""Test, lint and benchmark sessions.

Sessions run in the current environment (install first with
``pip install -e '.[dev,examples]'``): the GPU machines have no package
registry, and one shared environment keeps CI fast on two cores.

    nox                      # what this machine can run (tests-cupy only where a GPU works)
    nox -s tests-cupy        # fails loudly without a working CUDA device
    nox -s tests-torch-cuda tests-jax-gpu   # likewise, for torch and JAX on CUDA
    nox -s tests-mpi         # data-parallel training under mpiexec -n 2 and -n 3 (pip install -e '.[mpi]')
    nox -s bench -- --backend cupy
"""

from __future__ import annotations

import importlib.util
import os

import nox

nox.options.default_venv_backend = "none"
nox.options.error_on_missing_interpreters = False


def _status(backend: str) -> str | None:
    """None when ``backend`` works here (library importable, device answering), else why not."""
    try:
        from nnxp.backends import BackendUnavailableError, resolve_backend
    except ImportError as exc:  # nnxp not installed: say so rather than hide the session
        return f"nnxp is not importable ({exc}); pip install -e '.[dev]'"
    try:
        resolve_backend(backend)
    except BackendUnavailableError as exc:
        return str(exc)
    return None


_GPU_SESSIONS = {"tests-cupy": "cupy", "tests-torch-cuda": "torch:cuda", "tests-jax-gpu": "jax:gpu"}
_DEFAULT = ["tests-numpy", "tests-strict", "tests-torch", "tests-jax", "tests-mpi"]
_DEFAULT += [name for name, backend in _GPU_SESSIONS.items() if _status(backend) is None]
nox.options.sessions = [*_DEFAULT, "lint"]


def _workers() -> list[str]:
    """pytest-xdist options: one worker per core (at most 4), each with one BLAS/OpenMP thread so
    workers do not oversubscribe the cores; serial where pytest-xdist is not installed (the GPU
    machine has no package registry). ``NNXP_TEST_WORKERS=0`` forces a serial run."""
    if importlib.util.find_spec("xdist") is None:
        return []
    n = int(os.environ.get("NNXP_TEST_WORKERS", min(os.cpu_count() or 1, 4)))
    return ["-n", str(n)] if n > 1 else []


_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _pytest(session: nox.Session, backends: list[str], *extra: str) -> None:
    args = [f"--backend={b}" for b in backends]
    workers = _workers()
    env = _ONE_THREAD if workers else {}
    session.run("python", "-m", "pytest", *workers, *args, *extra, *session.posargs, env=env)


@nox.session(name="tests-numpy")
def tests_numpy(session: nox.Session) -> None:
    """The suite on the NumPy backend (plus backend-free tests; the mpiexec jobs are tests-mpi's)."""
    _pytest(session, ["numpy"], "-m", "not mpi")


@nox.session(name="tests-strict")
def tests_strict(session: nox.Session) -> None:
    """The backend-parametrized tests on array_api_strict, default device and device1
    (array-API conformance); backend-free and slow tests already ran in tests-numpy."""
    _pytest(session, ["strict"], "-m", "backend and not slow")


def _backend_session(session: nox.Session, backend: str, marker: str = "backend and not slow", *extra: str) -> None:
    """The backend-parametrized tests on one backend; errors out (not skips) when it does not work.

    Backend-free tests already ran in tests-numpy; on the CPU the slow ones (real training runs)
    did too, while a GPU session runs them on its device."""
    why = _status(backend)
    if why is not None:
        session.error(f"{session.name} needs the {backend} backend: {why}")
    _pytest(session, [backend], "-m", marker, *extra)


@nox.session(name="tests-torch")
def tests_torch(session: nox.Session) -> None:
    """The backend-parametrized tests on PyTorch's CPU tensors (install the CPU build, see README)."""
    _backend_session(session, "torch")


@nox.session(name="tests-jax")
def tests_jax(session: nox.Session) -> None:
    """The backend-parametrized tests on JAX's CPU arrays (immutable, dispatched asynchronously)."""
    _backend_session(session, "jax")


@nox.session(name="tests-cupy")
def tests_cupy(session: nox.Session) -> None:
    """The suite on CuPy; errors out (not skips) when no CUDA device works."""
    _backend_session(session, "cupy", "backend", "--require-gpu")


@nox.session(name="tests-torch-cuda")
def tests_torch_cuda(session: nox.Session) -> None:
    """The backend-parametrized tests on torch:cuda; errors out when no CUDA device works."""
    _backend_session(session, "torch:cuda", "backend", "--require-gpu")


@nox.session(name="tests-jax-gpu")
def tests_jax_gpu(session: nox.Session) -> None:
    """The backend-parametrized tests on jax:gpu; errors out when JAX sees no GPU."""
    _backend_session(session, "jax:gpu", "backend", "--require-gpu")


@nox.session(name="tests-mpi")
def tests_mpi(session: nox.Session) -> None:
    """Data-parallel training under mpiexec: tests/mpi/test_world.py on 2 and 3 ranks (3 for
    uneven splits) and one job per fault (an exception, bad input, a non-finite loss, a killed
    or stuck rank), each job bounded by a timeout (tests/test_distributed_mpi.py). Skips with
    the reason when mpi4py or mpiexec is missing."""
    session.run("python", "-m", "pytest", "-m", "mpi", "tests/test_distributed_mpi.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, examples and benchmarks."""
    session.run("ruff", "check", "nnxp", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Speed against hand-written NumPy/CuPy and PyTorch (pass options after --)."""
    session.run("python", "benchmarks/bench.py", *session.posargs)
