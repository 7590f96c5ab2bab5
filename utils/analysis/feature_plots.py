"""Tables and figures of feature.py's analysis (StacNAS sec. 3.1, utils.analysis.features):
correlation matrices as aligned text and CSV, heatmaps, KMeans scatter panels in a PCA plane,
the authors' per-edge KMeans grid, and the average-linkage dendrogram with its cut. Headless
matplotlib; each figure is written and closed by save_figure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.analysis.features import linkage
from utils.analysis.plots import pyplot, save_figure
from utils.io.files import write_text

# Short op names for tables and scatter labels.
SHORT = {"max_pool_3x3": "max3", "avg_pool_3x3": "avg3", "skip_connect": "skip",
         "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3",
         "dil_conv_5x5": "dil5", "conv_7x1_1x7": "c7x1"}


def short(op: str) -> str:
    return SHORT.get(op, op)


# ------------------------------------------------------------------------ file names and tables
def file_stem(name: str) -> str:
    """`cell03_5<-4` -> `cell03_5from4` (no shell-hostile characters in file names)."""
    return name.replace("<-", "from")


def format_table(corr: np.ndarray, ops: list[str]) -> list[str]:
    """An aligned text table: full op names down, short names across."""
    width = max(len(op) for op in ops)
    lines = [" " * width + "".join(f"{short(op):>7}" for op in ops)]
    for op, row in zip(ops, corr):
        lines.append(f"{op:<{width}}" + "".join(f"{v:7.3f}" for v in row))
    return lines


def write_csv(corr: np.ndarray, ops: list[str], path: str | Path) -> None:
    lines = [",".join(["op"] + ops)]
    lines += [",".join([op] + [f"{v:.8f}" for v in row]) for op, row in zip(ops, corr)]
    write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------ figures
def read_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split(",") for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return rows[0][1:], np.array([[float(v) for v in row[1:]] for row in rows[1:]])


def plot_heatmap(corr: np.ndarray, ops: list[str], title: str, path: str | Path) -> None:
    plt = pyplot()
    n = len(ops)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.6 + 0.7 * n))
    im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), ops, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), ops, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(corr[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _labels(points: np.ndarray, ops: list[str]) -> list[tuple[np.ndarray, str]]:
    """One label per bunch of nearby points ("max3/avg3"), so close ops stay readable."""
    radius = 0.12 * max(float(np.ptp(points)), 1e-9)
    labels: list[tuple[np.ndarray, str]] = []
    for point, op in zip(points, ops):
        for k, (anchor, text) in enumerate(labels):
            if np.linalg.norm(point - anchor) < radius:
                labels[k] = (anchor, f"{text}/{short(op)}")
                break
        else:
            labels.append((point, short(op)))
    return labels


def plot_clusters(points: np.ndarray, explained: np.ndarray, labels: dict, ops: list[str],
                  path: str | Path,
                  title: str = "ops by their |correlation| rows, PCA plane") -> None:
    """One scatter panel per k: the ops in a PCA plane, coloured by their KMeans cluster."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 3.4), squeeze=False)
    pcs = [f"PC{i + 1} ({100 * v:.0f}%)" for i, v in enumerate(list(explained) + [0.0])][:2]
    for ax, (k, lab) in zip(axes.flat, labels.items()):
        ax.scatter(points[:, 0], points[:, 1], c=lab, cmap="tab10", vmin=0, vmax=9, s=60)
        for (x, y), text in _labels(points, ops):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_title(f"KMeans k={k}", fontsize=9)
        ax.set_xlabel(pcs[0], fontsize=8)
        ax.set_ylabel(pcs[1], fontsize=8)
        ax.margins(0.2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_kmeans_edges(labels: dict[str, dict[int, list[int]]], ops: list[str], path: str | Path,
                      title: str = "", max_edges: int = 28) -> None:
    """The authors' KMeans view, one panel per k: a row per edge (the first `max_edges`), a
    column per op, coloured and numbered by the op's cluster on that edge (canonical labels:
    the first op's cluster is 0, so equal colours in a row are one cluster)."""
    plt = pyplot()
    edges = list(labels)[:max_edges]
    ks = list(labels[edges[0]]) if edges else []
    n = len(ops)
    fig, axes = plt.subplots(1, max(len(ks), 1), squeeze=False,
                             figsize=(0.6 + (1.1 + 0.42 * n) * max(len(ks), 1),
                                      1.3 + 0.26 * len(edges)))
    for ax, k in zip(axes.flat, ks):
        grid = np.array([labels[e][k] for e in edges])
        ax.imshow(grid, cmap="tab10", vmin=0, vmax=9, aspect="auto")
        for r in range(grid.shape[0]):
            for c in range(n):
                ax.text(c, r, str(grid[r, c]), ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(n), [short(op) for op in ops], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(edges)), edges if ax is axes.flat[0] else [""] * len(edges),
                      fontsize=7)
        ax.set_title(f"KMeans k={k}", fontsize=9)
    shown = (f"first {len(edges)} of {len(labels)} edges" if len(edges) < len(labels)
             else f"{len(edges)} edges")
    fig.suptitle(f"{title + ': ' if title else ''}ops clustered by their mean feature maps, "
                 f"{shown}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_dendrogram(corr: np.ndarray, ops: list[str], num_groups: int, path: str | Path) -> None:
    """Average-linkage dendrogram on 1 - |corr|, with the cut that gives `num_groups` groups."""
    from scipy.cluster.hierarchy import dendrogram
    plt = pyplot()
    z = linkage(corr)
    n = len(ops)
    heights = z[:, 2]
    below = heights[n - num_groups - 1] if num_groups < n else 0.0
    above = heights[n - num_groups] if num_groups > 1 else heights[-1] * 1.1
    threshold = (below + above) / 2
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.45 * n))
    dendrogram(z, labels=ops, orientation="left", color_threshold=threshold, ax=ax)
    ax.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("1 - |correlation| (average linkage)", fontsize=8)
    ax.set_title(f"hierarchical clustering; dashed: cut into {num_groups} groups", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
