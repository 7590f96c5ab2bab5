"""Downloads (utils/data/download.py through utils.data.datasets.get_dataset(download=True))
from a real HTTP server on 127.0.0.1 serving small archives in the exact upstream formats:
CIFAR's python tarballs and the gzipped idx files of MNIST / Fashion-MNIST. torchvision's URLs,
mirrors and md5 sums are monkeypatched to point at it, so nothing here touches the internet.
CPU only."""
import gzip
import hashlib
import io
import json
import os
import pickle
import resource
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from tests.fakes import make_cifar10, make_cifar100, make_idx
from utils.data import datasets as D, info as DI, mnist as DM
from utils.data import download as DL
from utils.data.info import DataError

IDX_GZ = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
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


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


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


def unpickle(path, key):
    return pickle.loads(path.read_bytes(), encoding="bytes")[key]


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


# ------------------------------------------------------------------------------- CIFAR

@pytest.mark.e2e
def test_cifar10_downloads_extracts_and_loads_what_was_served(tmp_path, server, monkeypatch,
                                                              capsys):
    source = serve_cifar(server, monkeypatch, tmp_path)
    data_dir = tmp_path / "data"
    ds, info = D.get_dataset("cifar10", str(data_dir), train=True, transform="eval", download=True)
    assert "/cifar-10-python.tar.gz" in server.hits
    err = capsys.readouterr().err
    assert (f"downloading {server.url}/cifar-10-python.tar.gz "
            f"to {data_dir / 'cifar-10-batches-py'}") in err
    folder = data_dir / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in source.iterdir())
    for p in source.iterdir():
        assert (folder / p.name).read_bytes() == p.read_bytes()
    assert (sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py"]
            and not leftovers(data_dir))
    # the loaded pixels and labels are the served ones (torchvision stores HWC uint8)
    pixels = np.concatenate([unpickle(source / f"data_batch_{i}", b"data") for i in range(1, 6)])
    labels = sum((unpickle(source / f"data_batch_{i}", b"labels") for i in range(1, 6)), [])
    assert np.array_equal(ds.data, pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert ds.targets == labels and info == DI.DatasetInfo(3, 32, 10)
    test, _ = D.get_dataset("cifar10", str(data_dir), train=False, transform="eval", download=True)
    assert test.targets == unpickle(source / "test_batch", b"labels")
    assert set(server.hits) == {"/cifar-10-python.tar.gz"}
    hits = len(server.hits)
    D.get_dataset("cifar10", str(data_dir), train=True, download=True)  # on disk now: no request
    assert len(server.hits) == hits


@pytest.mark.e2e
def test_cifar100_download(tmp_path, server, monkeypatch):
    source = serve_cifar(server, monkeypatch, tmp_path, "cifar100")
    data_dir = tmp_path / "data"
    ds, _ = D.get_dataset("cifar100", str(data_dir), train=True, transform="eval", download=True)
    assert ds.targets == unpickle(source / "train", b"fine_labels") and len(ds) == 5
    pixels = unpickle(source / "train", b"data")
    assert np.array_equal(ds.data, pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert (data_dir / "cifar-100-python" / "meta").read_bytes() == (source / "meta").read_bytes()
    assert not leftovers(data_dir)


@pytest.mark.e2e
def test_download_completes_a_partial_cifar_folder(tmp_path, server, monkeypatch):
    source = serve_cifar(server, monkeypatch, tmp_path)
    data_dir = tmp_path / "data"
    (data_dir / "cifar-10-batches-py").mkdir(parents=True)
    (data_dir / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"stale")
    ds, _ = D.get_dataset("cifar10", str(data_dir), train=True, transform="eval", download=True)
    assert len(ds) == 15
    assert ((data_dir / "cifar-10-batches-py" / "data_batch_1").read_bytes()
            == (source / "data_batch_1").read_bytes())


@pytest.mark.parametrize("fault", ["corrupt", "truncated"])
@pytest.mark.e2e
def test_bad_cifar_download_is_an_error_and_a_rerun_succeeds(tmp_path, server, monkeypatch, fault):
    serve_cifar(server, monkeypatch, tmp_path)
    good = server.files["/cifar-10-python.tar.gz"]
    if fault == "corrupt":
        server.files["/cifar-10-python.tar.gz"] = good[:-1] + bytes([good[-1] ^ 0xFF])
    else:
        server.truncate.add("/cifar-10-python.tar.gz")
    data_dir = tmp_path / "data"
    msg = one_line_error(lambda: D.get_dataset("cifar10", str(data_dir), train=True, download=True))
    assert f"{server.url}/cifar-10-python.tar.gz failed" in msg and "md5" in msg
    assert str(data_dir / "cifar-10-batches-py") in msg and "by hand" in msg
    assert list(data_dir.iterdir()) == []  # nothing in the final place, no temporary folder
    server.files["/cifar-10-python.tar.gz"] = good
    server.truncate.clear()
    ds, _ = D.get_dataset("cifar10", str(data_dir), train=True, download=True)
    assert len(ds) == 15 and not leftovers(data_dir)


@pytest.mark.e2e
def test_archive_without_the_expected_files_is_an_error(tmp_path, server, monkeypatch):
    source = serve_cifar(server, monkeypatch, tmp_path)
    (source / "test_batch").unlink()
    blob = tar_gz(source)
    server.files["/cifar-10-python.tar.gz"] = blob
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", md5(blob))
    data_dir = tmp_path / "data"
    msg = one_line_error(lambda: D.get_dataset("cifar10", str(data_dir), train=True, download=True))
    assert "lacks cifar-10-batches-py/test_batch" in msg and list(data_dir.iterdir()) == []


def test_offline_cifar_is_a_one_line_error_naming_the_url(tmp_path):
    url = datasets.CIFAR10.url  # the autouse fixture's closed port
    data_dir = tmp_path / "data"
    msg = one_line_error(lambda: D.get_dataset("cifar10", str(data_dir), train=True, download=True))
    assert msg.startswith(f"cifar10: download failed: {url} failed (ConnectionRefusedError")
    assert f"in {data_dir / 'cifar-10-batches-py'} by hand" in msg and "kriz/cifar" in msg
    assert list(data_dir.iterdir()) == []


def test_unresolvable_host_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://no-such-host.invalid/cifar-10-python.tar.gz")
    msg = one_line_error(lambda: D.get_dataset("cifar10", str(tmp_path), train=True, download=True))
    assert "http://no-such-host.invalid/cifar-10-python.tar.gz failed (" in msg


@pytest.mark.e2e
def test_a_stalled_server_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(DL, "DOWNLOAD_TIMEOUT", 0.3)
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/cifar-10-python.tar.gz"
        monkeypatch.setattr(datasets.CIFAR10, "url", url)
        start = time.monotonic()
        msg = one_line_error(lambda: D.get_dataset("cifar10", str(tmp_path), train=True,
                                                   download=True))
    assert time.monotonic() - start < 10
    assert f"{url} failed (" in msg and "timed out" in msg
    assert socket.getdefaulttimeout() is None  # restored


@pytest.mark.e2e
def test_no_download_never_touches_the_network(tmp_path, server, monkeypatch):
    serve_cifar(server, monkeypatch, tmp_path)
    msg = one_line_error(lambda: D.get_dataset("cifar10", str(tmp_path / "data"), train=True))
    assert "--no-download" in msg and server.hits == [] and not (tmp_path / "data").exists()


# ---------------------------------------------------------------------- MNIST / Fashion

@pytest.mark.parametrize("name,cls", [("mnist", datasets.MNIST),
                                      ("fashionmnist", datasets.FashionMNIST)])
@pytest.mark.e2e
def test_idx_download_unpacks_into_raw_and_loads_what_was_served(tmp_path, server, monkeypatch,
                                                                 capsys, name, cls):
    dead = dead_url()
    # the first mirror is down
    source = serve_idx(server, monkeypatch, tmp_path, cls, mirrors_before=[f"{dead}/"])
    data_dir = tmp_path / "data"
    ds, _ = D.get_dataset(name, str(data_dir), train=True, transform="eval", download=True)
    assert set(server.hits) == {f"/{cls.__name__}/{n}" for n in IDX_GZ}
    err = capsys.readouterr().err
    assert (f"downloading {cls.__name__} (4 files) from {dead}/ "
            f"to {data_dir / cls.__name__ / 'raw'}") in err
    assert f"trying {server.url}/{cls.__name__}/" in err
    raw = data_dir / cls.__name__ / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(n[:-3] for n in IDX_GZ)
    for n in IDX_GZ:
        assert (raw / n[:-3]).read_bytes() == gzip.decompress((source / n).read_bytes())
    assert not leftovers(data_dir) and sorted(p.name for p in data_dir.iterdir()) == [cls.__name__]
    images = np.frombuffer(gzip.decompress((source / IDX_GZ[0]).read_bytes())[16:],
                           np.uint8).reshape(-1, 28, 28)
    labels = list(gzip.decompress((source / IDX_GZ[1]).read_bytes())[8:])
    assert torch.equal(ds.data, torch.from_numpy(images.copy())) and ds.targets.tolist() == labels
    test, _ = D.get_dataset(name, str(data_dir), train=False, transform="eval", download=True)
    assert test.targets.tolist() == list(gzip.decompress((source / IDX_GZ[3]).read_bytes())[8:])


@pytest.mark.e2e
def test_truncated_idx_file_leaves_nothing_and_a_rerun_succeeds(tmp_path, server, monkeypatch):
    serve_idx(server, monkeypatch, tmp_path, datasets.MNIST)
    bad = f"/MNIST/{IDX_GZ[2]}"
    server.truncate.add(bad)
    data_dir = tmp_path / "data"
    msg = one_line_error(lambda: D.get_dataset("mnist", str(data_dir), train=True, download=True))
    assert f"{server.url}{bad} failed (md5" in msg and str(data_dir / "MNIST" / "raw") in msg
    # the two good files were not kept either
    assert [p for p in data_dir.rglob("*") if p.is_file()] == []
    assert not leftovers(data_dir)
    server.truncate.clear()
    ds, _ = D.get_dataset("mnist", str(data_dir), train=True, download=True)
    assert len(ds) == 6


def test_offline_mnist_names_every_mirror_tried(tmp_path, monkeypatch):
    mirrors = [f"{dead_url()}/a/", f"{dead_url()}/b/"]
    monkeypatch.setattr(datasets.MNIST, "mirrors", mirrors)
    data_dir = tmp_path / "data"
    msg = one_line_error(lambda: D.get_dataset("mnist", str(data_dir), train=True, download=True))
    assert all(f"{m}train-images-idx3-ubyte.gz failed (ConnectionRefusedError" in msg
               for m in mirrors)
    assert ("put the idx files (http://yann.lecun.com/exdb/mnist/) "
            f"in {data_dir / 'MNIST' / 'raw'} by hand") in msg


def test_offline_fashionmnist_without_debian_copy_names_url_folder_and_package(tmp_path):
    url = f"{datasets.FashionMNIST.mirrors[0]}train-images-idx3-ubyte.gz"
    data_dir = tmp_path / "data"
    msg = one_line_error(lambda: D.get_dataset("fashionmnist", str(data_dir), train=True,
                                               download=True))
    assert f"{url} failed (" in msg and str(data_dir / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "no-system-dir") in msg


def test_fashionmnist_falls_back_to_the_debian_copy_when_the_download_fails(tmp_path, monkeypatch):
    system = make_idx(tmp_path / "system", gz=True)
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(system))
    notes = []
    ds, _ = D.get_dataset("fashionmnist", str(tmp_path / "data"), train=False, transform="eval",
                          download=True, log=notes.append)
    assert [ds[i][1] for i in range(4)] == [9, 8, 7, 6]
    assert len(notes) == 2 and notes[0].startswith("downloading FashionMNIST")
    url = f"{datasets.FashionMNIST.mirrors[0]}train-images-idx3-ubyte.gz"
    assert notes[1].startswith(f"fashionmnist: download failed ({url} failed (")
    assert notes[1].endswith(f"using Debian's copy in {system}")


@pytest.mark.e2e
def test_fashionmnist_local_files_come_before_any_download(tmp_path, server, monkeypatch):
    serve_idx(server, monkeypatch, tmp_path, datasets.FashionMNIST)
    make_idx(tmp_path / "data" / "FashionMNIST" / "raw", gz=True)
    ds, _ = D.get_dataset("fashionmnist", str(tmp_path / "data"), train=True, download=True)
    assert len(ds) == 6 and server.hits == []


@pytest.mark.e2e
def test_idx_download_goes_to_the_cache_when_data_dir_is_read_only(tmp_path, server, monkeypatch):
    serve_idx(server, monkeypatch, tmp_path, datasets.MNIST)
    data_dir = tmp_path / "readonly"
    monkeypatch.setattr(DM, "_is_writable", lambda path: not str(path).startswith(str(data_dir)))
    ds, _ = D.get_dataset("mnist", str(data_dir), train=True, download=True)
    assert (len(ds) == 6
            and (tmp_path / "cache" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file())
    assert not data_dir.exists()


@pytest.mark.e2e
def test_no_download_error_for_idx_mentions_the_flag(tmp_path, server, monkeypatch):
    serve_idx(server, monkeypatch, tmp_path, datasets.MNIST)
    msg = one_line_error(lambda: D.get_dataset("mnist", str(tmp_path / "data"), train=True))
    assert "drop --no-download" in msg and server.hits == []


@pytest.mark.skipif(not (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_offline_fashionmnist_uses_the_installed_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(DEBIAN_DIR))
    notes = []
    ds, _ = D.get_dataset("fashionmnist", str(tmp_path / "data"), train=False, transform="eval",
                          download=True, log=notes.append)
    assert len(ds) == 10000 and ds[0][0].shape == (1, 28, 28)
    assert "using Debian's copy" in notes[-1]
    assert (os.path.getsize(tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte")
            == 16 + 10000 * 784)


# ------------------------------------------- what torchvision's own download=True lacks (issue 21)
ROOT = Path(__file__).resolve().parents[1]

# get_dataset(download=True) in a process of its own, torchvision's URLs and md5 sums patched as
# the test process has them (argv[1], JSON); with "torchvision", that dataset class's own
# download=True runs instead.
DRIVER = """
import json, sys
from torchvision import datasets
from utils.data import datasets as D, mnist as DM
from utils.runtime.cli import run_guarded
cfg = json.loads(sys.argv[1])
for cls, attrs in cfg["patch"].items():
    for key, value in attrs.items():
        setattr(getattr(datasets, cls), key, value)
DM.FASHION_MNIST_SYSTEM_DIR, DM.CACHE_DIR = cfg["no_dir"], cfg["cache"]
if cfg.get("torchvision"):
    try:
        getattr(datasets, cfg["torchvision"])(cfg["data_dir"], download=True)
    except OSError as err:
        sys.exit(f"torchvision: {err}")
sys.exit(run_guarded(lambda: D.get_dataset(cfg["dataset"], cfg["data_dir"], train=True,
                                           download=True) and 0))
"""


def driver(tmp_path, dataset, data_dir, patch, torchvision=None, **popen):
    cfg = {"dataset": dataset, "data_dir": str(data_dir), "patch": patch,
           "torchvision": torchvision, "no_dir": str(tmp_path / "no-system-dir"),
           "cache": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def serve_compressible(server, monkeypatch, tmp_path, name):
    """Serve a dataset one of whose files unpacks to far more than any archive served (zero
    pixels): a file size limit between the two stops the unpacking, not the download. Returns
    (torchvision attributes patched, the size limit)."""
    if name == "cifar10":
        source = make_cifar10(tmp_path / "src")
        zeros = {"batch_label": "testing", "labels": [0] * 400,
                 "data": np.zeros((400, 3072), np.uint8)}
        (source / "test_batch").write_bytes(pickle.dumps(zeros, protocol=2))
        blob = tar_gz(source)
        server.files["/cifar-10-python.tar.gz"] = blob
        patch = {"url": f"{server.url}/cifar-10-python.tar.gz", "tgz_md5": md5(blob)}
        cls, limit = datasets.CIFAR10, 200_000
    else:
        images = struct.pack(">IIII", 0x803, 60, 28, 28) + bytes(60 * 784)
        labels = struct.pack(">II", 0x801, 60) + bytes(i % 10 for i in range(60))
        resources = []
        for gz_name, blob in zip(IDX_GZ, (images, labels, images, labels)):
            server.files[f"/MNIST/{gz_name}"] = gzip.compress(blob)
            resources.append([gz_name, md5(gzip.compress(blob))])
        patch = {"mirrors": [f"{server.url}/MNIST/"], "resources": resources}
        cls, limit = datasets.MNIST, 20_000
    for key, value in patch.items():
        monkeypatch.setattr(cls, key, value)
    return {cls.__name__: patch}, limit


@pytest.mark.parametrize("name,final", [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST/raw")])
@pytest.mark.e2e
def test_a_full_disk_while_unpacking_leaves_nothing_and_a_rerun_recovers(tmp_path, server,
                                                                         monkeypatch, name, final):
    """A real file size limit (a full disk reads the same) cuts the unpacking short: one line
    naming the folder, nothing under the final names, and a rerun with room downloads whole.
    torchvision's MNIST download leaves the file it was unpacking, cut short, under its final
    name (which its presence-only check trusts once all four are there)."""
    patch, limit = serve_compressible(server, monkeypatch, tmp_path, name)
    data_dir = tmp_path / "data"

    def file_size_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    proc = driver(tmp_path, name, data_dir, patch, preexec_fn=file_size_limit)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"error: {name}: download not stored: "
                                    f"cannot write {data_dir / final}: "
                                    "File too large; make room and rerun the same command")
    assert [p for p in data_dir.rglob("*") if p.is_file()] == [] and not leftovers(data_dir)
    ds, _ = D.get_dataset(name, str(data_dir), train=True, transform="eval", download=True)
    assert len(ds) == (15 if name == "cifar10" else 60) and not leftovers(data_dir)
    if name == "mnist":
        theirs = tmp_path / "torchvision"
        proc = driver(tmp_path, name, theirs, patch, torchvision="MNIST",
                      preexec_fn=file_size_limit)
        out, err = proc.communicate(timeout=120)
        assert "torchvision: [Errno 27] File too large" in err
        assert (theirs / "MNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == limit


@pytest.mark.parametrize("fault", ["truncate", "stall"])
@pytest.mark.e2e
def test_a_mirror_that_fails_mid_file_falls_back_to_the_next(tmp_path, server, monkeypatch, fault):
    """torchvision's MNIST download moves to the next mirror only on a refused connection, an
    HTTP error or a bad md5 (a body cut short): a mirror that stalls mid-file (a socket
    timeout) stops it."""
    monkeypatch.setattr(DL, "DOWNLOAD_TIMEOUT", 0.3)
    source = serve_idx(server, monkeypatch, tmp_path, datasets.MNIST,
                       mirrors_before=[f"{server.url}/bad/"])
    for name in IDX_GZ:
        server.files[f"/bad/{name}"] = (source / name).read_bytes()
        getattr(server, fault).add(f"/bad/{name}")
    notes = []
    ds, _ = D.get_dataset("mnist", str(tmp_path / "data"), train=True, download=True,
                          log=notes.append)
    assert (len(ds) == 6 and f"/bad/{IDX_GZ[0]}" in server.hits
            and f"/MNIST/{IDX_GZ[0]}" in server.hits)
    assert f"trying {server.url}/MNIST/" in notes[1]
    if fault == "truncate":
        return  # torchvision's md5 check sends it to the next mirror too
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.3)
    try:
        with pytest.raises(TimeoutError):  # not the next mirror
            datasets.MNIST(str(tmp_path / "torchvision"), download=True)
    finally:
        socket.setdefaulttimeout(previous)


@pytest.mark.e2e
def test_a_download_killed_mid_file_leaves_nothing_trusted_and_the_rerun_cleans_up(tmp_path, server,
                                                                                   monkeypatch):
    """kill -9 while the archive arrives: nothing under the final name, and the temporary
    folder the killed process left is removed by the next download."""
    blob = tar_gz(make_cifar10(tmp_path / "src", per_batch=10))  # over 2 x 32 KiB: half is written
    server.files["/cifar-10-python.tar.gz"] = blob
    monkeypatch.setattr(datasets.CIFAR10, "url", f"{server.url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", md5(blob))
    server.stall.add("/cifar-10-python.tar.gz")
    data_dir = tmp_path / "data"
    patch = {"CIFAR10": {"url": datasets.CIFAR10.url, "tgz_md5": datasets.CIFAR10.tgz_md5}}
    proc = driver(tmp_path, "cifar10", data_dir, patch)
    try:
        deadline = time.time() + 60
        while not [p for p in data_dir.glob(".download-*/*.tar.gz") if p.stat().st_size]:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert [p.name for p in data_dir.iterdir()] == [".download-cifar-10-batches-py-"
                                                    f"{socket.gethostname()}-{proc.pid}"]
    server.stall.clear()
    ds, _ = D.get_dataset("cifar10", str(data_dir), train=True, download=True)
    assert len(ds) == 50 and [p.name for p in data_dir.iterdir()] == ["cifar-10-batches-py"]
