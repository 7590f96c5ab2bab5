"""A tiny DARTS supernet, random batches and gradient helpers shared by test_architect.py and
test_hypergradient.py."""
import torch
import torch.nn as nn

from models.factory import build_supernet, stage_candidates
from utils.data.info import DatasetInfo

TINY = DatasetInfo(3, 8, 4)
CE = nn.CrossEntropyLoss()


def make_net(auxiliary: bool = False, double: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    net = build_supernet(stage_candidates("darts", 3), **TINY.network_shape(), init_channels=2,
                         num_cells=3, auxiliary=auxiliary)
    if double:
        net = net.double()
    return net


def make_batch(seed: int, dtype=torch.float32, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, TINY.channels, TINY.size, TINY.size, generator=g, dtype=dtype)
    y = torch.randint(0, TINY.classes, (n,), generator=g)
    return x, y


def clone_all(params):
    return [p.detach().clone() for p in params]


def grads_of(loss, params):
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def plain_sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
