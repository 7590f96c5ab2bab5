"""The search supernet: stem, stacked search cells, classifier, and the architecture alphas.

Alphas are registered parameters grouped by alpha set: "normal" and "reduce" when shared by
all cells of a kind (`alpha_share`, the paper's setting), or "cell_<i>" with one set per cell.
Each set holds one 1-D parameter per edge, as long as that edge's candidate list, initialised
as 1e-3 * randn (as DARTS's code does). A list may repeat skip_connect (the released code's
identity group, --identity_group released): each copy has its own alpha entry, and the readout
lists both under the name skip_connect.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from genotypes import alpha_set_keys, cell_set, derive_genotype, is_shared, reduction_cells
from models.shared import AuxiliaryHead, run_cells
from models.search_cells import SearchCell, edge_key

Candidates = dict[str, list[list[list[str]]]]


def _upcast(alpha: torch.Tensor) -> torch.Tensor:
    """Softmax of half-precision alphas in float32; float32/float64 stay as they are."""
    return alpha.float() if alpha.dtype in (torch.float16, torch.bfloat16) else alpha


class SearchNetwork(nn.Module):
    """CIFAR-style supernet for inputs of any size >= 8 and any number of channels.

    `candidates` maps each alpha set to per-node, per-edge candidate op lists; its keys decide
    whether alphas are shared ("normal"/"reduce") or per cell ("cell_0".."cell_<n-1>").
    """

    def __init__(self, candidates: Candidates, num_classes: int, in_channels: int = 3,
                 init_channels: int = 16, num_cells: int = 8, stem_multiplier: int = 3,
                 auxiliary: bool = False, input_size: int = 32):
        super().__init__()
        if num_cells < 3:
            raise ValueError(f"num_cells must be >= 3 (two reduction cells), got {num_cells}")
        alpha_set_keys(candidates, "candidates")  # normal + reduce, or cell_0, cell_1, ...
        self.alpha_share = is_shared(candidates)
        if not self.alpha_share and len(candidates) != num_cells:
            raise ValueError(f"per-cell alphas need {num_cells} sets 'cell_0'..'cell_"
                             f"{num_cells - 1}', got {len(candidates)}")
        self.candidates = candidates
        self.num_cells = num_cells
        self.grad_checkpoint = False  # recompute each cell in backward (saves memory)
        self.num_nodes = len(next(iter(candidates.values())))
        reductions = reduction_cells(num_cells)

        c_cur = stem_multiplier * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_cur, 3, 1, 1, bias=False), nn.BatchNorm2d(c_cur))
        c_pp, c_p, c_cur = c_cur, c_cur, init_channels
        self.cells = nn.ModuleList()
        self.cell_sets: list[str] = []
        reduction_prev = False
        size = input_size
        self.aux_pos = 2 * num_cells // 3
        aux_channels, aux_size = None, None
        for i in range(num_cells):
            reduction = i in reductions
            if reduction:
                c_cur *= 2
                size = -(-size // 2)
            name = cell_set(i, reduction, self.alpha_share)
            self.cells.append(SearchCell(candidates[name], c_pp, c_p, c_cur, reduction,
                                         reduction_prev))
            self.cell_sets.append(name)
            reduction_prev = reduction
            c_pp, c_p = c_p, c_cur * self.num_nodes
            if i == self.aux_pos:
                aux_channels, aux_size = c_p, size
        self.aux_head = AuxiliaryHead(aux_channels, aux_size, num_classes) if auxiliary else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

        self.arch = nn.ModuleDict()
        for name, nodes in candidates.items():
            self.arch[name] = nn.ParameterDict({
                edge_key(i, j): nn.Parameter(1e-3 * torch.randn(len(ops)))
                for i, edges in enumerate(nodes) for j, ops in enumerate(edges)})

    # -- parameter groups -------------------------------------------------------------
    def alphas(self) -> Iterator[nn.Parameter]:
        """Architecture parameters (optimised by the alpha optimiser)."""
        return self.arch.parameters()

    def named_alphas(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.arch.named_parameters()

    def weights(self) -> Iterator[nn.Parameter]:
        """Network weights: every parameter that is not an alpha."""
        arch_ids = {id(p) for p in self.arch.parameters()}
        return (p for p in self.parameters() if id(p) not in arch_ids)

    # -- forward ----------------------------------------------------------------------
    def _softmaxed(self, name: str) -> list[list[torch.Tensor]]:
        params = self.arch[name]
        return [[F.softmax(_upcast(params[edge_key(i, j)]), dim=-1) for j in range(i + 2)]
                for i in range(self.num_nodes)]

    def forward(self, x: torch.Tensor):
        """Logits; in training mode with an auxiliary head, (logits, aux_logits)."""
        weights = {name: self._softmaxed(name) for name in self.arch}
        s = self.stem(x)
        return run_cells(self, s, s, [weights[name] for name in self.cell_sets])

    # -- architecture readout ---------------------------------------------------------
    def alphas_data(self) -> dict:
        """Raw alphas in the alphas.json format (plain Python data)."""
        return {name: [[{"ops": list(ops),
                         "alphas": [float(v)
                                    for v in self.arch[name][edge_key(i, j)].detach().cpu()]}
                        for j, ops in enumerate(edges)]
                       for i, edges in enumerate(nodes)]
                for name, nodes in self.candidates.items()}

    def genotype(self):
        """The final genotype derived from the current alphas (top-2 rule, `none` excluded)."""
        return derive_genotype(self.alphas_data())
