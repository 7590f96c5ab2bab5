"""Final networks: shapes for CIFAR / MNIST / odd sizes, ImageNet, aux head, gates, drop path."""
import pytest
import torch

import genotypes as gt
from models.augment_cnn import FinalNetwork, ImageNetNetwork
from models.factory import build_final_network
from utils.data.info import DatasetInfo, dataset_info


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("info", [DatasetInfo(3, 32, 10), DatasetInfo(1, 28, 10),
                                  DatasetInfo(3, 8, 5), DatasetInfo(2, 9, 7),
                                  DatasetInfo(3, 13, 4)])
def test_cifar_style_shapes_with_aux(info):
    torch.manual_seed(0)
    net = build_final_network(gt.DARTS_V2, **info.network_shape(), init_channels=4, num_cells=5,
                              auxiliary=True)
    net.train()
    logits, aux = net(torch.randn(2, info.channels, info.size, info.size))
    assert logits.shape == aux.shape == (2, info.classes)
    net.eval()
    assert net(torch.randn(2, info.channels, info.size, info.size)).shape == (2, info.classes)


def test_imagenet_network_shapes():
    torch.manual_seed(0)
    net = ImageNetNetwork(gt.STACNAS_C10, num_classes=20, init_channels=8, num_cells=5,
                          auxiliary=True).train()
    logits, aux = net(torch.randn(2, 3, 224, 224))
    assert logits.shape == aux.shape == (2, 20)


def test_darts_v2_cifar10_parameter_count():
    """DARTS's code prints 3,349,342; pool + affine BN (the StacNAS authors' code) adds 5 pools
    x 2 x (72 + 144)."""
    net = build_final_network(gt.DARTS_V2, **dataset_info("cifar10").network_shape(),
                              init_channels=36, num_cells=20, auxiliary=True)
    without_aux = _count(net) - _count(net.aux_head)
    assert abs(without_aux - 3.35e6) / 3.35e6 < 0.01
    assert without_aux == 3_349_342 + 2_160  # golden: pins the structure


def test_darts_v2_imagenet_parameter_count():
    net = build_final_network(gt.DARTS_V2, **dataset_info("imagenet").network_shape(),
                              init_channels=48, num_cells=14, auxiliary=True)
    assert isinstance(net, ImageNetNetwork)
    without_aux = _count(net) - _count(net.aux_head)
    assert abs(without_aux - 4.7e6) / 4.7e6 < 0.01
    assert without_aux == 4_718_752 + 2_880  # DARTS's 4,718,752 + 5 pool BNs x 2 x (96 + 192)


def test_per_cell_genotypes():
    reductions = gt.reduction_cells(5)
    cells = [gt.CellGenotype(gt.DARTS_V2.reduce if i in reductions else gt.DARTS_V1.normal,
                             [2, 3, 4, 5], i in reductions) for i in range(5)]
    net = FinalNetwork(cells, 10, 4, 5)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert net.cells[0].inputs[3] == [0, 2]  # DARTS_V1 normal node 3: skip 0, skip 2
    cells[1] = cells[1]._replace(reduction=False)
    with pytest.raises(ValueError, match="cell 1 reduction=False"):
        FinalNetwork(cells, 10, 4, 5)
    with pytest.raises(ValueError, match="--num_cells 5"):
        FinalNetwork(cells, 10, 4, 8)


def test_keep_zero_gates_learn():
    torch.manual_seed(0)
    net = FinalNetwork(gt.DARTS_V2, 10, 4, 5, keep_zero=True)
    gates = [c.gates for c in net.cells]
    assert all(g.numel() == 8 for g in gates)
    assert _count(net) - _count(FinalNetwork(gt.DARTS_V2, 10, 4, 5)) == 5 * 8
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    net = FinalNetwork(gt.DARTS_V2, 10, 4, 5)
    x = torch.randn(4, 3, 16, 16)
    net.eval()
    net.drop_path_prob = 0.5
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, net(x))


def test_final_cell_stride_and_structure():
    net = FinalNetwork(gt.DARTS_V2, 10, 4, 5)
    red = net.cells[1]
    assert red.reduction and red.inputs[0] == [0, 1]
    # DARTS_V2 reduce node 1: ('skip_connect', 2) is the identity (a node, stride 1),
    # ('max_pool_3x3', 1) reads an input, at stride 2
    assert red.inputs[1] == [2, 1]
    assert type(red.nodes[1][0]).__name__ == "Identity"
    assert red.nodes[1][1].pool.stride == 2


@pytest.mark.parametrize("name, dataset, size, classes",
                         [("STACNAS_C100", "cifar100", 32, 100),
                          ("STACNAS_IMAGENET", "imagenet", 224, 1000)])
def test_stacnas_c100_and_imagenet_networks_train(name, dataset, size, classes):
    """The two genotypes read off the authors' figures build a network of their dataset that
    runs forward and backward (small widths: the full sizes are pinned in test_summary.py)."""
    genotype = gt.get_named_genotype(name)
    net = build_final_network(genotype, **dataset_info(dataset).network_shape(),
                              init_channels=8, num_cells=5, auxiliary=True).train()
    logits, aux = net(torch.randn(2, 3, size, size))
    assert logits.shape == aux.shape == (2, classes)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
