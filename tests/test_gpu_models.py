"""What a GPU run needs that a CPU run does not show (issue 19), checked without a GPU.

- Device: every network runs on the `meta` device (train and eval mode, drop path, auxiliary
  head, gates) and `count_macs` probes it there: a tensor made on the CPU inside a forward
  pass (instead of on its input's device) fails on `meta` as it would on CUDA.
- torch.compile with activation checkpointing: one step updates the BatchNorm statistics as an
  eager step without checkpointing does.
- Host synchronisation: train_epoch / evaluate read the device only at log points.
- Loaders: one per stage, persistent workers, every epoch (and a resume inside one) replayed
  exactly, augmentation included; memory pinned for CUDA only; worker count by device.
"""
import copy
import os
import types

import pytest
import torch
import torch.nn as nn

import config
import genotypes as gt
import search
from models import fastpath
from models.augment_cnn import FinalNetwork, ImageNetNetwork
from models.factory import stage_candidates
from models.search_cnn import SearchNetwork
from models.summary import count_macs
from utils.data import loaders as LD
from utils.analysis import features as ft
from utils.runtime import speed
from utils.runtime.context import Runtime
from utils.train.engine import evaluate, train_epoch
from utils.train import groups as tgroups

META = torch.device("meta")


# -- networks on the meta device ---------------------------------------------------------------
def _released_search2():
    alphas = {k: [[{"ops": ops, "alphas": [0.1 * i for i in range(len(ops))]} for ops in node]
                  for node in nodes]
              for k, nodes in stage_candidates("search1", 3).items()}
    return gt.candidates_from_stage1(alphas, tgroups.released_groups())


NETWORKS = {
    "search1": lambda: SearchNetwork(stage_candidates("search1", 3), 5, init_channels=4,
                                     num_cells=3, auxiliary=True, input_size=9),
    "search2": lambda: SearchNetwork(_released_search2(), 5, init_channels=4, num_cells=3,
                                     input_size=9),
    "darts": lambda: SearchNetwork(stage_candidates("darts", 3), 5, init_channels=2, num_cells=3,
                                   auxiliary=True, input_size=8),
    "cifar_aux": lambda: FinalNetwork(gt.DARTS_V2, 5, init_channels=4, num_cells=3,
                                      auxiliary=True, input_size=9),
    "keep_zero": lambda: FinalNetwork(gt.STACNAS_C10, 5, init_channels=4, num_cells=3,
                                      input_size=9, keep_zero=True),
    "imagenet": lambda: ImageNetNetwork(gt.DARTS_V2, 5, init_channels=8, num_cells=3,
                                        auxiliary=True, input_size=32),
}


def _input_size(kind: str) -> int:
    return 32 if kind == "imagenet" else (8 if kind == "darts" else 9)


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("kind", list(NETWORKS))
def test_forward_and_count_macs_stay_on_the_networks_device(kind, fast):
    with torch.device("meta"):
        net = NETWORKS[kind]()
    if fast:
        fastpath.enable(net)
    assert all(t.device == META for t in [*net.parameters(), *net.buffers()])
    net.drop_path_prob = 0.3  # final networks draw drop-path masks
    size = _input_size(kind)
    x = torch.empty(2, 3, size, size, device=META)
    net.train()
    out = net(x)
    for t in out if isinstance(out, tuple) else (out,):
        assert t.device == META and t.shape == (2, 5)
    with torch.no_grad():
        assert net.eval()(x).device == META
    assert count_macs(net.train(), 3, size) > 0
    assert net.training  # mode restored


def test_count_macs_is_the_same_on_any_device_and_dtype():
    torch.manual_seed(0)
    cpu = NETWORKS["cifar_aux"]()
    expected = count_macs(cpu, 3, 9)
    assert count_macs(copy.deepcopy(cpu).to(META), 3, 9) == expected
    assert count_macs(copy.deepcopy(cpu).double(), 3, 9) == expected


def test_feature_probes_stay_on_the_networks_device():
    with torch.device("meta"):
        net = NETWORKS["search1"]()
    edges = ft.select_edges(net)
    batches = [torch.empty(2, 3, 9, 9, device=META) for _ in range(2)]
    stats = ft.collect(net, batches, edges, META)
    for name, cov in stats.items():
        assert cov.count == 4 and cov.m2.device == META, name


