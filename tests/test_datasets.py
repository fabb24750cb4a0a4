"""nnxp.datasets: IDX parsing, the search order, the verified downloader (against
a local HTTP server), the offline error, the real Fashion-MNIST when installed,
and the array-API preparation helpers on every backend."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nnxp import datasets
from nnxp.backends import BackendUnavailableError, resolve_backend, to_numpy
from nnxp.datasets import (
    ChecksumMismatchError,
    DatasetNotFoundError,
    IDXFormatError,
    flatten,
    load_fashion_mnist,
    load_mnist,
    one_hot,
    prepare,
    read_idx,
    scale,
)

N_TRAIN, N_TEST = 20, 8
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode ``arr`` as an IDX file (big-endian header and data)."""
    codes = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}
    code = codes[arr.dtype.name]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def make_dataset(seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_dataset(directory: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> dict[str, str]:
    """Write the four IDX files; return the SHA-256 of each as written (keyed by file name)."""
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for base, arr in arrays.items():
        data = idx_bytes(arr)
        name = base + (".gz" if gz else "")
        if gz:
            data = gzip.compress(data, mtime=0)
        (directory / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def assert_matches(loaded, arrays: dict[str, np.ndarray]) -> None:
    (x, y), (xt, yt) = loaded
    np.testing.assert_array_equal(x, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(xt, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte"])
    assert x.dtype == np.uint8 and xt.dtype == np.uint8
    assert y.dtype == np.int64 and yt.dtype == np.int64


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real data dir, cache or system copy is visible; returns the fake XDG cache root."""
    home, cache = tmp_path / "home", tmp_path / "xdg-cache"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("NNXP_DATA_DIR", raising=False)
    for name in datasets.SYSTEM_DIRS:
        monkeypatch.setitem(datasets.SYSTEM_DIRS, name, [str(tmp_path / "system" / name)])
    return cache


# ---------------------------------------------------------------- read_idx


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_raw_all_dtypes(tmp_path: Path, dtype: str) -> None:
    arr = (np.arange(60) - 30).reshape(3, 4, 5).astype(dtype)
    p = tmp_path / "a.idx"
    p.write_bytes(idx_bytes(arr))
    out = read_idx(p)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1  # writable


def test_read_idx_gzip_detected_by_content(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = gzip.compress(idx_bytes(arr))
    for name in ("a.gz", "no-suffix"):  # the name does not matter
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(read_idx(tmp_path / name), arr)
        np.testing.assert_array_equal(read_idx(str(tmp_path / name)), arr)
    np.testing.assert_array_equal(read_idx(io.BytesIO(data)), arr)
    np.testing.assert_array_equal(read_idx(io.BytesIO(idx_bytes(arr))), arr)


def test_read_idx_truncated(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((4, 5), np.uint8))
    p = tmp_path / "short.idx"
    p.write_bytes(data[:-3])
    with pytest.raises(IDXFormatError, match=r"short\.idx.*truncated.*20 data bytes.*17"):
        read_idx(p)
    p.write_bytes(data[:6])  # cut inside the dimension sizes
    with pytest.raises(IDXFormatError, match="truncated"):
        read_idx(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(IDXFormatError, match="truncated"):
        read_idx(p)
    # a truncated gzip stream is caught too
    p.write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(IDXFormatError, match=r"short\.idx.*gzip"):
        read_idx(p)


def test_read_idx_wrong_magic(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros(3, np.uint8))
    p = tmp_path / "bad.idx"
    p.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(IDXFormatError, match=r"bad\.idx.*magic number 0x01020801"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x0a\x01" + good[4:])  # 0x0A is not an IDX type
    with pytest.raises(IDXFormatError, match="unknown IDX type code 0x0A"):
        read_idx(p)
    assert issubclass(IDXFormatError, ValueError)


def test_read_idx_trailing_garbage(tmp_path: Path) -> None:
    p = tmp_path / "long.idx"
    p.write_bytes(idx_bytes(np.zeros((2, 2), np.uint8)) + b"junk")
    with pytest.raises(IDXFormatError, match=r"long\.idx.*4 bytes of trailing garbage"):
        read_idx(p)


def test_load_count_mismatch(tmp_path: Path, isolated: Path) -> None:
    arrays = make_dataset()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:-1]
    write_dataset(tmp_path / "d", arrays)
    with pytest.raises(IDXFormatError, match=r"20 images but .*19 labels"):
        load_mnist(tmp_path / "d", download=False)


def test_load_label_out_of_range(tmp_path: Path, isolated: Path) -> None:
    arrays = make_dataset()
    arrays["t10k-labels-idx1-ubyte"][3] = 10
    write_dataset(tmp_path / "d", arrays)
    with pytest.raises(IDXFormatError, match=r"t10k-labels.*outside \[0, 10\)"):
        load_fashion_mnist(tmp_path / "d", download=False)


# ---------------------------------------------------------------- search order


def test_loads_raw_and_gz_from_path(tmp_path: Path, isolated: Path) -> None:
    arrays = make_dataset(1)
    write_dataset(tmp_path / "gz", arrays, gz=True)
    write_dataset(tmp_path / "raw", arrays, gz=False)
    assert_matches(load_mnist(tmp_path / "gz", download=False), arrays)
    assert_matches(load_fashion_mnist(str(tmp_path / "raw"), download=False), arrays)


def test_search_order(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = {k: make_dataset(seed) for seed, k in enumerate(["path", "env_sub", "env", "cache", "system"])}
    write_dataset(tmp_path / "system" / "fashion-mnist", sets["system"])
    assert_matches(load_fashion_mnist(download=False), sets["system"])
    write_dataset(isolated / "nnxp" / "fashion-mnist", sets["cache"])
    assert_matches(load_fashion_mnist(download=False), sets["cache"])
    monkeypatch.setenv("NNXP_DATA_DIR", str(tmp_path / "data"))
    write_dataset(tmp_path / "data", sets["env"])
    assert_matches(load_fashion_mnist(download=False), sets["env"])
    write_dataset(tmp_path / "data" / "fashion-mnist", sets["env_sub"])
    assert_matches(load_fashion_mnist(download=False), sets["env_sub"])
    write_dataset(tmp_path / "mine", sets["path"])
    assert_matches(load_fashion_mnist(tmp_path / "mine", download=False), sets["path"])


def test_cache_honours_home_without_xdg(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datasets.default_cache_dir() == tmp_path / "home" / ".cache" / "nnxp"
    arrays = make_dataset(7)
    write_dataset(tmp_path / "home" / ".cache" / "nnxp" / "mnist", arrays)
    assert_matches(load_mnist(download=False), arrays)


def test_offline_error_lists_every_place(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NNXP_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    # Port 9 on localhost (discard) refuses connections: an offline machine in miniature.
    mirrors = ["http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"]
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(tmp_path / "partial", mirrors=mirrors, timeout=2)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    msg = str(err)
    for place in [
        str(tmp_path / "partial"),
        "missing train-labels-idx1-ubyte[.gz]",
        str(tmp_path / "data" / "fashion-mnist"),
        str(tmp_path / "data"),
        str(isolated / "nnxp" / "fashion-mnist"),
        str(tmp_path / "system" / "fashion-mnist"),
        "http://127.0.0.1:9/a/train-images-idx3-ubyte.gz",
        "http://127.0.0.1:9/b/train-images-idx3-ubyte.gz",
        "apt-get install dataset-fashion-mnist",
        "NNXP_DATA_DIR",
        "http://127.0.0.1:9/a/t10k-labels-idx1-ubyte.gz",  # the manual-download list
    ]:
        assert place in msg, f"{place!r} missing from:\n{msg}"
    assert len(err.tried) >= 8
    assert not list(isolated.rglob("*.part"))


def test_download_disabled_error(isolated: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"(?s)\$NNXP_DATA_DIR: not set.*download=False") as info:
        load_mnist(download=False)
    msg = str(info.value)
    assert "ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in msg
    assert "storage.googleapis.com/cvdf-datasets/mnist/" in msg
    assert "apt-get" not in msg  # Debian has no MNIST package


# ---------------------------------------------------------------- downloader


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]  # set per server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith("/broken/"):
            # Promise more bytes than are sent, then hang up: an interrupted download.
            body = b"\x1f\x8b" + b"x" * 100
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 5000))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/slow/"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            time.sleep(3.0)
            return
        super().do_GET()


class LocalServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"requests": self.requests})

        def factory(*args, **kwargs):
            return handler(*args, directory=str(root), **kwargs)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
        self.httpd.block_on_close = False  # do not wait for the deliberately slow handler
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval makes shutdown() quick (the default waits up to 0.5 s).
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    root = tmp_path / "www"
    root.mkdir()
    srv = LocalServer(root)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def served(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalServer, dict[str, np.ndarray]]:
    """Small Fashion-MNIST look-alike under /good/, its checksums in the table."""
    arrays = make_dataset(3)
    sums = write_dataset(server.root / "good", arrays)
    monkeypatch.setitem(datasets.CHECKSUMS, "fashion-mnist", sums)
    return server, arrays


def test_download_verified_and_cached(served, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, arrays = served
    monkeypatch.setitem(datasets.MIRRORS, "fashion-mnist", [server.url + "/good/"])  # the module-level table
    assert_matches(load_fashion_mnist(), arrays)
    assert len(server.requests) == 4
    cache = isolated / "nnxp" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{b}.gz" for b in arrays)
    for name, digest in datasets.CHECKSUMS["fashion-mnist"].items():
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest
    assert_matches(load_fashion_mnist(), arrays)
    assert len(server.requests) == 4  # served from the cache


def test_download_into_explicit_cache_dir(served, isolated: Path, tmp_path: Path) -> None:
    server, arrays = served
    assert_matches(load_fashion_mnist(cache_dir=tmp_path / "c", mirrors=[server.url + "/good"]), arrays)
    assert len(list((tmp_path / "c" / "fashion-mnist").iterdir())) == 4
    assert not isolated.exists()  # the default cache was not touched


def test_checksum_mismatch_leaves_nothing(served, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = served
    sums = dict(datasets.CHECKSUMS["fashion-mnist"])
    sums["train-images-idx3-ubyte.gz"] = "0" * 64
    monkeypatch.setitem(datasets.CHECKSUMS, "fashion-mnist", sums)
    with pytest.raises(ChecksumMismatchError, match=r"(?s)SHA-256 mismatch.*train-images.*expected 0{64}"):
        load_fashion_mnist(mirrors=[server.url + "/good/"])
    cache = isolated / "nnxp" / "fashion-mnist"
    assert list(cache.iterdir()) == []  # neither the bad file nor a temp file


def test_interrupted_download_leaves_nothing(served, isolated: Path) -> None:
    server, _ = served
    with pytest.raises(DatasetNotFoundError, match=r"interrupted: received 102 of 5102 bytes"):
        load_fashion_mnist(mirrors=[server.url + "/broken/"])
    assert server.requests == ["/broken/train-images-idx3-ubyte.gz"]
    assert list((isolated / "nnxp" / "fashion-mnist").iterdir()) == []


def test_stalled_download_times_out(served, isolated: Path) -> None:
    server, _ = served
    t0 = time.perf_counter()
    with pytest.raises(DatasetNotFoundError, match=r"(?i)timed out"):
        load_fashion_mnist(mirrors=[server.url + "/slow/"], timeout=0.2)
    assert time.perf_counter() - t0 < 2.0  # gave up long before the server would answer
    assert list((isolated / "nnxp" / "fashion-mnist").iterdir()) == []


def test_first_mirror_404_falls_back(served, isolated: Path) -> None:
    server, arrays = served
    mirrors = [server.url + "/missing/", server.url + "/good/"]
    assert_matches(load_fashion_mnist(mirrors=mirrors), arrays)
    assert server.requests[:2] == ["/missing/train-images-idx3-ubyte.gz", "/good/train-images-idx3-ubyte.gz"]
    assert len(server.requests) == 8  # each file: a 404, then the good mirror


def test_partial_cache_fetches_only_missing(served, isolated: Path) -> None:
    server, arrays = served
    cache = isolated / "nnxp" / "fashion-mnist"
    cache.mkdir(parents=True)
    good = server.root / "good"
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (cache / name).write_bytes((good / name).read_bytes())
    assert_matches(load_fashion_mnist(mirrors=[server.url + "/good/"]), arrays)
    assert sorted(server.requests) == ["/good/t10k-images-idx3-ubyte.gz", "/good/train-labels-idx1-ubyte.gz"]


def test_checksum_table_shape() -> None:
    for name in ("mnist", "fashion-mnist"):
        assert set(datasets.CHECKSUMS[name]) == {f"{b}.gz" for b in datasets.FILES.values()}
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in datasets.CHECKSUMS[name].values())
        assert datasets.MIRRORS[name]
    assert len(datasets.FASHION_MNIST_CLASSES) == 10 and datasets.FASHION_MNIST_CLASSES[9] == "Ankle boot"
    assert datasets.MNIST_CLASSES == [str(i) for i in range(10)]


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(
    not all((SYSTEM_FASHION / f"{b}.gz").is_file() for b in datasets.FILES.values()),
    reason=f"no system Fashion-MNIST in {SYSTEM_FASHION} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NNXP_DATA_DIR", raising=False)
    (x, y), (xt, yt) = load_fashion_mnist(download=False)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert x.dtype == np.uint8 and y.dtype == np.int64 and yt.dtype == np.int64
    assert y.min() == 0 and y.max() == 9 and yt.min() == 0 and yt.max() == 9
    # Fashion-MNIST is balanced: 6000 / 1000 images per class.
    assert (np.bincount(y) == 6000).all() and (np.bincount(yt) == 1000).all()
    assert 0 < x.mean() < 255


# ---------------------------------------------------------------- preparation helpers

BACKENDS = ["numpy", "array_api_strict", "array_api_strict:device1", "cupy"]


@pytest.fixture(params=BACKENDS)
def bk(request: pytest.FixtureRequest):
    """A backend by name (independent of conftest's ``backend`` fixture)."""
    try:
        return resolve_backend(request.param)
    except BackendUnavailableError as exc:
        pytest.skip(f"{request.param} unavailable: {exc}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scale(bk, dtype: str) -> None:
    host = np.array([[0, 1, 128], [200, 254, 255]], np.uint8)
    out = scale(bk.asarray(host), dtype=dtype)
    assert bk.owns(out) and out.dtype == bk.dtype(dtype)
    np.testing.assert_allclose(to_numpy(out), host / 255.0, rtol=1e-7 if dtype == "float32" else 1e-15)
    moved = scale(host, dtype=dtype, backend=bk)  # host input, moved first
    assert bk.owns(moved) and moved.dtype == bk.dtype(dtype)
    np.testing.assert_array_equal(to_numpy(moved), to_numpy(out))
    with pytest.raises(ValueError, match="floating"):
        scale(bk.asarray(host), dtype="int32")


def test_flatten(bk) -> None:
    x = bk.asarray(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4))
    out = flatten(x)
    assert bk.owns(out) and tuple(out.shape) == (2, 12)
    np.testing.assert_array_equal(to_numpy(out), np.arange(24, dtype=np.float32).reshape(2, 12))
    empty = flatten(bk.asarray(np.zeros((0, 28, 28), np.uint8)))
    assert tuple(empty.shape) == (0, 784)


@pytest.mark.parametrize("label_dtype", ["uint8", "int32", "int64"])
def test_one_hot(bk, label_dtype: str) -> None:
    labels = bk.asarray(np.array([0, 3, 1, 3], dtype=label_dtype))
    out = one_hot(labels, 4)
    assert bk.owns(out) and out.dtype == bk.dtype("float32") and tuple(out.shape) == (4, 4)
    np.testing.assert_array_equal(to_numpy(out), np.eye(4, dtype=np.float32)[[0, 3, 1, 3]])
    assert one_hot(labels, 5, dtype="float64").dtype == bk.dtype("float64")


@pytest.mark.parametrize("bad", [[0, 10], [-1, 2]])
def test_one_hot_out_of_range(bk, bad: list[int]) -> None:
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        one_hot(bk.asarray(np.array(bad, dtype=np.int64)), 10)


def test_one_hot_rejects_float_labels(bk) -> None:
    with pytest.raises(ValueError, match="integer"):
        one_hot(bk.asarray(np.array([0.0, 1.0], np.float32)), 2)


def test_prepare(bk) -> None:
    arrays = make_dataset(5)
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    x, y = prepare(images, labels, backend=bk)
    assert bk.owns(x) and bk.owns(y)
    assert x.dtype == bk.dtype("float32") and y.dtype == bk.dtype("int64")
    assert tuple(x.shape) == (N_TRAIN, 784) and tuple(y.shape) == (N_TRAIN,)
    np.testing.assert_allclose(to_numpy(x), images.reshape(N_TRAIN, -1) / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(to_numpy(y), labels)
    x4, _ = prepare(images, labels, flatten=False, backend=bk.name, dtype="float64")
    assert tuple(x4.shape) == (N_TRAIN, 28, 28) and x4.dtype == bk.dtype("float64")


def test_prepare_keeps_numpy_without_backend() -> None:
    x, y = prepare(np.zeros((3, 28, 28), np.uint8), [1, 2, 3])
    assert isinstance(x, np.ndarray) and x.shape == (3, 784) and x.dtype == np.float32
    assert isinstance(y, np.ndarray) and y.dtype == np.int64
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        prepare(np.zeros((3, 28, 28), np.uint8), np.array([1, 2]))

