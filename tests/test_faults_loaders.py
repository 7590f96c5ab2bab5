"""Faults of data loading, run as the user meets them: a damaged image read in a DataLoader
worker or in the main process, a worker killed by a signal (the OOM killer's SIGKILL), a
failure in a worker outside reading, a loader left mid-pass at exit, and splits that leave
nothing to train on (or to hold out). Each is one `error:` line naming the file or the flag
(and the fix), exit code 1, no traceback, no hang (every process under a time limit,
tests/script_runs.py) and no worker process left behind. Damaged dataset files are in
tests/test_faults_data.py."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.fakes import make_idx, make_image_folder
from tests.processes import group_gone
from tests.script_runs import LIMIT, NET, ROOT, finish, one_error_line, run_script, start_script
from utils.data import datasets as D, loaders as LD, mnist as DM
from utils.data import splits as DS
from utils.data.info import DataError

TINY = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_samples", "32",
        "--synthetic_classes", "4", "--batch_size", "16", "--num_workers", "0", *NET]


@pytest.fixture(autouse=True)
def no_system_data(tmp_path, monkeypatch):
    """Never read the real Fashion-MNIST system copy or the home cache from a test."""
    monkeypatch.setattr(DM, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-dir"))
    monkeypatch.setattr(DM, "CACHE_DIR", str(tmp_path / "cache"))


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
    code, err = run_script(script, [*argv, "--dataset", "imagefolder",
                              "--data_dir", str(tmp_path / "images"), "--batch_size", "4",
                              "--num_workers", "2", *NET], tmp_path)
    line = one_error_line(err)
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
    proc = start_script("search.py", argv, tmp_path)
    log = tmp_path / "r" / "search1" / "log.txt"
    deadline = time.time() + LIMIT
    while not (log.is_file() and "step 3/" in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)  # as the OOM killer does
    code, err = finish(proc, timeout=60)
    line = one_error_line(err)
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
    returncode, err = finish(proc, timeout=60)
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
    code, err = run_script(script, [*argv, *TINY], tmp_path)
    assert code == 1 and expected in one_error_line(err)
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
