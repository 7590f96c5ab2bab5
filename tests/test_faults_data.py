"""Faults of datasets and of their DataLoader workers, run as the user meets them: a damaged
image read in a worker, a worker killed by a signal (the OOM killer's SIGKILL), a loader left
mid-pass at exit, splits that leave nothing to train on, and dataset files that are damaged,
truncated, inconsistent or carry a pickle payload. Each is one `error:` line naming the file
(and the fix), exit code 1, no traceback, no hang (every process under a time limit) and no
worker process left behind."""
import gzip
import io
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import search
from tests.processes import group_gone
from tests.fakes import make_cifar10, make_cifar100, make_idx, make_image_folder
from utils.data import cifar as DC, datasets as D, loaders as LD, mnist as DM
from utils.data import splits as DS
from utils.data.info import DataError

ROOT = Path(__file__).resolve().parents[1]
NET = ["--num_cells", "3", "--init_channels", "4", "--epochs", "1", "--device", "cpu"]
TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", *NET]
LIMIT = 120  # seconds any one script may take here; a hang fails the test instead of the suite


@pytest.fixture(autouse=True)
def no_system_data(tmp_path, monkeypatch):
    """Never read the real Fashion-MNIST system copy or the home cache from a test."""
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-dir"))
    monkeypatch.setattr(DM, "CACHE_DIR", str(tmp_path / "cache"))


def _start(script, argv, save_dir):
    """`script` in a process group of its own (so that its workers can be looked for)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HOME=str(save_dir))  # HOME: the idx cache
    return subprocess.Popen([sys.executable, str(ROOT / script), *argv, "--name", "r",
                             "--save_dir", str(save_dir)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _finish(proc, timeout=LIMIT):
    """(exit code, stderr) of `proc`; a process still running after `timeout` is killed with
    its group and fails the test."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"hung: still running after {timeout} s")
    return proc.returncode, err


def _one_error_line(err):
    """The message of stderr's one `error:` line (and there is nothing else on stderr)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "Traceback" not in err
    return lines[0]


def _run(script, argv, save_dir):
    proc = _start(script, argv, save_dir)
    code, err = _finish(proc)
    assert group_gone(proc.pid), "a DataLoader worker outlived the run"
    return code, err


# ------------------------------------------------------------- item 1: failures in a worker

def _damaged_folder(root, split, damage):
    """An image folder (3 classes x 6 8x8 images) with `split`/dog/1.png damaged."""
    make_image_folder(root, size=(8, 8), per_class=6)
    bad = root / split / "dog" / "1.png"
    blob = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else blob[:len(blob) // 2])
    return bad


@pytest.mark.parametrize("script, argv, split, damage", [
    ("search.py", ["--stage", "search1"], "train", "garbage"),  # the train loader
    ("augment.py", ["--arch", "DARTS_V2"], "test", "truncated"),  # the test loader, after training
])
@pytest.mark.e2e
def test_an_unreadable_image_in_a_worker_is_one_line_naming_it_and_no_hang(tmp_path, script, argv,
                                                                            split, damage):
    bad = _damaged_folder(tmp_path / "images", split, damage)
    code, err = _run(script, [*argv, "--dataset", "imagefolder",
                              "--data_dir", str(tmp_path / "images"), "--batch_size", "4",
                              "--num_workers", "2", *NET], tmp_path)
    line = _one_error_line(err)
    assert code == 1 and str(bad) in line and "image " in line and "data-loading worker" in line
    assert "replace it or remove it" in line


def _children(pid):
    return [int(c) for path in Path(f"/proc/{pid}/task").glob("*/children")
            for c in path.read_text().split()]


@pytest.mark.e2e
def test_a_worker_killed_by_sigkill_is_one_line_and_no_hang(tmp_path):
    argv = ["--stage", "search1", "--dataset", "synthetic", "--synthetic_shape", "3,8,8",
            "--synthetic_samples", "2048", "--synthetic_classes", "4", "--batch_size", "16",
            "--num_workers", "2", "--print_freq", "1", *NET]
    proc = _start("search.py", argv, tmp_path)
    log = tmp_path / "r" / "search1" / "log.txt"
    deadline = time.time() + LIMIT
    while not (log.is_file() and "step 3/" in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)  # as the OOM killer does
    code, err = _finish(proc, timeout=60)
    line = _one_error_line(err)
    assert code == 1 and f"pid {workers[0]}" in line and "killed by signal" in line
    assert "rerun" in line
    assert group_gone(proc.pid), "the other worker outlived the run"


@pytest.mark.e2e
def test_a_loader_left_mid_pass_does_not_hold_the_exit(tmp_path):
    """A pass abandoned with its workers running and the loader kept alive to the end (a
    reference cycle): the interpreter exits at once (it used to wait on the workers forever)."""
    code = """if True:
        from utils.data import datasets as D, loaders as LD
        ds = D.SyntheticDataset(D.SyntheticSpec(size=4, train_size=64), train=True)
        loader = LD.make_loader(ds, None, 4, shuffle=False, num_workers=2)
        batches = iter(loader)
        next(batches)
        cycle = [loader, batches]
        cycle.append(cycle)
        raise SystemExit(3)
    """
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    returncode, err = _finish(proc, timeout=60)
    assert returncode == 3, err
    assert group_gone(proc.pid)


class _Ragged(torch.utils.data.Dataset):
    """Items of two shapes: batching them fails in the worker (not in reading an item)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(1 + i % 2), 0


