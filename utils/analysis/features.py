"""How strongly the candidate operations of a supernet edge agree: streaming feature-map
statistics and clustering of the ops into groups (StacNAS sec. 3.1); the tables and figures of
them are utils.analysis.feature_plots.

Per edge the variables are the edge's candidate ops (`none` excluded: it outputs zeros); an
op's output for one image has P elements (channel, row, column), its "positions". Two
statistics, both from one streaming accumulator (`PositionCovariance`):

- "position" (the authors' feature.py): each position p is centred by ITS OWN mean over the
  images, mean_i[p]; cov_ij = sum_p sum_n (x_i[n,p] - mean_i[p]) (x_j[n,p] - mean_j[p]),
  pooled over the positions; corr_ij = cov_ij / sqrt(cov_ii cov_jj). Only how the ops vary
  together from image to image counts.
- "global": every element of every image is one observation of the op, centred by ONE mean
  per op; a spatial pattern the ops share (borders, a channel's offset) adds to the
  correlation. Equal to the position co-moment plus N * sum_p (mean_i[p] - g_i)(mean_j[p] - g_j)
  with g_i the grand mean (law of total covariance), so no second pass is needed.

StacNAS's observation: ops of one family (max/avg pooling, sep_conv 3x3/5x5, dil_conv 3x3/5x5)
are highly correlated, which makes DARTS's alphas unstable (multicollinearity), so stage 1
searches over groups of them.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import genotypes as gt
from utils.io.genotype_files import validate_groups

# feature.py's "done" marker: groups.json (what `search.py --groups` reads) is the last file
# it writes, and is removed before a folder is measured again, so that a folder holding it
# holds a finished analysis. summary.json and config.json are written before it.
DONE_FILE = "groups.json"
WRITTEN_BEFORE_DONE = ("summary.json", "config.json")


def is_finished(feature_dir: str | Path) -> bool:
    """True when feature.py finished in `feature_dir`: groups.json, written last, is there with
    summary.json and config.json (an interrupted run, or one by an older feature.py that wrote
    groups.json first, lacks one of them)."""
    folder = Path(feature_dir)
    return all((folder / name).is_file() for name in (*WRITTEN_BEFORE_DONE, DONE_FILE))


def unmark_finished(feature_dir: str | Path) -> bool:
    """Remove the done marker of `feature_dir` before it is measured again (the folder then
    mixes old and new files until the new groups.json is written); True if there was one."""
    marker = Path(feature_dir) / DONE_FILE
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    return True


# search.py's supernet of the best held-out epoch, beside its checkpoint.pt (with a held-out
# split, --train_ratio below 1): what the authors' feature.py analyses.
BEST_FILE = "best.pt"


def holds_epoch(state: dict, run: str | None, epoch: int) -> bool:
    """True when the search checkpoint `state` holds the weights at the end of `epoch` of the
    run with id `run`: saved after that epoch, not part-way into the next one."""
    return (state.get("run") == run and state.get("epoch") == epoch
            and state.get("step", 0) == 0)


def sample_indices(n: int, count: int, how: str, seed: int) -> list[int]:
    """The training images feature.py runs through the supernet, in increasing order:
    "first", the first `count` of the `n` in dataset order (the authors' feature.py: a loader
    without shuffling, stopped after 10,000 images), or "random", `count` of them drawn with
    `seed`. Never more than `n`."""
    if how == "first":
        return list(range(min(count, n)))
    if how != "random":
        raise ValueError(f"samples must be 'first' or 'random', got {how!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:count])


# ------------------------------------------------------------------------ statistics
def correlation_from(cov: np.ndarray) -> np.ndarray:
    """cov_ij / sqrt(cov_ii cov_jj), symmetric, in [-1, 1], ones on the diagonal; a variable
    with zero variance correlates 0 with the others."""
    cov = np.asarray(cov, dtype=np.float64)
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    denom = np.outer(std, std)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(denom > 0, cov / denom, 0.0)
    corr = np.clip((corr + corr.T) / 2, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return corr


STATISTICS = ("position", "global")


class PositionCovariance:
    """Per-position means and the pooled co-moment of `dim` ops observed at P positions.

    Each batch x of shape (n, dim, P) (n images; anything after dim is flattened into P) is
    reduced to its per-position mean (dim, P) and its co-moment around those means,
    sum_p sum_n (x[n, :, p] - mean_b[:, p]) (x[n, :, p] - mean_b[:, p])^T, a (dim, dim)
    matrix, and merged with Chan, Golub & LeVeque's pairwise update applied per position (every
    position has the same count, so the per-position corrections add up to one product
    delta @ delta^T of the (dim, P) mean differences). Everything in float64 on the device of
    the first batch; memory dim x P for the means plus dim x dim, nothing stored per image.

    Why not the shorter sums S_i[p] and raw products sum x_i x_j, with sum_p S_i[p] S_j[p] / N
    subtracted at the end: that subtracts two large numbers whenever a position's mean is large
    next to its spread across images (pooling and identity outputs carry the input's offsets),
    and loses (mean / std)^2 of float64's 16 digits. The merge costs the same matmul per batch
    and only ever adds centred terms.
    """

    def __init__(self, dim: int):
        self.dim, self.count = dim, 0           # count = images N
        self.mean: torch.Tensor | None = None   # (dim, P) per-position means over the images
        self.m2: torch.Tensor | None = None     # (dim, dim) pooled co-moment around them

    @property
    def positions(self) -> int:
        return 0 if self.mean is None else self.mean.shape[1]

    def update(self, x: torch.Tensor) -> None:
        """Absorb `x` of shape (n, dim, ...): the `dim` ops' outputs for n images."""
        if x.dim() < 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected outputs of shape (n, {self.dim}, ...), "
                             f"got {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return
        x = x.detach().to(torch.float64).reshape(n, self.dim, -1)
        if self.mean is not None and x.shape[2] != self.positions:
            raise ValueError(f"expected {self.positions} positions per op, got {x.shape[2]}")
        mean_b = x.mean(dim=0)
        centred = x - mean_b
        m2_b = torch.tensordot(centred, centred, dims=([0, 2], [0, 2]))
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean_b, m2_b
            return
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + (delta @ delta.T) * (self.count * n / total)
        self.count = total

    def comoment(self, statistic: str = "position") -> torch.Tensor:
        """The (dim, dim) co-moment: around the per-position means ("position", the authors')
        or around one grand mean per op ("global": plus the spread of the per-position means)."""
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
        if self.mean is None:
            raise ValueError("no observations")
        if statistic == "position":
            return self.m2
        spread = self.mean - self.mean.mean(dim=1, keepdim=True)
        return self.m2 + (spread @ spread.T) * self.count

    def covariance(self, statistic: str = "position", ddof: int = 1) -> np.ndarray:
        """The co-moment over its degrees of freedom: P (N - ddof) for "position" (each
        position loses ddof to its own mean), N P - ddof for "global"."""
        n, p = self.count, self.positions
        dof = p * (n - ddof) if statistic == "position" else n * p - ddof
        if dof <= 0:
            raise ValueError(f"the {statistic} covariance needs more observations "
                             f"(images {n}, positions {p})")
        return (self.comoment(statistic) / dof).cpu().numpy()

    def correlation(self, statistic: str = "position") -> np.ndarray:
        return correlation_from(self.covariance(statistic))

    def mean_maps(self) -> np.ndarray:
        """(dim, P): each op's output averaged over the images, flattened (KMeans's features)."""
        if self.mean is None:
            raise ValueError("no observations")
        return self.mean.cpu().numpy()


# ------------------------------------------------------------------------ supernet edges
def edge_name(cell: int, key: str) -> str:
    """A supernet edge: alphas are shared, but edge "5<-4" of cell 3 is its own edge."""
    return f"cell{cell:02d}_{key}"


def select_edges(model: nn.Module, which: str = "first_last") -> dict[str, nn.Module]:
    """The MixedOps to measure: the first and last edge of every cell (the authors' choice)
    or every edge ("all"), keyed by `edge_name`."""
    if which not in ("first_last", "all"):
        raise ValueError(f"edges must be 'first_last' or 'all', got {which!r}")
    chosen = {}
    for i, cell in enumerate(model.cells):
        keys = list(cell.edges)
        for key in keys if which == "all" else [keys[0], keys[-1]]:
            chosen[edge_name(i, key)] = cell.edges[key]
    return chosen


def measured_ops(mixed: nn.Module) -> list[str]:
    """The candidates of a MixedOp that produce features (all but `none`)."""
    return [op for op in mixed.op_names if op != "none"]


class OpFeatureRecorder:
    """A forward hook on each chosen MixedOp calls every measured candidate op on the edge's
    input and feeds the outputs, as one (images, ops, positions) tensor, to the edge's
    PositionCovariance. Calling the op modules directly (rather than hooking them) keeps the
    measurement independent of how MixedOp schedules its ops (e.g. a shared ReLU). Use as a
    context manager; the hooks are removed on exit."""

    def __init__(self, edges: dict[str, nn.Module]):
        self.ops = {name: measured_ops(m) for name, m in edges.items()}
        self.stats = {name: PositionCovariance(len(ops)) for name, ops in self.ops.items()}
        self._edges, self._handles = edges, []

    def __enter__(self) -> OpFeatureRecorder:
        self._handles = [mixed.register_forward_hook(self._measure(name))
                         for name, mixed in self._edges.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _measure(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0]
            with torch.no_grad():
                outs = [module.ops[op](x).reshape(x.shape[0], -1) for op in self.ops[name]]
                self.stats[name].update(torch.stack(outs, dim=1))
        return hook


def collect(model: nn.Module, batches: Iterable, edges: dict[str, nn.Module],
            device: torch.device, log=None, print_freq: int = 50) -> dict[str, PositionCovariance]:
    """Run `batches` ((x, y) or x) through `model` in eval mode without gradients and return
    the per-edge statistics of the candidate ops' outputs (both statistics, the mean maps)."""
    model.eval()
    seen = 0
    with OpFeatureRecorder(edges) as rec, torch.no_grad():
        for step, batch in enumerate(batches):
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(x.to(device, non_blocking=True))
            seen += x.shape[0]
            if log is not None and (step % print_freq == 0):
                log(f"features: batch {step + 1}, {seen} images")
    return rec.stats


# ------------------------------------------------------------------------ clustering
def distance(corr: np.ndarray) -> np.ndarray:
    """1 - |corr|: anti-correlated ops are as collinear (as bad for alphas) as correlated ones."""
    d = np.clip(1.0 - np.abs(corr), 0.0, 2.0)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def linkage(corr: np.ndarray) -> np.ndarray:
    """scipy average-linkage hierarchy on the 1 - |corr| distance."""
    from scipy.cluster.hierarchy import linkage as scipy_linkage
    from scipy.spatial.distance import squareform
    return scipy_linkage(squareform(distance(corr), checks=False), method="average")


def cut(corr: np.ndarray, num_groups: int) -> list[int]:
    """A cluster label per op: the hierarchy cut into exactly `num_groups` clusters."""
    from scipy.cluster.hierarchy import cut_tree
    n = corr.shape[0]
    if not 1 <= num_groups <= n:
        raise ValueError(f"cannot cut {n} ops into {num_groups} groups")
    if n == 1:
        return [0]
    return [int(v) for v in cut_tree(linkage(corr), n_clusters=num_groups).ravel()]


def representative(members: list[str], corr: np.ndarray, ops: list[str]) -> str:
    """The member with the highest mean |corr| with the rest of its group; ties (always, in a
    pair) go to the paper's stage-1 representatives, then to the earlier op in `ops`."""
    idx = [ops.index(m) for m in members]

    def score(m: str) -> float:
        i = ops.index(m)
        others = [abs(corr[i, j]) for j in idx if j != i]
        return round(float(np.mean(others)), 9) if others else 0.0
    return max(members, key=lambda m: (score(m), m in gt.STAGE1_PRIMITIVES, -ops.index(m)))


def group_name(members: list[str], index: int) -> str:
    """The paper's name when the members are exactly one of its groups (`none` aside)."""
    for name, group in gt.GROUPS.items():
        if sorted(m for m in group["members"] if m != "none") == sorted(members):
            return name
    return f"group_{index}"


def find_groups(corr: np.ndarray, ops: list[str], num_groups: int, with_none: bool = True) -> dict:
    """Groups of correlated ops in the format `search.py --groups` reads.

    Average-linkage hierarchical clustering on 1 - |corr| cut into `num_groups` groups; each
    group gets a representative (see `representative`). With `with_none` (stage 1 always
    searches `none` too) every group also lists `none`, as the paper's stage-2 candidates do,
    and a zero group {"representative": "none", "members": ["none"]} comes last.
    """
    labels = cut(corr, num_groups)
    clusters: dict[int, list[str]] = {}
    for op, label in zip(ops, labels):
        clusters.setdefault(label, []).append(op)
    groups = {}
    for i, members in enumerate(clusters.values()):  # in order of each group's first op
        name = group_name(members, i)
        groups[name if name not in groups else f"group_{i}"] = {
            "representative": representative(members, corr, ops),
            "members": members + (["none"] if with_none else [])}
    if with_none:
        groups["zero"] = {"representative": "none", "members": ["none"]}
    return validate_groups(groups, "feature groups")


def same_partition(groups: dict, reference: dict = gt.GROUPS) -> bool:
    """Do `groups` split the ops as `reference` does (`none` and group names ignored)?"""
    def partition(g: dict) -> set[frozenset]:
        return ({frozenset(m for m in v["members"] if m != "none") for v in g.values()}
                - {frozenset()})
    return partition(groups) == partition(reference)


def canonical(labels: Iterable[int]) -> list[int]:
    """Cluster labels renumbered in order of first appearance ([2, 2, 0, 1] -> [0, 0, 1, 2]):
    the same partition gets the same labels, so the first op's cluster is always 0."""
    seen: dict[int, int] = {}
    return [seen.setdefault(int(v), len(seen)) for v in labels]


def kmeans(features: np.ndarray, ks: Iterable[int], seed: int = 0) -> dict[int, list[int]]:
    """{k: canonical KMeans labels of the rows of `features`} (scikit-learn, 10 restarts)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    labels = {}
    for k in ks:
        with warnings.catch_warnings():  # identical ops give fewer distinct points than k
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(n_clusters=k, n_init=10, random_state=seed)
            labels[k] = canonical(km.fit_predict(features))
    return labels


def pca_plane(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `features` projected onto their first 2 principal components (a second
    column of zeros when there is only one), and the explained variance ratios."""
    from sklearn.decomposition import PCA
    pca = PCA(n_components=min(2, *features.shape), random_state=seed)
    points = pca.fit_transform(features)
    if points.shape[1] == 1:
        points = np.hstack([points, np.zeros_like(points)])
    return points, pca.explained_variance_ratio_


def kmeans_views(corr: np.ndarray, ks: Iterable[int],
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Our summary view of a correlation matrix (not the authors'): each op is described by its
    row of |corr| (how it correlates with every op); PCA projects the rows onto 2 components
    and KMeans clusters the projected points.
    Returns (points (ops, 2), explained variance ratios, {k: labels})."""
    points, explained = pca_plane(np.abs(corr), seed)
    return points, explained, kmeans(points, ks, seed)


def kmeans_mean_maps(maps: np.ndarray, ks: Iterable[int], seed: int = 0) -> dict[int, list[int]]:
    """The authors' view of one edge: each op is described by its mean feature map (its output
    averaged over the images, flattened: a row of `maps`), and KMeans clusters those rows in
    their full dimension, for each k."""
    return kmeans(np.asarray(maps, dtype=np.float64), ks, seed)
