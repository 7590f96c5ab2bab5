"""Downloads (utils/data/download.py through utils.data.datasets.get_dataset(download=True))
of CIFAR-10 / CIFAR-100 and MNIST / Fashion-MNIST from a real HTTP server on 127.0.0.1 serving
small archives in the exact upstream formats (tests/download_server.py): what was served is
what is unpacked and loaded; a corrupt, truncated or incomplete download, an offline,
unresolvable or stalled server and --no-download are one-line errors that leave nothing
behind; Fashion-MNIST falls back to Debian's copy. torchvision's URLs, mirrors and md5 sums are
monkeypatched to point at the server, so nothing here touches the internet. What torchvision's
own download=True lacks (a full disk while unpacking, a mirror failing mid-file, a kill
mid-file) is shown in tests/test_download_interrupted.py. CPU only."""
import gzip
import os
import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from tests.download_server import (IDX_GZ, dead_url, leftovers, md5,
                                   one_line_error, serve_cifar, serve_idx, tar_gz)
from tests.fakes import make_idx
from utils.data import datasets as D, info as DI, mnist as DM
from utils.data import download as DL

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


# every test here: no real system copy, no home cache, no internet (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("download_isolated")


def unpickle(path, key):
    return pickle.loads(path.read_bytes(), encoding="bytes")[key]


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

