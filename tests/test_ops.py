"""Every candidate op at stride 1 and 2 on odd and even sizes; zero, identity, drop path."""
import pytest
import torch

from models.ops import OPS, FactorizedReduce, drop_path, make_op, preprocessing


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8, 9, 16])
@pytest.mark.parametrize("affine", [False, True])
def test_op_shapes(name, stride, size, affine):
    op = make_op(name, 8, stride, affine)
    x = torch.randn(2, 8, size, size)
    y = op(x)
    expected = -(-size // stride)
    assert y.shape == (2, 8, expected, expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_zero_gives_zeros(stride):
    y = make_op("none", 4, stride, False)(torch.randn(3, 4, 9, 9))
    assert torch.count_nonzero(y) == 0


def test_identity_is_identity_and_strided_skip_reduces():
    x = torch.randn(2, 4, 8, 8)
    assert make_op("skip_connect", 4, 1, True)(x) is x
    assert isinstance(make_op("skip_connect", 4, 2, True), FactorizedReduce)


def test_bn_affine_follows_flag():
    for affine in (False, True):
        op = make_op("sep_conv_3x3", 4, 1, affine)
        bns = [m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(bns) == 2 and all(bn.affine == affine for bn in bns)


def test_op_parameter_counts():
    # sep_conv_3x3 at C=16: 2 x (dw 16*9 + pw 16*16 + BN 2*16)
    assert (sum(p.numel() for p in make_op("sep_conv_3x3", 16, 1, True).parameters())
            == 2 * (144 + 256 + 32))
    # dil_conv_5x5: dw 16*25 + pw 256 + BN 32
    assert (sum(p.numel() for p in make_op("dil_conv_5x5", 16, 1, True).parameters())
            == 400 + 256 + 32)
    # affine=False BN has no parameters; pooling none either
    assert sum(p.numel() for p in make_op("max_pool_3x3", 16, 2, False).parameters()) == 0


def test_factorized_reduce_even_size_matches_plain_offset_grid():
    """Padding the shifted path changes nothing at even sizes (the DARTS definition)."""
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 8, affine=False).eval()
    x = torch.randn(1, 4, 8, 8)
    r = torch.relu(x)
    plain = torch.cat([fr.conv1(r), fr.conv2(r[:, :, 1:, 1:])], dim=1)
    assert torch.allclose(fr(x), fr.bn(plain))


def test_unknown_op_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown op 'conv_9x9'"):
        make_op("conv_9x9", 4, 1, True)


def test_preprocessing_reduces_prev_prev_after_reduction():
    pre0, pre1 = preprocessing(6, 12, 4, reduction_prev=True, affine=True)
    assert pre0(torch.randn(1, 6, 16, 16)).shape == (1, 4, 8, 8)
    assert pre1(torch.randn(1, 12, 8, 8)).shape == (1, 4, 8, 8)


def test_drop_path():
    x = torch.ones(1000, 2, 3, 3)
    assert drop_path(x, 0.3, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    torch.manual_seed(0)
    y = drop_path(x, 0.3, training=True)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] != 0
    # each sample is either all zero or scaled by 1 / keep
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.7))
    assert torch.count_nonzero(per_sample[~kept]) == 0
    assert 0.25 < (~kept).float().mean().item() < 0.35
