"""Cell diagrams of a genotype (the paper's Figure 2), drawn with Graphviz as SVG and PNG.

Each cell type is a DAG: the two cell inputs c_{k-2} and c_{k-1}, the four intermediate nodes 0-3 and
the output c_k, the concatenation of nodes 0-3. Every edge is labelled and coloured by its operation;
zero edges are left out. Two genotypes side by side mark the edges on which they agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from scnas.errors import ScnasError
from scnas.io import write_bytes
from scnas.nas.cells import CELL_TYPES
from scnas.nas.genotype import Genotype
from scnas.report.dot import DOT_MISSING, require_dot
from scnas.report.style import CELL_NAMES, OPERATION_COLOURS, operation_name

PNG_DPI = 80
FONT = "Helvetica"


def _graphviz():
    try:
        import graphviz
    except ImportError:
        raise ScnasError(
            "the graphviz Python package is missing: pip install graphviz (make venv installs it)"
        ) from None
    return graphviz


def edge_id(prefix: str, cell: str, i: int, j: int, op: str) -> str:
    """The id of an operation edge in the Graphviz source and the SVG: PREFIX:CELL:I-J:OP."""
    return f"{prefix}:{cell}:{i}-{j}:{op}"


def _node_label(cell_input: int | None, node: int | None) -> str:
    if cell_input is not None:
        return f"<c<sub>k-{2 - cell_input}</sub>>"
    if node is None:
        return "<c<sub>k</sub> (concat)>"
    return str(node)


def _add_cell(
    graph,
    genotype: Genotype,
    cell: str,
    prefix: str,
    title: str,
    other: Genotype | None,
) -> tuple[list[str], str]:
    """One cell type as a cluster of `graph`; returns its input node names and its output node name."""
    nodes = genotype.num_nodes
    name = lambda k: f"{prefix}_{cell}_{k}"  # noqa: E731
    out = f"{prefix}_{cell}_out"
    ops = genotype.edge_ops[cell]
    shared = other.edge_ops[cell] if other is not None else None
    with graph.subgraph(name=f"cluster_{prefix}_{cell}") as sub:
        sub.attr(label=title, labeljust="l", fontsize="16", fontname=f"{FONT} Bold", color="#BBBBBB", style="rounded")
        with sub.subgraph() as inputs:
            inputs.attr(rank="same")
            for k in (0, 1):
                inputs.node(name(k), _node_label(k, None), shape="box", style="filled", fillcolor="#DDDDDD")
            inputs.edge(name(1), name(0), style="invis")  # LR turns a flat edge upwards: c_{k-2} on top
        for j in range(2, nodes + 2):
            fed = any(ops[i, j] != "zero" for i in range(j))
            sub.node(
                name(j),
                _node_label(None, j - 2),
                shape="circle",
                style="filled" if fed else "dashed",
                fillcolor="#FFF2CC",
                tooltip="" if fed else "every incoming edge is zero: this node outputs zeros",
            )
        sub.node(out, _node_label(None, None), shape="box", style="filled", fillcolor="#DDDDDD")
        for (i, j), op in ops.items():
            if op == "zero":
                continue
            attrs = {"color": OPERATION_COLOURS.get(op, "#333333"), "fontcolor": OPERATION_COLOURS.get(op, "#333333")}
            if shared is None:
                attrs["penwidth"] = "2.2"
            elif shared[i, j] == op:
                attrs["penwidth"] = "4"
            else:
                attrs.update(penwidth="1.5", style="dashed")
            sub.edge(
                name(i),
                name(j),
                label=f" {operation_name(op)} ",
                id=edge_id(prefix, cell, i, j, op),
                fontsize="12",
                **attrs,
            )
        for j in range(2, nodes + 2):
            sub.edge(name(j), out, color="#999999", arrowsize="0.6")
    return [name(0), name(1)], out


def genotype_graph(genotypes: Sequence[Genotype], titles: Sequence[str], heading: str = ""):
    """A Graphviz digraph of one genotype (cell types in a 2x2 grid) or two (side by side, one row per
    cell type, the edges they share drawn thick and the others dashed)."""
    graphviz = _graphviz()
    if len(genotypes) not in (1, 2) or len(titles) != len(genotypes):
        raise ScnasError("draw one genotype, or two side by side (a title for each)")
    graph = graphviz.Digraph(name="genotype")
    graph.attr(rankdir="LR", fontname=FONT, nodesep="0.25", ranksep="0.5", newrank="true")
    graph.attr("node", fontname=FONT, fontsize="14")
    graph.attr("edge", fontname=FONT)
    if heading:
        graph.attr(label=heading, labelloc="t", fontsize="20")
    ends: dict[tuple[int, str], tuple[list[str], str]] = {}
    for g, (genotype, title) in enumerate(zip(genotypes, titles)):
        other = genotypes[1 - g] if len(genotypes) == 2 else None
        # dot stacks the clusters of a column bottom-up in the order they are defined
        for cell in reversed(CELL_TYPES):
            label = f"{CELL_NAMES[cell]} cell" + (f": {title}" if title else "")
            ends[g, cell] = _add_cell(graph, genotype, cell, "ab"[g], label, other)
    # Invisible edges place what stands to the right after what stands to the left.
    if len(genotypes) == 1:
        pairs = [(CELL_TYPES[0], CELL_TYPES[1]), (CELL_TYPES[2], CELL_TYPES[3])]
        links = [((0, left), (0, right)) for left, right in pairs]
    else:
        links = [((0, cell), (1, cell)) for cell in CELL_TYPES]
    for left, right in links:
        for node in ends[right][0]:
            graph.edge(ends[left][1], node, style="invis", weight="0")
    # ... and stack the rows top to bottom in the order of CELL_TYPES.
    rows = [(0, cell) for cell in (CELL_TYPES[::2] if len(genotypes) == 1 else CELL_TYPES)]
    for upper, lower in zip(rows, rows[1:]):
        with graph.subgraph() as same:
            same.attr(rank="same")
            same.edge(ends[lower][0][0], ends[upper][0][1], style="invis")
    return graph


def render(graph, prefix: str | os.PathLike) -> list[Path]:
    """Write PREFIX.svg and PREFIX.png (atomically) from a digraph."""
    require_dot()
    graphviz = _graphviz()
    prefix = Path(prefix)
    written = []
    try:
        for fmt in ("svg", "png"):
            source = graph.copy()
            if fmt == "png":
                source.attr(dpi=str(PNG_DPI))
            path = prefix.with_name(f"{prefix.name}.{fmt}")
            write_bytes(path, source.pipe(format=fmt))
            written.append(path)
    except graphviz.ExecutableNotFound:
        raise ScnasError(DOT_MISSING) from None
    except graphviz.CalledProcessError as e:
        detail = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        raise ScnasError(f"{prefix}: Graphviz failed ({detail[-1] if detail else 'no message'})") from None
    return written


def genotype_title(genotype_source: dict | None, fallback: str) -> str:
    """ "DemoBrain fold 0" from a genotype file's source metadata, else `fallback`."""
    source = genotype_source or {}
    if source.get("task") and source.get("fold") is not None:
        return f"{source['task']} fold {source['fold']}"
    if isinstance(source.get("random"), dict):
        return f"random draw {source['random'].get('draw')}"
    return fallback
