"""Figures of a run: cell plots of a genotype (graphviz's `dot`, skipped with a warning where
it is missing), alphas over epochs, training curves and alpha against stand-alone accuracy
(matplotlib, headless)."""
from __future__ import annotations

import math
import numbers
import os
import shutil
import subprocess
import warnings
from pathlib import Path

from genotypes import AnyGenotype, cell_kinds
from utils.io.files import BadFile, naming, read_json


def pyplot():
    """matplotlib.pyplot, headless (the Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Write `fig` to `path` and close it; a failed write is one WriteError naming the file."""
    try:
        with naming(path):
            fig.savefig(path, dpi=dpi)
    finally:
        pyplot().close(fig)


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _edge_ops(alphas: dict) -> dict:
    """{(set, node, edge): ops} of alphas of the alphas.json layout, or None when it is not
    that layout (sets of nodes of edges, each {"ops": [names], "alphas": [numbers]})."""
    layout = {}
    for key, nodes in alphas.items():
        if not isinstance(nodes, list) or not nodes:
            return None
        for i, edges in enumerate(nodes):
            if not isinstance(edges, list) or not edges:
                return None
            for j, edge in enumerate(edges):
                if not (isinstance(edge, dict) and isinstance(edge.get("ops"), list)
                        and all(isinstance(op, str) for op in edge["ops"])
                        and isinstance(edge.get("alphas"), list)
                        and len(edge["alphas"]) == len(edge["ops"]) > 0):
                    return None
                layout[(key, i, j)] = edge["ops"]
    return layout


def _finite_floats(values: list) -> bool:
    try:
        return all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                   and math.isfinite(v) for v in values)
    except OverflowError:  # an integer too large for a float
        return False


def read_alpha_history(alpha_files: list[str | Path]) -> list[dict]:
    """The per-epoch alphas files, in order, each checked to have the first file's layout
    (sets, nodes, edges, ops) and a finite number per op: BadFile naming the file otherwise
    (a hand-edited or foreign file), never a KeyError or OverflowError while plotting."""
    history, first = [], None
    for path in alpha_files:
        alphas = read_json(path, dict, "per-epoch alphas (the alphas.json layout)")
        layout = _edge_ops(alphas)
        if not layout:
            raise BadFile(f"{path}: not alphas (expected {{set: [node][edge] -> {{\"ops\": "
                          "[names], \"alphas\": [numbers]}}}}); remove it or rerun the search")
        if first is None:
            first = (path, layout)
        elif layout != first[1]:
            raise BadFile(f"{path}: its sets, edges or ops differ from {first[0]}'s; per-epoch "
                          "alphas of one search all have the same; remove it or rerun the search")
        bad = next((k for k in layout if not _finite_floats(_edge(alphas, k)["alphas"])), None)
        if bad is not None:
            raise BadFile(f"{path}: {bad[0]} node {bad[1]} edge {bad[2]}: alphas "
                          f"{str(_edge(alphas, bad)['alphas'])[:60]} are not all finite numbers; "
                          "remove it or rerun the search")
        history.append(alphas)
    return history


def _edge(alphas: dict, key: tuple) -> dict:
    return alphas[key[0]][key[1]][key[2]]


def plot_alpha_history(alpha_files: list[str | Path], out_dir: str | Path) -> list[str]:
    """One PNG per alpha set: a panel per edge, softmax(alpha) of each candidate over epochs.

    `alpha_files` are the per-epoch alphas.json files in epoch order (read_alpha_history).
    """
    history = read_alpha_history(alpha_files)
    if not history:
        return []
    plt = pyplot()
    written = []
    for set_name, nodes in history[0].items():
        edges = [(i, j) for i, node in enumerate(nodes) for j in range(len(node))]
        cols = 4
        rows = math.ceil(len(edges) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False,
                                 sharex=True, sharey=True)
        epochs = list(range(1, len(history) + 1))
        for ax, (i, j) in zip(axes.flat, edges):
            ops = nodes[i][j]["ops"]
            probs = [softmax(h[set_name][i][j]["alphas"]) for h in history]
            for k, op in enumerate(ops):
                ax.plot(epochs, [p[k] for p in probs], label=op)
            ax.set_title(f"node {i + 2} <- {j}", fontsize=9)
            ax.legend(fontsize=6, loc="upper left")
        for ax in list(axes.flat)[len(edges):]:
            ax.axis("off")
        fig.suptitle(f"softmax(alpha), {set_name} cells, per epoch")
        fig.tight_layout()
        path = Path(out_dir) / f"alphas_{set_name}.png"
        save_figure(fig, path, dpi=80)
        written.append(str(path))
    return written