# -- torch.compile with activation checkpointing --------------------------------------------
COMPILE_OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
COMPILE_NETWORKS = {
    "search": lambda: SearchNetwork(gt.uniform_candidates(COMPILE_OPS, ["normal", "reduce"],
                                                          num_nodes=1),
                                    4, init_channels=2, num_cells=3, auxiliary=True, input_size=8),
    "final": lambda: FinalNetwork(
        gt.Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1)], normal_concat=[2],
                    reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1)], reduce_concat=[2]),
        4, init_channels=4, num_cells=3, auxiliary=True, input_size=8, keep_zero=True),
}


def _sgd_step(model: nn.Module, run: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    logits, aux = run(x)
    (nn.functional.cross_entropy(logits, y) + 0.4 * nn.functional.cross_entropy(aux, y)).backward()
    opt.step()


@pytest.mark.skipif(speed.torch_release() < speed.COMPILE_WITH_CHECKPOINT_SINCE,
                    reason="refused on this PyTorch (check_compile_with_checkpoint)")
@pytest.mark.parametrize("kind", ["search", "final"])
def test_compiled_checkpointed_step_updates_batchnorm_once(kind):
    torch._dynamo.reset()  # each case compiles afresh, far from the recompile limit
    torch.manual_seed(0)
    net = COMPILE_NETWORKS[kind]()
    eager, compiled = copy.deepcopy(net), copy.deepcopy(net)
    compiled.grad_checkpoint = True
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    _sgd_step(eager, eager, x, y)
    _sgd_step(compiled, torch.compile(compiled, backend="aot_eager"), x, y)
    got, want = compiled.state_dict(), eager.state_dict()
    counts = [k for k in want if k.endswith("num_batches_tracked")]
    assert counts and all(int(got[k]) == int(want[k]) == 1 for k in counts)
    for k in want:  # running statistics, and the weights after the step
        assert torch.allclose(got[k].float(), want[k].float(), atol=1e-5), k


def test_eager_checkpointed_step_updates_batchnorm_once():
    """Eagerly (the CPU fast path included) the recomputation runs with BatchNorm frozen."""
    for fast in (False, True):
        torch.manual_seed(0)
        net = COMPILE_NETWORKS["search"]()
        if fast:
            fastpath.enable(net)
        eager, checkpointed = copy.deepcopy(net), copy.deepcopy(net)
        checkpointed.grad_checkpoint = True
        x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
        _sgd_step(eager, eager, x, y)
        _sgd_step(checkpointed, checkpointed, x, y)
        got, want = checkpointed.state_dict(), eager.state_dict()
        assert all(int(got[k]) == 1 for k in want if k.endswith("num_batches_tracked"))
        for k in want:
            assert torch.allclose(got[k].float(), want[k].float(), atol=1e-5), k


def test_compile_runs_the_plain_cells(monkeypatch):
    """torch.compile traces the paper's cells: the CPU fast path stays off under --compile
    (its autograd functions break the compiler's graph inside a checkpointed cell)."""
    import argparse
    from utils.runtime import speed
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for compile_, want in ((False, ("cells", "depthwise")), (True, ())):
        args = argparse.Namespace(channels_last=None, amp="none", compile=compile_)
        assert speed.plan(args, torch.device("cpu"), "search").fast_path == want
    net = COMPILE_NETWORKS["search"]()
    plan = speed.SpeedPlan(compile=True, fast_path=("cells",))
    speed.prepare(net, plan, torch.device("cpu"))
    assert not any(type(m) in fastpath.FAST_FORMS.values() for m in net.modules())


# -- host synchronisation in the engine -----------------------------------------------------
class _Reads:
    """Counts device-to-host reads of tensors (.item, .tolist, float(), bool())."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("item", "tolist", "__float__", "__bool__"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(real))

    def _counting(self, real):
        def read(t, *args):
            self.count += 1
            return real(t, *args)
        return read


def _batches(sizes, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, generator=g), torch.randint(0, classes, (n,), generator=g))
            for n in sizes]


def _scripted_step(losses):
    """A step returning the next loss of `losses` and the batch's first `classes` features
    as logits (deterministic, no model)."""
    it = iter(losses)

    def step(x, y):
        logits = torch.cat([x, x.flip(1), x.roll(1, 1)[:, :1]], dim=1)  # 7 classes
        return torch.tensor(next(it), dtype=torch.float32), logits
    return step


def _expected(batches, losses):
    """The epoch's figures as the per-step engine computed them: float(loss) * n summed in
    double, correct counts over all images."""
    n_total = sum(len(y) for _, y in batches)
    loss = sum(float(torch.tensor(v, dtype=torch.float32)) * len(y)
               for v, (_, y) in zip(losses, batches))
    step = _scripted_step(losses)
    correct = [0, 0]
    for x, y in batches:
        logits = step(x, y)[1]
        top = logits.topk(5, dim=1).indices
        correct[0] += int((top[:, :1] == y[:, None]).any(1).sum())
        correct[1] += int((top == y[:, None]).any(1).sum())
    return loss / n_total, 100.0 * correct[0] / n_total, 100.0 * correct[1] / n_total


@pytest.mark.parametrize("sizes", [[8] * 10, [6, 5, 7, 3]], ids=["even", "ragged"])
def test_train_epoch_reads_the_device_only_at_log_points(monkeypatch, sizes):
    batches = _batches(sizes)
    losses = [0.5 + 0.1 * i for i in range(len(sizes))]
    lines = []
    reads = _Reads(monkeypatch)
    stats = train_epoch(batches, _scripted_step(losses), runtime=Runtime(), epoch=0,
                        epochs=1, log=lines.append, print_freq=5)
    monkeypatch.undo()
    log_points = len(lines)
    assert log_points == (len(sizes) + 4) // 5
    assert reads.count == log_points + 1  # one read per log line, one at the end
    loss, top1, top5 = _expected(batches, losses)
    assert stats["loss"] == loss  # the same float64 sums as reading every step
    assert stats["top1"] == pytest.approx(top1, rel=1e-12)
    assert stats["top5"] == pytest.approx(top5, rel=1e-12)


def test_evaluate_reads_the_device_once(monkeypatch):
    batches = _batches([8, 8, 5])
    model = nn.Linear(3, 7)
    expected = [nn.functional.cross_entropy(model(x), y).item() * len(y) for x, y in batches]
    reads = _Reads(monkeypatch)
    stats = evaluate(model, batches, nn.CrossEntropyLoss(), Runtime())
    assert reads.count == 1
    monkeypatch.undo()
    assert stats["loss"] == sum(expected) / 21


@pytest.mark.parametrize("print_freq, where", [(5, "between steps 6 and 10 of 12"),
                                               (1, "step 7/12")])
def test_nan_loss_raises_one_line_with_the_steps_it_happened_between(print_freq, where):
    losses = [1.0] * 6 + [float("nan")] + [1.0] * 5
    with pytest.raises(FloatingPointError) as err:
        train_epoch(_batches([4] * 12), _scripted_step(losses), runtime=Runtime(),
                    epoch=2, epochs=5, log=lambda line: None, print_freq=print_freq)
    message = str(err.value)
    assert f"loss became nan at epoch 3, {where};" in message and "\n" not in message
    assert "the last checkpoint (end of epoch 2) is intact" in message


def test_a_stop_request_after_a_nan_loss_raises_the_nan_not_interrupted():
    losses = [1.0, float("inf"), 1.0, 1.0, 1.0]
    asked = iter([False, False, True])
    with pytest.raises(FloatingPointError, match="between steps 1 and 3 of 5"):
        train_epoch(_batches([4] * 5), _scripted_step(losses), runtime=Runtime(),
                    epoch=0, epochs=1, log=lambda line: None, print_freq=50,
                    should_stop=lambda: next(asked))


# -- loaders ----------------------------------------------------------------------------------
class _Augmented(torch.utils.data.Dataset):
    """Item i: (i + a torch-random offset, numpy-random offset, the loading process's pid)."""

    def __len__(self):
        return 22

    def __getitem__(self, i):
        import numpy as np
        return torch.tensor([i + torch.rand(()).item(), np.random.rand()]), os.getpid()


def _epoch(loader):
    xs, pids = zip(*[(x, p) for x, p in loader]) if len(loader) else ((), ())
    return [x.tolist() for x in xs], {int(p) for batch in pids for p in batch}


@pytest.mark.e2e
def test_one_loader_with_persistent_workers_replays_every_epoch_and_resume():
    ds = _Augmented()
    persistent = LD.make_loader(ds, range(2, 22), 3, shuffle=True, num_workers=2, seed=4,
                               drop_last=True)
    passes = []
    for epoch in (0, 1, 1):
        persistent.set_epoch(epoch)
        passes.append(_epoch(persistent))
    (first, pids0), (second, pids1), (again, pids2) = passes
    assert persistent.persistent_workers and pids0 == pids1 == pids2  # the same 2 workers
    assert len(pids0) == 2 and os.getpid() not in pids0
    assert again == second != first  # an epoch replays exactly, augmentation included
    # the same batches from a fresh loader without workers, from a mid-epoch resume, and
    # from a resume of the persistent loader
    fresh, pids = _epoch(LD.make_loader(ds, range(2, 22), 3, shuffle=True, seed=4, epoch=1,
                                       drop_last=True))
    assert fresh == second and pids == {os.getpid()}
    resumed, _ = _epoch(LD.make_loader(ds, range(2, 22), 3, shuffle=True, seed=4, epoch=1,
                                      drop_last=True, skip_batches=2))
    assert resumed == second[2:]
    persistent.set_epoch(1, skip_batches=4)
    assert len(persistent) == 2 and _epoch(persistent)[0] == second[4:]
    # the order is epoch_order's: the sample ids are the (seed, epoch) permutation's
    order = LD.epoch_order(20, True, 4, 1)
    assert [int(v[0]) for batch in second for v in batch] == [2 + i for i in order[:18]]


def test_loading_in_the_main_process_leaves_the_training_rng_alone():
    loader = LD.make_loader(_Augmented(), None, 4, shuffle=True, seed=1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _epoch(loader)
    assert torch.equal(torch.rand(3), expected)


def test_ranks_draw_different_augmentations_for_the_same_batch():
    ds = _Augmented()
    got = [_epoch(LD.make_loader(ds, None, 2, shuffle=False, seed=3, replicas=(rank, 2)))[0]
           for rank in (0, 1)]
    assert [[int(v[0]) for v in b] for b in got[0]] == [[int(v[0]) for v in b] for b in got[1]]
    assert got[0] != got[1]


def test_resumed_bilevel_held_out_stream_goes_on_where_it_was():
    """search.py cycles the held-out batches through an epoch; resumed at step s it goes on
    with batch s of that stream, across the wrap-around too."""
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    loader = LD.make_loader(ds, None, 3, shuffle=True, seed=9)  # 4 batches
    owner = types.SimpleNamespace(valid_loader=loader)
    take = lambda stream, k: [next(stream)[0].tolist() for _ in range(k)]  # noqa: E731
    whole = take(search.Search.valid_batches(owner, 2, 0), 11)
    for first_step in (1, 5, 6):
        resumed = search.Search.valid_batches(owner, 2, first_step)
        assert take(resumed, 11 - first_step) == whole[first_step:]


def test_pin_memory_follows_the_device_not_whether_cuda_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ds = torch.utils.data.TensorDataset(torch.arange(4))
    cpu = LD.loader_options(torch.device("cpu"), 0)
    assert cpu == {"num_workers": 0, "pin_memory": False}
    assert not LD.make_loader(ds, None, 2, shuffle=False, **cpu).pin_memory
    assert not LD.make_loader(ds, None, 2, shuffle=False).pin_memory  # off unless asked
    assert LD.loader_options(torch.device("cuda", 1), 0)["pin_memory"] is True


def test_num_workers_default_depends_on_the_device(monkeypatch):
    args = config.search_parser().parse_args(["--stage", "search1", "--name", "n"])
    assert args.num_workers is None
    assert "on CUDA" in config.search_parser().format_help()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert LD.loader_options(cpu, None)["num_workers"] == 2
    assert LD.loader_options(cuda, 3)["num_workers"] == 3  # as given
    assert LD.loader_options(cpu, 0)["num_workers"] == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert LD.default_num_workers(cuda) == 8  # at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert LD.default_num_workers(cuda) == 4  # the CPUs shared by 8 local processes
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert LD.default_num_workers(cuda) == 1  # at least 1
    assert LD.default_num_workers(cpu) == 2
