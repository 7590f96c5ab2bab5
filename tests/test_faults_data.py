"""Faults of dataset files, run as the user meets them: CIFAR batches and idx files that are
damaged, truncated, inconsistent or carry a pickle payload, read by get_dataset, by search.py
(in this process, or as its own process with and without DataLoader workers) and by the CIFAR
unpickler itself; and CIFAR files pickled by Python 3, which load. Each fault is one `error:`
line naming the file (and the fix), exit code 1, no traceback, no hang (every process under a
time limit, tests/script_runs.py), nothing from a payload run and no temporary file left
behind. Faults of DataLoader workers and of splits are in tests/test_faults_loaders.py."""
import gzip
import io
import os
import pickle
import re
import struct

import numpy as np
import pytest

import search
from tests.fakes import make_cifar10, make_cifar100, make_idx
from tests.script_runs import NET, one_error_line, run_script
from utils.data import cifar as DC, datasets as D, mnist as DM
from utils.data.info import DataError


@pytest.fixture(autouse=True)
def no_system_data(tmp_path, monkeypatch):
    """Never read the real Fashion-MNIST system copy or the home cache from a test."""
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-dir"))
    monkeypatch.setattr(DM, "CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------- item 8: dataset files

class Evil:
    """Unpickling this runs `touch <path>`: a pickle carrying code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.e2e
def test_a_cifar_meta_file_carrying_code_is_refused_and_nothing_runs(tmp_path):
    folder = make_cifar10(tmp_path / "data")
    pwned = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": Evil(pwned)}, protocol=2))
    code, err = run_script("search.py", ["--stage", "search1", "--dataset", "cifar10", "--data_dir",
                                   str(tmp_path / "data"), "--no-download", "--batch_size", "4",
                                   "--num_workers", "0", *NET], tmp_path)
    line = one_error_line(err)
    assert code == 1 and f"{folder / 'batches.meta'}: not a CIFAR python batch" in line
    assert "posix.system" in line and "nothing was run" in line
    assert not pwned.exists()


@pytest.mark.e2e
def test_idx_labels_fewer_than_images_with_workers_is_one_line(tmp_path):
    raw = make_idx(tmp_path / "data" / "MNIST" / "raw", n_train=6)
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">II", 0x801, 5) + bytes(range(5)))
    code, err = run_script("search.py", ["--stage", "search1", "--dataset", "mnist", "--data_dir",
                                   str(tmp_path / "data"), "--no-download", "--batch_size", "4",
                                   "--num_workers", "2", *NET], tmp_path)
    line = one_error_line(err)
    assert code == 1 and f"{labels}: 5 labels for the 6 images of train-images-idx3-ubyte" in line


def _py3_pickle(path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _cut(path, keep=0.5):
    blob = path.read_bytes()
    path.write_bytes(blob[:int(len(blob) * keep)])


def _cifar_case(damage, folder, pwned):
    """Damage a fake CIFAR-10 folder; returns (the file at fault, what the message says)."""
    batch = folder / "data_batch_1"
    if damage == "payload in a batch":
        _py3_pickle(batch, {"data": np.zeros((1, 3072), np.uint8), "labels": Evil(pwned)})
        return batch, "posix.system, which a CIFAR batch never holds"
    if damage == "truncated batch":
        _cut(batch)
        return batch, "truncated"
    if damage == "fewer labels":
        _py3_pickle(batch, {"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2]})
        return batch, "3 images but 2 labels"
    if damage == "label out of range":
        _py3_pickle(batch, {"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]})
        return batch, "label 10 of image 1 is not a class of CIFAR-10 (0..9)"
    if damage == "object array":
        _py3_pickle(batch, {"data": np.array([Evil(pwned)], dtype=object), "labels": [1]})
        return batch, "not a CIFAR python batch"
    if damage == "wrong pixels":
        _py3_pickle(batch, {"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]})
        return batch, "expected uint8 rows of 3072 pixels"
    if damage == "empty meta":
        (folder / "batches.meta").write_bytes(b"")
        return folder / "batches.meta", "truncated"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["payload in a batch", "truncated batch", "fewer labels",
                                    "label out of range", "object array", "wrong pixels",
                                    "empty meta"])
@pytest.mark.e2e
def test_a_damaged_cifar_file_is_one_line_naming_it(tmp_path, damage):
    folder = make_cifar10(tmp_path)
    pwned = tmp_path / "pwned"
    bad, says = _cifar_case(damage, folder, pwned)
    with pytest.raises(DataError) as caught:
        D.get_dataset("cifar10", str(tmp_path), train=True)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{bad}: ") and says in message, message
    assert "kriz/cifar" in message or "0..9" in message or "3072" in message
    assert not pwned.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_files_pickled_by_python_3_load(tmp_path, protocol):
    folder = make_cifar100(tmp_path)
    pixels = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    _py3_pickle(folder / "train",
                {"data": pixels, "fine_labels": [3, 99], "filenames": [b"a", b"b"]}, protocol)
    ds, _ = D.get_dataset("cifar100", str(tmp_path), train=True, transform="eval")
    assert (ds.targets == [3, 99]
            and np.array_equal(ds.data[1].transpose(2, 0, 1).ravel(), pixels[1]))


def _idx_case(damage, raw):
    """Damage the gzipped fake MNIST in `raw`; returns (the file at fault, what the message
    says)."""
    images = raw / "train-images-idx3-ubyte"
    labels = raw / "train-labels-idx1-ubyte"
    if damage == "wrong magic":
        blob = gzip.decompress((raw / f"{images.name}.gz").read_bytes())
        (raw / f"{images.name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + blob[4:]))
        return raw / f"{images.name}.gz", "magic number 0x00000801, expected 0x00000803"
    if damage == "truncated gz":
        _cut(raw / f"{images.name}.gz", 0.6)
        return raw / f"{images.name}.gz", "truncated"
    if damage == "not gzip":
        (raw / f"{labels.name}.gz").write_bytes(b"plain text, not gzip")
        return raw / f"{labels.name}.gz", "not a gzip file"
    if damage == "empty gz":
        (raw / f"{labels.name}.gz").write_bytes(b"")
        return raw / f"{labels.name}.gz", "empty"
    if damage == "truncated data":
        blob = gzip.decompress((raw / f"{images.name}.gz").read_bytes())
        (raw / f"{images.name}.gz").write_bytes(gzip.compress(blob[:-100]))
        return (raw / f"{images.name}.gz",
                "truncated: 4620 bytes, its header (6 x 28 x 28) needs 4720")
    # the plain (unpacked) files, read when the idx files are already in place
    for name in DM._IDX_FILES:
        (raw / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
    if damage == "plain labels out of range":
        labels.write_bytes(struct.pack(">II", 0x801, 6) + bytes([0, 1, 2, 3, 4, 12]))
        return labels, "label 12 of image 5 is not a class of mnist (0..9)"
    if damage == "plain images of another size":
        images.write_bytes(struct.pack(">IIII", 0x803, 6, 32, 32) + bytes(6 * 32 * 32))
        return images, "holds 32x32 images, mnist's are 28x28"
    if damage == "plain empty":
        images.write_bytes(b"")
        return images, "empty (0 bytes"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["wrong magic", "truncated gz", "not gzip", "empty gz",
                                    "truncated data", "plain labels out of range",
                                    "plain images of another size", "plain empty"])
def test_a_damaged_idx_file_is_one_line_naming_it_and_leaves_no_temporary_file(tmp_path, damage):
    raw = make_idx(tmp_path / "MNIST" / "raw", gz=True)
    bad, says = _idx_case(damage, raw)
    with pytest.raises(DataError) as caught:
        D.get_dataset("mnist", str(tmp_path), train=True)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{bad}: ") and says in message, message
    assert "replace it" in message
    assert not list(raw.glob(".*.tmp")), "a failed unpack left its temporary file"
    if bad.name.endswith(".gz"):  # nothing half-unpacked is taken for the real file next time
        assert not (raw / bad.name.removesuffix(".gz")).exists()


def test_the_script_names_a_bad_idx_file_in_one_line(tmp_path, capsys):
    """As search.py reports it (main, in this process): the wrong-magic case of the issue."""
    raw = make_idx(tmp_path / "data" / "MNIST" / "raw", gz=True)
    bad, says = _idx_case("wrong magic", raw)
    argv = ["--stage", "search1", "--dataset", "mnist", "--data_dir", str(tmp_path / "data"),
            "--no-download", "--batch_size", "4", "--num_workers", "0", *NET, "--name", "r",
            "--save_dir", str(tmp_path)]
    assert search.main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{bad}: not an idx file" in line and says in line
    assert not list(raw.glob(".*.tmp"))


def test_an_interrupted_unpack_removes_its_temporary_file(tmp_path, monkeypatch):
    """A full disk (or a signal) in the middle of unpacking: no `.<name>.<pid>.tmp` stays."""
    raw = make_idx(tmp_path / "MNIST" / "raw", gz=True)

    def full_disk(src, dst, *args):
        dst.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DM.shutil, "copyfileobj", full_disk)
    gz = raw / "train-images-idx3-ubyte.gz"
    with pytest.raises(DataError, match=rf"^cannot unpack {re.escape(str(gz))} into "
                                        rf"{re.escape(str(raw))}: OSError: .*No space left"):
        D.get_dataset("mnist", str(tmp_path), train=True)
    assert not list(raw.glob(".*.tmp"))


@pytest.mark.e2e
def test_the_cifar_reader_refuses_every_other_global():
    payloads = [pickle.dumps(Evil("/nonexistent/x"), protocol=p) for p in (0, 2, 5)]
    payloads.append(pickle.dumps(io.BytesIO(b"x"), protocol=2))  # any class, not only functions
    for blob in payloads:
        with pytest.raises(pickle.UnpicklingError, match="which a CIFAR batch never holds"):
            DC._CifarUnpickler(io.BytesIO(blob), encoding="latin1").load()
