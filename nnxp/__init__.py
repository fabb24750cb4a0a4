"""nnxp: hand-written backprop on the Python array API (NumPy, CuPy, ...)."""

from . import callbacks, datasets, init, layers, losses, optim, schedules
from .backends import (
    Backend,
    BackendMismatchError,
    BackendUnavailableError,
    available_backends,
    backend_of,
    get_backend,
    set_backend,
    to_device,
    to_numpy,
    use_backend,
)
from .backends.numpy_threads import get_num_threads, set_num_threads
from .gradcheck import GradcheckError, gradcheck
from .history import History
from .io import CheckpointError, save
from .model import NonFiniteLossError, Sequential, load

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendMismatchError",
    "BackendUnavailableError",
    "CheckpointError",
    "GradcheckError",
    "History",
    "NonFiniteLossError",
    "Sequential",
    "available_backends",
    "backend_of",
    "callbacks",
    "datasets",
    "get_backend",
    "get_num_threads",
    "gradcheck",
    "init",
    "layers",
    "load",
    "losses",
    "optim",
    "save",
    "schedules",
    "set_backend",
    "set_num_threads",
    "to_device",
    "to_numpy",
    "use_backend",
]
