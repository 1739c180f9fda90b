"""Pictures: per-layer widths before and after pruning, the dependency graph, one group; DOT text.

matplotlib is optional (``pip install 'depgraph-prune[plot]'``): it is imported inside the
functions that draw, never when this module is imported. Figures are made with
``matplotlib.figure.Figure`` directly (no ``pyplot``, no GUI backend, no global state), so drawing
works on headless machines and in threads. Each drawing function returns the ``Figure``; with a
``path`` it is also saved there (PNG, SVG, PDF: by the file extension).

    >>> import torch, torchvision, depgraph_prune as dp           # doctest: +SKIP
    >>> from depgraph_prune import viz
    >>> model = torchvision.models.resnet18()
    >>> x = torch.randn(1, 3, 64, 64)
    >>> graph = dp.build_graph(model, x)
    >>> viz.draw_group(graph, graph.group_of("layer1.0.conv1"), "group.png")
    >>> viz.draw_graph(graph, "graph.png")
    >>> viz.plot_widths(dp.prune(model, x, ratio=0.5), "widths.png")
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from torch import nn

__all__ = ["plot_widths", "widths_of", "layer_widths", "draw_graph", "draw_group", "member_role", "to_dot",
           "write_dot", "ROLE_COLORS"]

#: colour of each member role in the group pictures (also used in the legend)
ROLE_COLORS = {
    "produces": "#1f77b4",   # a conv / linear weight's output channels (and its bias)
    "consumes": "#ff7f0e",   # a conv / linear weight's input channels
    "norm": "#2ca02c",       # norm scale / shift
    "buffer": "#9467bd",     # running statistics and other buffers
    "width": "#8c564b",      # a width attribute (num_features, hidden_dim, ...)
    "other": "#7f7f7f",      # any other per-channel parameter (class token, layer scale, ...)
}
_GROUP_OK, _GROUP_FROZEN, _GROUP_PARTLY = "#d9f2d9", "#f4cccc", "#fff2cc"

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_MHA_IN = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _mpl():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("depgraph_prune.viz needs matplotlib: pip install 'depgraph-prune[plot]' "
                          "(or pip install matplotlib)") from exc
    return Figure


def _save(fig, path):
    if path is not None:
        fig.savefig(os.fspath(path), dpi=fig.dpi, bbox_inches="tight")
    return fig


# ============================================================================ widths
def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear / norm / attention layer: ``{module name: width}``."""
    out = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, _CONVT) and w is not None:
            out[name] = int(w.shape[1] * m.groups)
        elif isinstance(m, (*_CONV, nn.Linear)) and w is not None:
            out[name] = int(w.shape[0])
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            out[name] = int(m.num_features)
        elif isinstance(m, nn.MultiheadAttention):
            out[name] = int(m.embed_dim)
    return out


def widths_of(result: Any = None, after: nn.Module | None = None) -> list[tuple[str, int, int]]:
    """``(name, before, after)`` rows from a :class:`~depgraph_prune.PruneResult` (its ``widths``:
    one row per pruned group, named by the group's first member), from a list of such rows, or from
    two models (``widths_of(model_before, model_after)``: every conv / linear layer whose output
    width differs, by module name)."""
    if after is not None:
        if not isinstance(result, nn.Module) or not isinstance(after, nn.Module):
            raise TypeError("widths_of(before, after): both must be nn.Module instances")
        a, b = layer_widths(result), layer_widths(after)
        rows = [(n, a[n], b[n]) for n in a if n in b and a[n] != b[n]
                and not isinstance(result.get_submodule(n), (nn.modules.batchnorm._NormBase,))]
        return rows
    if hasattr(result, "widths"):
        return [(str(n), int(w0), int(w1)) for n, w0, w1 in result.widths]
    if isinstance(result, (list, tuple)):
        return [(str(n), int(w0), int(w1)) for n, w0, w1 in result]
    raise TypeError(f"plot_widths / widths_of: expected a PruneResult, a list of (name, before, after) "
                    f"or two models, got {type(result).__name__}")


