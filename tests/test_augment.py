"""augment.py and test.py on tiny data: CIFAR on-disk format, resume, reload, mismatches."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import augment
from utils.train.schedules import power_cosine
import genotypes as gt
from tests.fakes import make_cifar10
from utils.io import genotype_files as gf
from utils.io.checkpoint import load_checkpoint, previous_path
from utils.io import genotype_checks as gchecks
from tests.scripts import load_test_py

ROOT = Path(__file__).resolve().parents[1]
test_script = load_test_py()

SMALL = ["--num_cells", "3", "--init_channels", "4", "--batch_size", "8", "--num_workers", "0",
         "--device", "cpu", "--print_freq", "2"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    make_cifar10(root, per_batch=8, test=16)  # 40 training, 16 test images
    return root


def _augment(save_dir, cifar, *extra, name="net", epochs=1):
    return augment.main(["--name", name, "--save_dir", str(save_dir), "--dataset", "cifar10",
                         "--data_dir", str(cifar), "--epochs", str(epochs), *SMALL, *extra])


def _test(save_dir, *extra):
    return test_script.main(["--name", "t", "--save_dir", str(save_dir), "--num_workers", "0",
                             "--device", "cpu", *extra])


@pytest.mark.e2e
def test_one_epoch_on_cifar_format_then_test_py(tmp_path, cifar):
    assert _augment(tmp_path, cifar, "--arch", "DARTS_V2", "--valid_ratio", "0.25") == 0
    out = tmp_path / "net" / "augment"
    for name in ("config.json", "log.txt", "metrics.jsonl", "checkpoint.pt", "best.pt",
                 "results.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss", "top1", "valid_top1", "test_top1", "lr", "drop_path_prob"} <= set(record)
    results = json.loads((out / "results.json").read_text())
    assert results["best_valid_top1"] == record["valid_top1"] and results["best_epoch"] == 1
    assert results["epochs"] == 1 and results["macs"] > 0 and results["device"].startswith("cpu")
    assert results["genotype"] == gchecks.genotype_to_dict(gt.DARTS_V2)
    # best.pt is the state after its epoch, like checkpoint.pt: a resume from it goes on at the
    # next epoch's learning rate
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "checkpoint.pt")
    assert best["epoch"] == last["epoch"] == 1 and best["best"] == last["best"]
    assert best["scheduler"] == last["scheduler"] and best["elapsed"] == last["elapsed"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert ((cfg["cutout"], cfg["aux_weight"], cfg["drop_path"], cfg["grad_clip"])
            == (16, 0.4, 0.2, 5.0))
    # test.py rebuilds the network from the checkpoint alone and reproduces augment's figures
    assert _test(tmp_path, "--checkpoint", str(out / "checkpoint.pt"), "--dataset", "cifar10",
                 "--data_dir", str(cifar)) == 0
    tested = json.loads((tmp_path / "t" / "test" / "results.json").read_text())
    assert tested["source"] == "ours" and tested["images"] == 16
    assert tested["test_loss"] == pytest.approx(results["test_loss"], rel=1e-5)
    assert tested["test_top1"] == results["test_top1"]
    assert tested["params_millions"] == results["params_millions"]


@pytest.mark.e2e
def test_reload_gives_identical_logits(tmp_path, cifar):
    assert _augment(tmp_path, cifar, "--arch", "STACNAS_C10", "--keep_zero") == 0
    path = tmp_path / "net" / "augment" / "checkpoint.pt"
    model, spec, source = test_script.load_network(path)
    assert source == "ours" and spec["keep_zero"]
    exported = tmp_path / "copy.pt"
    test_script.export(model, spec, path, exported, force=False)
    again, _, _ = test_script.load_network(exported)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    with pytest.raises(FileExistsError, match="copy.pt exists"):
        test_script.export(model, spec, path, exported, force=False)


@pytest.mark.e2e
def test_resume_continues_to_the_same_weights(tmp_path, cifar):
    args = ("--arch", "DARTS_V1", "--deterministic")
    assert _augment(tmp_path, cifar, *args, name="straight", epochs=2) == 0
    assert _augment(tmp_path, cifar, *args, name="resumed", epochs=2) == 0
    run = tmp_path / "resumed" / "augment"
    shutil.copy(previous_path(run / "checkpoint.pt"), run / "checkpoint.pt")
    (run / "results.json").unlink()
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert _augment(tmp_path, cifar, *args, name="resumed", epochs=2) == 0
    assert "resuming from" in (run / "log.txt").read_text()
    a = load_checkpoint(tmp_path / "straight" / "augment" / "checkpoint.pt")["model"]
    b = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["epoch"]
            for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.e2e
def test_genotype_from_search2_file_and_missing(tmp_path, cifar, capsys):
    assert _augment(tmp_path, cifar) == 1
    assert "search2/genotype.json: not found" in capsys.readouterr().err
    (tmp_path / "net" / "search2").mkdir(parents=True)
    gf.save_genotype(gt.STACNAS_C10, tmp_path / "net" / "search2" / "genotype.json")
    assert _augment(tmp_path, cifar) == 0
    results = json.loads((tmp_path / "net" / "augment" / "results.json").read_text())
    assert results["genotype"] == gchecks.genotype_to_dict(gt.STACNAS_C10)


@pytest.mark.e2e
def test_repr_genotype_file(tmp_path, cifar):
    path = tmp_path / "genotype.txt"
    path.write_text(gf.format_genotype(gt.DARTS_V2))
    assert _augment(tmp_path, cifar, "--genotype", str(path), "--aux_weight", "0") == 0
    assert not any("aux_head" in k for k in
                   load_checkpoint(tmp_path / "net" / "augment" / "checkpoint.pt")["model"])


@pytest.mark.e2e
def test_checkpoint_that_does_not_fit_the_dataset(tmp_path, cifar, capsys):
    assert _augment(tmp_path, cifar, "--arch", "DARTS_V2") == 0
    rc = _test(tmp_path, "--checkpoint", str(tmp_path / "net" / "augment" / "checkpoint.pt"),
               "--dataset", "synthetic", "--synthetic_shape", "1,28,28")
    assert rc == 1
    err = capsys.readouterr().err
    assert "expects 3x32x32 inputs and 10 classes" in err and err.count("\n") == 1
    assert not (tmp_path / "t" / "test" / "results.json").exists()


def test_search_checkpoint_and_garbage_are_refused(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert _test(tmp_path, "--checkpoint", str(garbage), "--dataset", "synthetic") == 1
    assert "garbage.pt" in capsys.readouterr().err
    assert _test(tmp_path, "--checkpoint", str(tmp_path / "missing.pt"),
                 "--dataset", "synthetic") == 1
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--valid_ratio", "1"], "--valid_ratio must leave training images"),
    (["--auto_aug", "--dataset", "fashionmnist"], "--auto_aug"),
    (["--arch", "NASNET"], "invalid choice"),
    (["--arch", "DARTS_V2", "--genotype", "g.json"], "not allowed with argument"),
    (["--drop_path", "1.5"], "--drop_path must be below 1"),
    (["--epochs", "-1"], "must be a positive integer"),
])
def test_bad_flags(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        augment.main(["--name", "x", "--save_dir", str(tmp_path), *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_power_cosine_schedule():
    assert power_cosine(0, 10, 0.025, 0.0) == pytest.approx(0.025)
    assert power_cosine(10, 10, 0.025, 0.001) == pytest.approx(0.001)
    assert power_cosine(5, 10, 1.0, 0.0) == pytest.approx(2 ** 0.5 - 1)


@pytest.mark.e2e
def test_test_py_on_an_authors_file_and_its_export(tmp_path):
    from tests.authors_format import make_authors_model, save_like_authors, to_nested

    original = make_authors_model(to_nested(gt.STACNAS_C10.normal),
                                  to_nested(gt.STACNAS_C10.reduce), channels_init=4,
                                  num_cells=3, num_classes=4, input_size=8, auxiliary=False)
    path = tmp_path / "cifar10.pth.tar"
    save_like_authors(original, path)
    data = ["--dataset", "synthetic", "--synthetic_shape", "3,8,8", "--synthetic_classes", "4",
            "--synthetic_samples", "32"]
    assert _test(tmp_path, "--checkpoint", str(path), "--export", str(tmp_path / "ours.pt"),
                 *data) == 0
    authors = json.loads((tmp_path / "t" / "test" / "results.json").read_text())
    assert authors["source"] == "authors" and authors["images"] == 16
    # the original module gives the same loss on the same test images
    from utils.data.datasets import SyntheticSpec, get_dataset
    test_set, _ = get_dataset("synthetic", "data", train=False,
                              synthetic=SyntheticSpec(3, 8, 4, 32, 16))
    x = torch.stack([test_set[i][0] for i in range(len(test_set))])
    y = torch.tensor([test_set[i][1] for i in range(len(test_set))])
    with torch.no_grad():
        out = original.eval()(x)  # the authors' forward returns (logits, aux_logits)
        logits = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(logits, y).item()
    assert authors["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert _test(tmp_path, "--checkpoint", str(tmp_path / "ours.pt"), *data) == 0
    ours = json.loads((tmp_path / "t" / "test" / "results.json").read_text())
    assert (ours["source"] == "ours"
            and ours["test_loss"] == pytest.approx(authors["test_loss"], rel=1e-6))


@pytest.mark.e2e
def test_bf16_autocast_training_on_cpu(tmp_path, cifar):
    # DARTS_V2 has separable, dilated, pooling and skip ops: all under bf16 autocast on CPU
    assert _augment(tmp_path, cifar, "--arch", "DARTS_V2", "--amp", "bf16", "--force_amp") == 0
    metrics = (tmp_path / "net" / "augment" / "metrics.jsonl").read_text()
    record = json.loads(metrics.splitlines()[0])
    assert record["loss"] == record["loss"] and 0 < record["loss"] < 10
