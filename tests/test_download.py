"""Dataset download (gpucnn.data) against a local HTTP server on 127.0.0.1: checksums, atomicity, failures.

No test here reaches the real network: the mirror is always a server on this machine or a closed local port.
"""
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import struct
import tarfile
import threading
from dataclasses import replace

import numpy as np
import pytest

from gpucnn import data
from gpucnn.data import sources
from gpucnn.data import DatasetError

FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    monkeypatch.setenv("GPUCNN_MIRROR", f"http://127.0.0.1:{closed_port()}/")
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """Serves `routes` {path: (body, mode)}; mode 'ok', 'short' (half the body, then close) or an HTTP status."""

    def __init__(self):
        self.routes, self.hits = {}, []
        routes, hits = self.routes, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                body, mode = routes.get(self.path, (b"", 404))
                if isinstance(mode, int):
                    self.send_error(mode)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def mnist_files(n=6):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    blobs = {FILES[0]: gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", n, 28, 28) + imgs.tobytes()),
             FILES[1]: gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", n) + labels.tobytes())}
    return imgs, labels, blobs


def publish(server, monkeypatch, blobs, prefix="/mnist/", mode="ok", name="mnist", checksums=None):
    """Serve blobs under prefix and make them the dataset's published checksums (or `checksums`)."""
    for fname, blob in blobs.items():
        server.routes[prefix + fname] = (blob, mode)
        sha = (checksums or {}).get(fname, hashlib.sha256(blob).hexdigest())
        monkeypatch.setitem(data.DATASETS[name].sha256, fname, sha)


def leftovers(folder):
    """Names of the files (not folders) under folder."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_verifies_and_later_loads_offline(server, monkeypatch, tmp_path, capsys):
    imgs, labels, blobs = mnist_files()
    publish(server, monkeypatch, blobs)
    monkeypatch.setenv("GPUCNN_MIRROR", server.url + "/{name}/")
    ds = data.load_dataset("mnist", "test", progress=True, timeout=5)
    np.testing.assert_array_equal(ds.images[:, 0], imgs)
    np.testing.assert_array_equal(ds.labels, labels)
    cache = tmp_path / "home" / ".cache" / "gpucnn" / "mnist"
    assert leftovers(cache) == sorted(FILES)
    for fname in FILES:
        assert (cache / fname).read_bytes() == blobs[fname]
    assert ds.source == str(cache)
    assert "downloading " + server.url + "/mnist/" + FILES[0] in capsys.readouterr().err
    server.close()
    again = data.load_dataset("mnist", "test", download=False)
    np.testing.assert_array_equal(again.images, ds.images)
    assert data.load_dataset("mnist", "test").source == str(cache)  # found: no download tried


def test_download_into_data_dir_quietly(server, monkeypatch, tmp_path, capsys):
    _, labels, blobs = mnist_files(3)
    publish(server, monkeypatch, blobs, prefix="/m/")
    ds = data.load_dataset("mnist", "test", data_dir=tmp_path / "dd", mirror=server.url + "/m", progress=False,
                           timeout=5)
    assert sorted(p.name for p in (tmp_path / "dd" / "mnist").iterdir()) == sorted(FILES)
    np.testing.assert_array_equal(ds.labels, labels)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("data_dir", [None, "dd"])
def test_train_then_test_split_download_into_one_folder(server, monkeypatch, tmp_path, data_dir):
    """The trainer's order: the train split is fetched, then the test split joins it in the same folder."""
    _, _, test_blobs = mnist_files(3)
    _, _, train_blobs = mnist_files(5)
    train_blobs = {f.replace("t10k", "train"): b for f, b in train_blobs.items()}
    publish(server, monkeypatch, {**test_blobs, **train_blobs})
    monkeypatch.setenv("GPUCNN_MIRROR", server.url + "/{name}/")
    where = tmp_path / data_dir if data_dir else None
    train = data.load_dataset("mnist", "train", data_dir=where, progress=False, timeout=5)
    test = data.load_dataset("mnist", "test", data_dir=where, progress=False, timeout=5)
    assert (len(train), len(test)) == (5, 3) and train.source == test.source


def test_wrong_checksum_keeps_nothing(server, monkeypatch, tmp_path):
    _, _, blobs = mnist_files()
    publish(server, monkeypatch, blobs, checksums={FILES[0]: "0" * 64})
    with pytest.raises(DatasetError) as e:
        data.load_dataset("mnist", "test", mirror=server.url + "/mnist/", progress=False, timeout=5)
    msg = str(e.value)
    got = hashlib.sha256(blobs[FILES[0]]).hexdigest()
    assert "checksum mismatch" in msg and f"expected sha256 {'0' * 64}, got {got}" in msg
    assert server.url + "/mnist/" + FILES[0] in msg
    assert leftovers(tmp_path / "home") == []


def test_interrupted_transfer_keeps_nothing(server, monkeypatch, tmp_path):
    _, _, blobs = mnist_files(50)
    publish(server, monkeypatch, blobs, mode="short")
    with pytest.raises(DatasetError) as e:
        data.load_dataset("mnist", "test", mirror=server.url + "/mnist/", progress=False, timeout=5)
    n = len(blobs[FILES[0]])
    assert f"interrupted: got {n // 2} of {n} bytes" in str(e.value)
    assert leftovers(tmp_path / "home") == []


def test_download_file_direct_errors(server, tmp_path):
    server.routes["/x"] = (b"hello", "ok")
    target = tmp_path / "d" / "x"
    with pytest.raises(data.DownloadError, match="HTTP 404"):
        data.download_file(server.url + "/missing", target, "0" * 64, progress=False, timeout=5)
    assert leftovers(tmp_path / "d") == []
    good = hashlib.sha256(b"hello").hexdigest()
    assert data.download_file(server.url + "/x", target, good, progress=False, timeout=5) == target
    assert target.read_bytes() == b"hello" and leftovers(tmp_path / "d") == ["x"]
    server.routes["/x"] = (b"HELLO", "ok")  # a bad new copy never replaces the good file
    with pytest.raises(data.DownloadError, match="checksum mismatch"):
        data.download_file(server.url + "/x", target, good, progress=False, timeout=5)
    assert target.read_bytes() == b"hello" and leftovers(tmp_path / "d") == ["x"]


def test_next_url_is_tried_when_one_fails(server, monkeypatch):
    _, labels, blobs = mnist_files(4)
    publish(server, monkeypatch, blobs, prefix="/good/")
    spec = data.DATASETS["mnist"]
    monkeypatch.setitem(data.DATASETS, "mnist", replace(spec, urls=(server.url + "/bad/", server.url + "/good/")))
    monkeypatch.delenv("GPUCNN_MIRROR")
    ds = data.load_dataset("mnist", "test", progress=False, timeout=5)
    np.testing.assert_array_equal(ds.labels, labels)
    assert server.hits[:2] == ["/bad/" + FILES[0], "/good/" + FILES[0]]


def test_no_network_no_copy_names_places_and_ways(monkeypatch, tmp_path):
    port = closed_port()
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetError) as e:
        data.load_dataset("fmnist", "train", data_dir=tmp_path / "mine", mirror=f"http://127.0.0.1:{port}/",
                          progress=False, timeout=5)
    msg = str(e.value)
    for place in ["mine", "env", "home/.cache/gpucnn/fashion-mnist", "no-debian"]:
        assert str(tmp_path / place) in msg
    assert f"Download failed: http://127.0.0.1:{port}/train-images-idx3-ubyte.gz: cannot connect" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert leftovers(tmp_path / "mine") == []


def test_cifar_archive_download(server, monkeypatch, tmp_path):
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    batch = {b"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3, 9]}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        blob = pickle.dumps(batch, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    publish(server, monkeypatch, {"cifar-10-python.tar.gz": buf.getvalue()}, prefix="/c/", name="cifar10")
    ds = data.load_dataset("cifar10", "test", mirror=server.url + "/c/", progress=False, timeout=5)
    assert ds.images.shape == (5, 3, 32, 32) and ds.labels.tolist() == [0, 1, 2, 3, 9]
    assert ds.source == str(tmp_path / "home" / ".cache" / "gpucnn" / "cifar10" / "cifar-10-python.tar.gz")