def _short(name: str) -> str:
    for suffix in (".weight", ".bias", ".in_proj_weight"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def plot_widths(result: Any, path=None, *, after: nn.Module | None = None, title: str | None = None,
                max_bars: int = 200):
    """Bar chart of each pruned group's width before (light) and after (dark) pruning.

    ``result``: a :class:`~depgraph_prune.PruneResult` (``result.widths``), a list of
    ``(name, before, after)``, or the model before pruning with ``after=`` the pruned model (keep
    a ``copy.deepcopy`` of it before calling ``dp.prune``). Saved to ``path`` when given; returns
    the matplotlib ``Figure``. At most ``max_bars`` groups are drawn (the first ones)."""
    Figure = _mpl()
    rows = widths_of(result, after)
    total = len(rows)
    rows = rows[:max_bars]
    n = max(len(rows), 1)
    fig = Figure(figsize=(min(max(6.0, 0.28 * n + 2.0), 40.0), 4.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(rows)))
    before = [r[1] for r in rows]
    kept = [r[2] for r in rows]
    ax.bar(xs, before, width=0.8, color="#c6dbef", edgecolor="#6baed6", linewidth=0.5, label="before")
    ax.bar(xs, kept, width=0.55, color="#08519c", label="after")
    ax.set_xticks(xs)
    ax.set_xticklabels([_short(r[0]) for r in rows], rotation=90, fontsize=7 if n > 30 else 8)
    ax.set_xlim(-0.7, max(len(rows) - 0.3, 0.7))
    ax.set_ylabel("channels")
    if title is None:
        b, a = sum(before), sum(kept)
        title = (f"{total} pruned groups: {b} → {a} channels ({a / b:.0%} kept)" if b
                 else "no group was pruned")
        if total > len(rows):
            title += f"; first {len(rows)} shown"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if not rows:
        ax.text(0.5, 0.5, "nothing pruned", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


# ============================================================================ group roles
def member_role(model: nn.Module, member) -> str:
    """How a group member relates to the group's channels: ``"produces"`` (a conv / linear
    weight's output channels, or its bias), ``"consumes"`` (a conv / linear weight's input
    channels), ``"norm"``, ``"buffer"``, ``"width"`` or ``"other"``."""
    if member.kind == "width":
        return "width"
    if member.kind == "buffer":
        return "buffer"
    owner, _, attr = member.name.rpartition(".")
    try:
        mod = model.get_submodule(owner) if owner else model
    except AttributeError:
        return "other"
    dim = member.dim
    if isinstance(mod, _CONVT):
        if attr == "weight":
            return "produces" if dim == 1 else "consumes"
        if attr == "bias":
            return "produces"
    if isinstance(mod, (*_CONV, nn.Linear)):
        if attr == "weight":
            return "produces" if dim == 0 else "consumes"
        if attr == "bias":
            return "produces"
    if isinstance(mod, nn.MultiheadAttention):
        if attr in _MHA_IN:
            return "produces" if dim == 0 else "consumes"
        if attr == "in_proj_bias":
            return "produces"
        if attr == "out_proj.weight":
            return "consumes"
    if isinstance(mod, _NORM):
        return "norm"
    if isinstance(mod, nn.Embedding) and attr == "weight":
        return "produces"
    return "other"


def _group_color(group) -> str:
    if not group.prunable:
        return _GROUP_FROZEN
    return _GROUP_PARTLY if group.n_frozen else _GROUP_OK


def _group_of(graph, group):
    if isinstance(group, int):
        return graph.groups[group]
    if isinstance(group, str):
        return graph.group_of(group)
    return group


def _wrap(text: str, width: int = 70) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width)) if text else ""


def _legend(ax, roles: Iterable[str], extra=()):
    from matplotlib.patches import Patch
    handles = [Patch(color=ROLE_COLORS[r], label=r) for r in ROLE_COLORS if r in set(roles)]
    handles += [Patch(facecolor=c, edgecolor="#555555", label=lab) for c, lab in extra]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _collapse(model, members):
    """Members merged per (owning module, role), in first-appearance order:
    ``[(role, label, [members])]`` with labels like ``bn1: weight, bias, running_mean [0] ×64``."""
    order, merged = [], {}
    for m in members:
        role = member_role(model, m)
        owner, _, attr = m.name.rpartition(".")
        key = (owner, role, m.dim, m.size)
        if key not in merged:
            merged[key] = []
            order.append(key)
        merged[key].append((attr or m.name, m))
    out = []
    for key in order:
        owner, role, dim, size = key
        attrs = ", ".join(a for a, _ in merged[key])
        label = f"{owner + ': ' if owner else ''}{attrs} [{dim}] ×{size}"
        out.append((role, label, [m for _, m in merged[key]]))
    return out


