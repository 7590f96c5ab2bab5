"""Draw images/two_stages.png: what one edge mixes in stage 1 and, for each group stage 1 may
activate, in stage 2 (from genotypes.GROUPS). Needs Graphviz's `dot`.

    python images/draw_two_stages.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import graphviz  # noqa: E402

import genotypes as gt  # noqa: E402


def main() -> int:
    dot = graphviz.Digraph(format="png", graph_attr={"rankdir": "LR", "fontsize": "12",
                                                    "label": "StacNAS: stage 1 picks a group per "
                                                             "edge, stage 2 an op inside it"},
                           node_attr={"shape": "rect", "style": "filled", "fontsize": "11"})
    with dot.subgraph(name="cluster_1") as s1:
        s1.attr(label="stage 1 (14 cells): one representative per group", style="rounded")
        s1.node("x1", "x (edge input)", fillcolor="darkseagreen2")
        s1.node("sum1", "sum softmax(alpha) * op(x)", fillcolor="palegoldenrod")
        for name, group in gt.GROUPS.items():
            node = f"rep_{name}"
            s1.node(node, f"{group['representative']}\n({name})", fillcolor="lightblue")
            s1.edge("x1", node)
            s1.edge(node, "sum1")
    with dot.subgraph(name="cluster_2") as s2:
        s2.attr(label="stage 2 (20 cells): the members of the group stage 1 activated",
                style="rounded")
        for name, group in gt.GROUPS.items():
            if name == "zero":
                continue
            members = ", ".join(group["members"])
            s2.node(f"g_{name}", f"{name}:\n{members}", fillcolor="lightpink")
            dot.edge(f"rep_{name}", f"g_{name}", style="dashed", label="if largest alpha")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "two_stages")
    print(dot.render(out, cleanup=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