def plot_curves(stage_metrics: dict[str, list[dict]], path: str | Path) -> str | None:
    """Top-1 per epoch of each stage (train, held-out, test where logged) from metrics.jsonl
    records, one panel per stage."""
    stages = [(name, records) for name, records in stage_metrics.items() if records]
    if not stages:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3), squeeze=False)
    for ax, (name, records) in zip(axes[0], stages):
        epochs = [r["epoch"] for r in records]
        for key, label in (("top1", "train"), ("valid_top1", "held-out"), ("test_top1", "test")):
            points = [(e, r[key]) for e, r in zip(epochs, records) if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    return str(path)


# Marker per candidate op in the alpha-efficiency scatter (colour: the edge).
OP_MARKERS = {"max_pool_3x3": "v", "avg_pool_3x3": "^", "skip_connect": "s", "sep_conv_3x3": "o",
              "sep_conv_5x5": "p", "dil_conv_3x3": "D", "dil_conv_5x5": "d", "conv_7x1_1x7": "x"}


def plot_alpha_efficiency(panels: list[dict], path: str | Path) -> str:
    """Alpha against stand-alone accuracy, one panel per search side by side. `panels`:
    ``[{"title": str, "points": [{"x": softmax(alpha), "y": held-out top-1, "edge": name,
    "op": op, "derived": bool}]}]``; colour = edge, marker = op, red rim = the search's choice."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    ops_seen: dict[str, str] = {}
    for ax, panel in zip(axes[0], panels):
        edges = list(dict.fromkeys(p["edge"] for p in panel["points"]))
        colours = {e: plt.cm.tab10(i % 10) for i, e in enumerate(edges)}
        for p in panel["points"]:
            marker = ops_seen.setdefault(p["op"], OP_MARKERS.get(p["op"], "*"))
            chosen = p.get("derived", False)
            ax.scatter(p["x"], p["y"], color=colours[p["edge"]], marker=marker, s=40,
                       edgecolors="red" if chosen else "black", linewidths=1.5 if chosen else 0.5,
                       zorder=3)
        for e in edges:
            ax.scatter([], [], color=colours[e], marker="o", s=30, label=e)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("softmax(alpha) on the edge")
        ax.set_ylabel("held-out top-1 (%), stand-alone")
        ax.grid(alpha=0.3)
        ax.locator_params(axis="x", nbins=4)
        ax.ticklabel_format(axis="x", useOffset=False)
        if edges:
            ax.legend(fontsize=6, loc="best", title="edge", title_fontsize=7)
    handles = [plt.Line2D([], [], color="grey", marker=m, linestyle="", markersize=6, label=op)
               for op, m in ops_seen.items()]
    if handles:
        handles.append(plt.Line2D([], [], color="white", marker="o", markeredgecolor="red",
                                  linestyle="", markersize=6, label="search's choice"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4 * len(panels)),
                   fontsize=7)
    fig.tight_layout(rect=(0, 0.14 if handles else 0, 1, 1))
    save_figure(fig, path)
    return str(path)


# ----------------------------------------------------------------------------- cells
def _skip_plot(path: str, why: str = "not found") -> None:
    warnings.warn(f"graphviz 'dot' {why}; skipping cell plot {path} "
                  "(install the Debian/Ubuntu package 'graphviz' to get plots)", stacklevel=3)


def plot_cell(ops: list, concat: list, path_without_ext: str | Path,
              caption: str | None = None) -> str | None:
    """Draw one cell to ``<path>.png``; warn and return None (never raise) without ``dot``."""
    path = str(path_without_ext)
    try:
        import graphviz
    except ImportError:
        _skip_plot(path, "unavailable (no graphviz Python package)")
        return None
    if shutil.which("dot") is None:
        _skip_plot(path)
        return None
    dot = graphviz.Digraph(format="png", graph_attr={"rankdir": "LR", "label": caption or ""},
                           node_attr={"style": "filled", "shape": "rect"})
    inputs = ["c_{k-2}", "c_{k-1}"]
    for name in inputs:
        dot.node(name, fillcolor="darkseagreen2")
    for i in range(len(ops) // 2):
        dot.node(str(i), fillcolor="lightblue")
    for k, (op, inp) in enumerate(ops):
        dot.edge(inputs[inp] if inp < 2 else str(inp - 2), str(k // 2), label=op)
    dot.node("c_{k}", fillcolor="palegoldenrod")
    for c in concat:
        dot.edge(str(c - 2), "c_{k}")
    try:
        return dot.render(filename=path, cleanup=True)
    except graphviz.ExecutableNotFound:
        _skip_plot(path)
    except subprocess.CalledProcessError as exc:
        _skip_plot(path, f"failed (exit {exc.returncode})")
    return None


def plot_genotype(g: AnyGenotype, directory: str | Path, prefix: str = "") -> list[str]:
    """Plot every cell kind (normal/reduce, or every cell) into ``directory``; written paths."""
    if shutil.which("dot") is None:
        _skip_plot(os.path.join(str(directory), f"{prefix}*"))
        return []
    os.makedirs(directory, exist_ok=True)
    paths = [plot_cell(ops, concat, os.path.join(str(directory), prefix + name), caption=name)
             for name, ops, concat, _ in cell_kinds(g)]
    return [p for p in paths if p]