def draw_group(graph, group, path=None, *, title: str | None = None):
    """Picture of one group (a :class:`~depgraph_prune.Group`, its index, or a module name as for
    ``graph.group_of``): the group node in the middle; on the left what makes its channels (the
    producing conv / linear weights and biases, then the norms, buffers and width attributes that
    follow them), on the right the layers that consume them (their input-channel slices). Members of
    one module with the same role are merged into one node labelled
    ``module: attr, attr [dim] ×positions`` (a flatten → linear consumer has H·W positions per
    channel). Saved to ``path`` when given; returns the ``Figure``."""
    import networkx as nx
    Figure = _mpl()
    group = _group_of(graph, group)
    items = _collapse(graph.model, group.members)
    left = [it for it in items if it[0] == "produces"] + [it for it in items if it[0] not in ("produces", "consumes")]
    right = [it for it in items if it[0] == "consumes"]
    g = nx.Graph()
    center = ("group", group.index)
    g.add_node(center)
    pos = {center: (0.0, 0.0)}
    labels, colors = {}, {}
    for side, x, col in ((-1.0, -1.0, left), (1.0, 1.0, right)):
        for i, (role, label, _ms) in enumerate(col):
            node = ("member", side, i)
            g.add_edge(center, node)
            pos[node] = (x, (len(col) - 1) / 2.0 - i)
            labels[node] = label
            colors[node] = ROLE_COLORS[role]
    rows = max(len(left), len(right), 1)
    longest = max([len(lab) for lab in labels.values()] or [10])
    fig = Figure(figsize=(min(max(8.0, 0.13 * longest * 2 + 3.0), 30.0), min(max(3.0, 0.32 * rows + 1.6), 40.0)),
                 dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    nx.draw_networkx_edges(g, pos, ax=ax, edge_color="#bbbbbb", width=0.8)
    members = [n for n in g.nodes if n != center]
    nx.draw_networkx_nodes(g, pos, nodelist=members, ax=ax, node_size=70, node_color=[colors[n] for n in members])
    nx.draw_networkx_nodes(g, pos, nodelist=[center], ax=ax, node_size=1500, node_shape="s",
                           node_color=_group_color(group), edgecolors="#555555")
    ax.text(0, 0, f"group {group.index}\n{group.size} ch", ha="center", va="center", fontsize=8)
    for node in members:
        x, y = pos[node]
        ax.text(x + (-0.05 if x < 0 else 0.05), y, labels[node], ha="right" if x < 0 else "left", va="center",
                fontsize=7)
    ax.set_xlim(-1.0 - 0.021 * longest - 0.1, 1.0 + 0.021 * longest + 0.1)
    ax.set_ylim(-rows / 2.0 - 0.3, rows / 2.0 + 0.3)
    if title is None:
        title = f"Group {group.index}: {group.size} prunable channels"
        if group.n_frozen:
            title += f", {group.n_frozen} frozen"
        title += f", {len(group.members)} members (left: make the channels; right: read them)"
        if group.reason:
            title += "\n" + _wrap(("frozen: " if not group.prunable or group.n_frozen else "") + group.reason, 100)
    ax.set_title(title, fontsize=9)
    _legend(ax, [it[0] for it in items])
    return _save(fig, path)


def draw_graph(graph, path=None, *, groups: Sequence | None = None, max_groups: int = 60,
               title: str | None = None):
    """Picture of the dependency graph (``graph.to_networkx()``): one column per group, the group
    node (green: prunable, yellow: partly frozen, red: frozen) on top and its member parameter
    dims below it, coloured by role (see :func:`member_role`). ``groups`` selects some groups
    (objects or indices); at most ``max_groups`` are drawn. Saved to ``path`` when given; returns
    the ``Figure``."""
    import networkx as nx
    Figure = _mpl()
    nxg = graph.to_networkx()
    chosen = list(graph.groups) if groups is None else [_group_of(graph, g) for g in groups]
    total = len(chosen)
    chosen = chosen[:max_groups]
    pos, roles = {}, {}
    deepest = 1
    for col, grp in enumerate(chosen):
        gnode = ("group", grp.index)
        pos[gnode] = (col, 0.0)
        for i, m in enumerate(grp.members):
            node = (m.name, m.dim)
            pos[node] = (col, -1.0 - i)
            roles[node] = member_role(graph.model, m)
        deepest = max(deepest, len(grp.members))
    sub = nxg.subgraph(pos.keys())
    n = max(len(chosen), 1)
    fig = Figure(figsize=(min(max(6.0, 0.42 * n + 2.5), 40.0), min(max(3.5, 0.2 * deepest + 2.0), 30.0)), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    nx.draw_networkx_edges(sub, pos, ax=ax, edge_color="#cccccc", width=0.5)
    members = [v for v in sub.nodes if v[0] != "group"]
    gnodes = [v for v in sub.nodes if v[0] == "group"]
    nx.draw_networkx_nodes(sub, pos, nodelist=members, ax=ax, node_size=12,
                           node_color=[ROLE_COLORS[roles[v]] for v in members])
    by_index = {g.index: g for g in chosen}
    nx.draw_networkx_nodes(sub, pos, nodelist=gnodes, ax=ax, node_size=110, node_shape="s",
                           node_color=[_group_color(by_index[v[1]]) for v in gnodes], edgecolors="#555555",
                           linewidths=0.6)
    for grp in chosen:
        x, _ = pos[("group", grp.index)]
        ax.text(x, 0.45, f"{grp.index}", ha="center", va="bottom", fontsize=6)
        ax.text(x, -1.0 - len(grp.members) + 0.2, f"{grp.size}", ha="center", va="top", fontsize=5, color="#555555")
    if title is None:
        pr = sum(g.prunable for g in graph.groups)
        title = (f"{type(graph.model).__name__}: {len(graph.groups)} groups, {pr} prunable "
                 f"(top: group index; column: its members; bottom: prunable channels)")
        if total > len(chosen):
            title += f"; first {len(chosen)} of {total} shown"
    ax.set_title(title, fontsize=9)
    _legend(ax, roles.values(), extra=[(_GROUP_OK, "group: prunable"), (_GROUP_PARTLY, "group: partly frozen"),
                                       (_GROUP_FROZEN, "group: frozen")])
    return _save(fig, path)


# ============================================================================ DOT
def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph, group=None) -> str:
    """The dependency graph (or one group) as Graphviz DOT text: group nodes (boxes, filled green /
    yellow / red as in :func:`draw_graph`) linked to their member ``name [dim]`` nodes (ellipses,
    coloured by role). Render it with any Graphviz tool (``dot -Tpng graph.dot -o graph.png``); no
    Graphviz is needed to write it."""
    chosen = list(graph.groups) if group is None else [_group_of(graph, group)]
    lines = ["graph depgraph {", "  graph [rankdir=LR, fontsize=10];",
             '  node [fontsize=9, fontname="Helvetica"];']
    for grp in chosen:
        gid = f"group{grp.index}"
        label = f"group {grp.index}\\n{grp.size} prunable"
        if grp.n_frozen:
            label += f", {grp.n_frozen} frozen"
        tooltip = grp.reason or ""
        lines.append(f'  {gid} [shape=box, style=filled, fillcolor="{_group_color(grp)}", '
                     f'label="{label}", tooltip={_q(tooltip)}];')
        for m in grp.members:
            mid = _q(f"{m.name}:{m.dim}")
            role = member_role(graph.model, m)
            lines.append(f"  {mid} [shape=ellipse, style=filled, fillcolor=\"{ROLE_COLORS[role]}\", "
                         f"fontcolor=white, label={_q(f'{m.name} [{m.dim}] x{m.size}')}, tooltip={_q(role)}];")
            lines.append(f"  {gid} -- {mid};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(graph, path, group=None) -> str:
    """Write :func:`to_dot` to ``path``; returns the text."""
    text = to_dot(graph, group)
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write(text)
    return text
