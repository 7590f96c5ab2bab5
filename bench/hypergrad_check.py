"""How close the second-order (unrolled) alpha gradient of DARTS eq. 7-8 comes to its float64
value under `--amp bf16` with TF32 allowed (the GPU defaults for cuDNN convolutions), on a
tiny supernet: the Hessian-vector product of eq. 8 (its finite difference is what bf16 and
TF32 cannot resolve) and the whole gradient at DARTS's learning rate. Exit 1 when a cosine
similarity to float64 is below its minimum.

    python bench/hypergrad_check.py --device cuda
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from models.factory import build_supernet, stage_candidates  # noqa: E402
from utils.runtime.context import Runtime  # noqa: E402
from utils.runtime.speed import SpeedPlan  # noqa: E402
from utils.train.architect import Architect, make_optimizers  # noqa: E402


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    u = torch.cat([t.double().flatten() for t in a])
    v = torch.cat([t.double().flatten() for t in b])
    return float(u @ v / (u.norm() * v.norm()))


def alpha_gradients(model: nn.Module, batches, runtime: Runtime, w_lr: float,
                    direction: list[torch.Tensor]) -> tuple[list, list, list]:
    """(second-order hypergradient, first-order dL_val/dalpha, the Hessian-vector product of
    eq. 8 along `direction`) at the model's weights."""
    w_opt, a_opt = make_optimizers(model, w_lr=w_lr, w_momentum=0.0, w_weight_decay=0.0)
    arch = Architect(model, w_opt, a_opt, nn.CrossEntropyLoss(), mode="bilevel", unrolled=True,
                     runtime=runtime)
    (x, y), (xv, yv) = batches
    second = arch.hypergradient(x, y, xv, yv)
    with arch._preserved() as w0:
        hvp = arch.hessian_vector_product(x, y, w0, [d.to(w.dtype) for d, w in zip(direction, w0)])
    with runtime.autocast():
        loss = nn.functional.cross_entropy(model(xv), yv)
    first = torch.autograd.grad(loss, list(model.alphas()))
    return ([g.detach() for g in second], [g.detach() for g in first], [h.detach() for h in hvp])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    p.add_argument("--w_lr", type=float, default=0.025,
                   help="the virtual step's learning rate (xi; DARTS's weight learning rate)")
    p.add_argument("--min_hvp_cosine", type=float, default=0.99,
                   help="least cosine of the Hessian-vector product to its float64 value")
    p.add_argument("--min_cosine", type=float, default=0.9,
                   help="least cosine of the whole second-order gradient to its float64 value "
                        "(its first-order parts keep --amp's own rounding)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":  # the defaults a user's GPU run has
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = build_supernet(stage_candidates("darts", 3), num_classes=10, in_channels=3,
                           input_size=16, init_channels=8, num_cells=3).to(dev)
    with torch.no_grad():
        for a in model.alphas():
            a.normal_(0.0, 0.5)  # away from uniform, so the alpha gradients are not degenerate
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 16, 16, generator=g).to(dev),
                torch.randint(0, 10, (16,), generator=g).to(dev)) for _ in range(2)]
    ref_model = copy.deepcopy(model).double()
    ref_batches = [(x.double(), y) for x, y in batches]
    # the direction DARTS uses: xi * dL_val/dw (here at w, in float64, shared by both runs)
    xv, yv = ref_batches[1]
    loss = nn.functional.cross_entropy(ref_model(xv), yv)
    direction = [args.w_lr * d for d in torch.autograd.grad(loss, list(ref_model.weights()),
                                                            allow_unused=True)]
    direction = [torch.zeros_like(w) if d is None else d.detach()
                 for d, w in zip(direction, ref_model.weights())]
    ref = alpha_gradients(ref_model, ref_batches, Runtime(dev), args.w_lr, direction)
    runtime = Runtime(dev, SpeedPlan(amp=args.amp))
    second, first, hvp = alpha_gradients(model, batches, runtime, args.w_lr, direction)
    c_second, c_hvp = cosine(second, ref[0]), cosine(hvp, ref[2])
    print(f"device {args.device}, amp {args.amp}, xi {args.w_lr}: cosine to float64 of the "
          f"Hessian-vector product (eq. 8) {c_hvp:.4f}, of the second-order alpha gradient "
          f"{c_second:.4f}; the first-order gradient alone (float64) {cosine(ref[1], ref[0]):.4f}, "
          f"under {args.amp} against its float64 {cosine(first, ref[1]):.4f}")
    if not (c_hvp >= args.min_hvp_cosine and c_second >= args.min_cosine):
        print(f"error: the second-order alpha gradient under {args.amp} is off (cosines "
              f"{c_hvp:.4f} / {c_second:.4f}, wanted >= {args.min_hvp_cosine} / {args.min_cosine})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
