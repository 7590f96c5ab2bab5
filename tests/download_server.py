"""A real HTTP server on 127.0.0.1 serving small archives in the exact upstream formats (CIFAR's
python tarballs, the gzipped idx files of MNIST / Fashion-MNIST), with torchvision's URLs,
mirrors and md5 sums monkeypatched to point at it, for tests/test_download.py and
tests/test_download_interrupted.py; and the checks both make."""
import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from torchvision import datasets

from tests.fakes import make_cifar10, make_cifar100, make_idx
from utils.data import mnist as DM
from utils.data.info import DataError

IDX_GZ = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def isolate(tmp_path, monkeypatch):
    """No real system copy, no home cache, and every torchvision URL pointing at a closed port:
    whatever a test forgets to patch fails fast instead of reaching the internet."""
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-dir"))
    monkeypatch.setattr(DM, "CACHE_DIR", str(tmp_path / "cache"))
    dead = dead_url()
    for cls in (datasets.CIFAR10, datasets.CIFAR100):
        monkeypatch.setattr(cls, "url", f"{dead}/{cls.filename}")
    for cls in (datasets.MNIST, datasets.FashionMNIST):
        monkeypatch.setattr(cls, "mirrors", [f"{dead}/{cls.__name__}/"])


def dead_url():
    """http://127.0.0.1:<port> where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Server:
    """http.server in a thread serving ``files`` (URL path -> bytes); paths in ``truncate`` get
    their full Content-Length but only half the body before the connection closes; paths in
    ``stall`` get half the body, then nothing until ``release`` is set (at the latest by close)."""

    def __init__(self):
        self.files, self.truncate, self.stall, self.hits = {}, set(), set(), []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.truncate:
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                elif self.path in server.stall:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    server.release.wait(60)
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def md5(blob):
    return hashlib.md5(blob).hexdigest()


def tar_gz(folder):
    """``folder`` as a .tar.gz holding ``<folder.name>/<files>``, like CIFAR's archives."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


def serve_cifar(server, monkeypatch, tmp_path, name="cifar10"):
    """Serve a fake CIFAR archive at torchvision's file name; returns the source folder."""
    cls, make = {"cifar10": (datasets.CIFAR10, make_cifar10),
                 "cifar100": (datasets.CIFAR100, make_cifar100)}[name]
    source = make(tmp_path / "src")
    blob = tar_gz(source)
    server.files[f"/{cls.filename}"] = blob
    monkeypatch.setattr(cls, "url", f"{server.url}/{cls.filename}")
    monkeypatch.setattr(cls, "tgz_md5", md5(blob))
    return source


def serve_idx(server, monkeypatch, tmp_path, cls, mirrors_before=()):
    """Serve fake gzipped idx files under /<cls.__name__>/; returns the source folder."""
    source = make_idx(tmp_path / "src" / cls.__name__, gz=True)
    resources = []
    for name in IDX_GZ:
        blob = (source / name).read_bytes()
        server.files[f"/{cls.__name__}/{name}"] = blob
        resources.append((name, md5(blob)))
    monkeypatch.setattr(cls, "resources", resources)
    monkeypatch.setattr(cls, "mirrors", [*mirrors_before, f"{server.url}/{cls.__name__}/"])
    return source


def leftovers(data_dir):
    """Temporary download folders or archives anywhere under data_dir."""
    return [p for p in data_dir.rglob("*")
            if p.name.startswith(".download-") or p.name.endswith((".tar.gz", ".gz"))]


def one_line_error(call):
    with pytest.raises(DataError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg
    return msg