@pytest.mark.e2e
def test_a_failure_in_a_worker_outside_reading_closes_the_workers():
    loader = LD.make_loader(_Ragged(), None, 4, shuffle=False, num_workers=2)
    with pytest.raises(DataError) as caught:
        list(loader)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("data-loading worker ")
    assert "stack expects each tensor to be equal size" in message
    assert loader._iterator is None  # shut down: no worker left running
    assert list(LD.make_loader(torch.utils.data.TensorDataset(torch.arange(3)), None, 2,
                              shuffle=False, num_workers=2))  # loaders still work afterwards


def test_an_unreadable_item_in_the_main_process_names_file_and_index(tmp_path):
    bad = _damaged_folder(tmp_path, "train", "truncated")
    data, _ = D.get_dataset("imagefolder", str(tmp_path), train=True, transform="eval")
    loader = LD.make_loader(data, None, 4, shuffle=False)
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))} \(image \d+ of "
                                        rf"{re.escape(str(tmp_path / 'train'))}\): cannot be read"):
        list(loader)


def test_an_unreadable_first_image_is_named(tmp_path):
    make_image_folder(tmp_path, size=(8, 8))
    first = tmp_path / "train" / "cat" / "0.png"
    first.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{re.escape(str(first))}: not a readable image"):
        D.get_dataset("imagefolder", str(tmp_path), train=True)


# -------------------------------------------------------------------- item 7: empty splits

@pytest.mark.parametrize("script, argv, expected", [
    ("search.py", ["--stage", "search1", "--train_ratio", "0.01"],
     "--train_ratio 0.01 of 32 images leaves no training images (0 training / 32 held-out); "
     "raise --train_ratio"),
    ("search.py", ["--stage", "search1", "--optimization", "bilevel", "--train_ratio", "0.99"],
     "--optimization bilevel needs held-out images, but --train_ratio 0.99 of 32 images leaves "
     "none (32 training / 0 held-out); lower --train_ratio"),
    ("augment.py", ["--arch", "DARTS_V2", "--subset", "1", "--valid_ratio", "0.5"],
     "--valid_ratio 0.5 of 1 image leaves no training images (0 training / 1 held-out); "
     "lower --valid_ratio"),
])
@pytest.mark.e2e
def test_an_empty_split_is_refused_before_training(tmp_path, script, argv, expected):
    code, err = _run(script, [*argv, *TINY], tmp_path)
    assert code == 1 and expected in _one_error_line(err)
    stage = tmp_path / "r" / ("augment" if script == "augment.py" else "search1")
    assert not {"checkpoint.pt", "genotype.json", "results.json", "alphas.json"} & \
        {p.name for p in stage.iterdir()}


def test_split_checks():
    common = dict(flag="--valid_ratio", value=0.1, images=40, train_share=False)
    DS.check_split(36, 4, **common, held_out_for="picking best.pt", processes=4)
    with pytest.raises(ValueError, match="picking best.pt needs held-out images, but --valid_ratio "
                                         "0.1 of 40 images leaves none .*; raise --valid_ratio"):
        DS.check_split(40, 0, **common, held_out_for="picking best.pt")
    with pytest.raises(ValueError, match="leaves 3 training images for 4 processes"):
        DS.check_split(3, 37, **common, processes=4)
    with pytest.raises(ValueError, match=r"^the 0 images \(--subset or the dataset\) leaves no"):
        DS.check_split(0, 0, flag="--valid_ratio", value=None, images=0, train_share=False)
    ds = torch.utils.data.TensorDataset(torch.arange(5))
    with pytest.raises(ValueError, match="batch size 8 is larger than the 5 images "
                                         ".* lower --batch_size"):
        LD.make_loader(ds, None, 8, shuffle=True, drop_last=True)
    assert len(LD.make_loader(ds, None, 8, shuffle=True)) == 1  # not dropped: one short batch


def test_a_dataset_split_without_images_is_refused(tmp_path):
    raw = make_idx(tmp_path / "MNIST" / "raw", n_test=0)
    with pytest.raises(DataError, match=r"^mnist: the test split holds no images "
                                        rf"\({re.escape(str(raw))}\)"):
        D.get_dataset("mnist", str(tmp_path), train=False)


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
    code, err = _run("search.py", ["--stage", "search1", "--dataset", "cifar10", "--data_dir",
                                   str(tmp_path / "data"), "--no-download", "--batch_size", "4",
                                   "--num_workers", "0", *NET], tmp_path)
    line = _one_error_line(err)
    assert code == 1 and f"{folder / 'batches.meta'}: not a CIFAR python batch" in line
    assert "posix.system" in line and "nothing was run" in line
    assert not pwned.exists()


@pytest.mark.e2e
def test_idx_labels_fewer_than_images_with_workers_is_one_line(tmp_path):
    raw = make_idx(tmp_path / "data" / "MNIST" / "raw", n_train=6)
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">II", 0x801, 5) + bytes(range(5)))
    code, err = _run("search.py", ["--stage", "search1", "--dataset", "mnist", "--data_dir",
                                   str(tmp_path / "data"), "--no-download", "--batch_size", "4",
                                   "--num_workers", "2", *NET], tmp_path)
    line = _one_error_line(err)
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
    line = _one_error_line(capsys.readouterr().err)
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
