"""The IDX file format of MNIST-style data sets (``.gz`` or uncompressed)."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import IO

import numpy as np

__all__ = ["IDXFormatError", "read_idx"]


class IDXFormatError(ValueError):
    """An IDX file (or a pair of them) is malformed; the message names the file and the fault."""


# ---------------------------------------------------------------------------
# IDX parsing
# ---------------------------------------------------------------------------

# IDX type codes (http://yann.lecun.com/exdb/mnist/); multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path_or_fileobj: str | os.PathLike[str] | IO[bytes]) -> np.ndarray:
    """Read an IDX file (as used by MNIST), gzip-compressed or raw.

    Compression is detected from the content (the gzip magic bytes), not the
    file name, so a ``.gz`` that was unpacked in place still loads.

    Args:
        path_or_fileobj: a file path, or a binary file object open for reading.

    Returns:
        A writable NumPy array in native byte order with the shape and dtype
        the header gives (``uint8``, ``int8``, ``int16``, ``int32``,
        ``float32`` or ``float64``).

    Raises:
        IDXFormatError: bad gzip stream, wrong magic number, unknown type
            code, a file shorter than its header says (truncated), or extra
            bytes after the data (trailing garbage).
        FileNotFoundError: the path does not exist.
    """
    if hasattr(path_or_fileobj, "read"):
        name = str(getattr(path_or_fileobj, "name", "<file object>"))
        data = path_or_fileobj.read()  # type: ignore[union-attr]
    else:
        name = os.fspath(path_or_fileobj)
        with open(name, "rb") as f:
            data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise IDXFormatError(f"{name}: corrupt or truncated gzip stream ({exc})") from exc
    return _parse_idx(data, name)


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    if len(data) < 4:
        raise IDXFormatError(
            f"{name}: truncated IDX file: {len(data)} bytes, too short for the 4-byte magic number"
        )
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00":
        raise IDXFormatError(
            f"{name}: not an IDX file: magic number 0x{magic:08X} does not start with two zero bytes "
            "(expected 0x0000TTNN, TT = type code, NN = number of dimensions)"
        )
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in _IDX_DTYPES.items())
        raise IDXFormatError(
            f"{name}: unknown IDX type code 0x{code:02X} in magic 0x{magic:08X}; known: {known}"
        )
    if ndim == 0:
        raise IDXFormatError(f"{name}: IDX header declares 0 dimensions (magic 0x{magic:08X})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"{name}: truncated IDX file: header needs {header} bytes for {ndim} dimensions, "
            f"file has {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise IDXFormatError(
            f"{name}: truncated IDX file: header says shape {shape} of {dtype.name} = {expected} data bytes, "
            f"but only {got} follow the header"
        )
    if got > expected:
        raise IDXFormatError(
            f"{name}: {got - expected} bytes of trailing garbage after the {expected} data bytes "
            f"of shape {shape} ({dtype.name})"
        )
    # astype copies: the result is writable and in native byte order.
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
