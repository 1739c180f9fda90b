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

__all__ = ["plot_widths", "widths_of", "layer_widths", "draw_graph", "draw_group", "member_role", "module_flow",
           "to_dot", "write_dot", "ROLE_COLORS"]

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
        # the padding keeps rotated tick labels and legends off the image's edge
        fig.savefig(os.fspath(path), dpi=fig.dpi, bbox_inches="tight", pad_inches=0.25)
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
    ax.set_xlabel("pruned group (its first pruned member)", fontsize=8, labelpad=8)
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


def _owner(member) -> str:
    name = member.name.split("[", 1)[0]
    return name.rpartition(".")[0]


def _run_order(model: nn.Module, example_inputs) -> dict[str, int]:
    """Module name -> index of its first call in one forward pass (on a weightless meta copy, so
    nothing is computed and the user's model is not touched); empty when that run fails."""
    import torch
    from ._fast_meta import to_meta
    from .trace import normalize_inputs, structural_copy
    order: dict[str, int] = {}
    try:
        copy_ = structural_copy(model)
        args, kwargs = normalize_inputs(to_meta(example_inputs))
        hooks = []
        for name, mod in copy_.named_modules():
            def pre(_m, _a, name=name):
                order.setdefault(name, len(order))
            hooks.append(mod.register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                copy_.eval()(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
    except Exception:  # a picture only: fall back to the definition order
        return {}
    return order


def module_flow(graph) -> list[dict]:
    """The modules that own group members, in the order the forward pass first calls them (the
    data flow; modules used only through their parent, such as ``nn.MultiheadAttention.out_proj``,
    sit with the parent; definition order where that run is not possible). Each entry:
    ``{"name", "type", "out": group of its output channels or None, "in": group of its input
    channels or None, "width": its output width or None}``; the model's own parameters (a class
    token) are listed under the name ``""``."""
    model = graph.model
    out_group: dict[str, object] = {}
    in_group: dict[str, object] = {}
    for grp in graph.groups:
        for m in grp.members:
            owner = _owner(m)
            role = member_role(model, m)
            if role == "consumes":
                in_group.setdefault(owner, grp)
            else:
                out_group.setdefault(owner, grp)
    owners = list(dict.fromkeys(list(out_group) + list(in_group)))
    defined = {n: i for i, (n, _) in enumerate(model.named_modules())}
    run = _run_order(model, graph.example_inputs)

    def key(name):
        probe = name
        while probe and probe not in run:
            probe = probe.rpartition(".")[0]
        first = run.get(probe, -1 if not name else len(run))
        return (first, defined.get(name, len(defined)))

    widths = layer_widths(model)
    rows = []
    for name in sorted(owners, key=key):
        try:
            mod = model.get_submodule(name) if name else model
        except AttributeError:
            continue
        rows.append({"name": name, "type": type(mod).__name__, "out": out_group.get(name),
                     "in": in_group.get(name), "width": widths.get(name)})
    return rows


_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
            "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]
_FROZEN_FILL = "#d9d9d9"


def draw_graph(graph, path=None, *, groups: Sequence | None = None, max_groups: int = 60,
               max_modules: int = 160, columns: int | None = None, title: str | None = None):
    """Picture of the whole dependency graph: every module that owns a group member is a box,
    labelled with its name, type and output width, in data-flow order (the order the forward pass
    calls them: left to right, then the next row; see :func:`module_flow`). A box is filled with
    the colour of the group that holds its *output* channels, and its left strip shows the group
    of its *input* channels, so a box whose strip matches an earlier box's fill reads that box's
    channels (a residual group colours every block output the same). Frozen groups are grey and
    hatched (``xx``), partly frozen ones hatched (``//``). The legend names each group: index,
    prunable channels, members, and why it is frozen.

    ``groups`` (objects or indices) limits the picture to the modules of those groups; at most
    ``max_groups`` groups get their own colour (others are drawn white) and ``max_modules`` boxes
    are drawn. Saved to ``path`` when given; returns the ``Figure``. The picture of one group is
    :func:`draw_group`."""
    Figure = _mpl()
    from matplotlib.patches import Patch, Rectangle
    rows = module_flow(graph)
    if groups is not None:
        keep = {_group_of(graph, g).index for g in groups}
        rows = [r for r in rows if (r["out"] is not None and r["out"].index in keep)
                or (r["in"] is not None and r["in"].index in keep)]
    total = len(rows)
    rows = rows[:max_modules]
    seen = []
    for r in rows:
        for g in (r["out"], r["in"]):
            if g is not None and g not in seen:
                seen.append(g)
    colored = [g for g in seen if g.prunable][:max_groups]
    color = {g.index: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(colored)}

    def fill(g):
        if g is None:
            return "#ffffff"
        if not g.prunable:
            return _FROZEN_FILL
        return color.get(g.index, "#ffffff")

    def hatch(g):
        if g is None:
            return None
        return "xx" if not g.prunable else ("//" if g.n_frozen else None)

    def cut(text: str, n: int = 30) -> str:  # keep the tail: the part that tells modules apart
        return text if len(text) <= n else "…" + text[-(n - 1):]

    labels = []
    for r in rows:
        what = cut(r["type"], 22) + (f" → {r['width']}" if r["width"] is not None else "")
        labels.append((cut(r["name"] or "(model)"), what))
    longest = max([max(len(a), len(b)) for a, b in labels] or [10])
    n = max(len(rows), 1)
    cols = columns or max(3, min(6, round((n * 1.2) ** 0.5)))
    nrows = -(-n // cols)
    box_w = max(1.3, 0.058 * longest + 0.3)  # inches: the label fits at 6.5 pt
    box_h, gap_x, gap_y = 0.5, 0.25, 0.22
    legend_w = 2.9
    fig_w = min(cols * (box_w + gap_x) + legend_w + 0.6, 60.0)
    fig_h = min(nrows * (box_h + gap_y) + 0.8, 80.0)
    fig = Figure(figsize=(fig_w, fig_h), dpi=110)
    ax = fig.add_axes([0.01, 0.01, (fig_w - legend_w) / fig_w - 0.01, 1 - 0.6 / fig_h])
    ax.set_axis_off()
    ax.set_xlim(0, cols * (box_w + gap_x))
    ax.set_ylim(-nrows * (box_h + gap_y), 0.05)
    strip = 0.16
    for i, (r, (top, bottom)) in enumerate(zip(rows, labels)):
        x = (i % cols) * (box_w + gap_x) + gap_x / 2
        y = -(i // cols + 1) * (box_h + gap_y) + gap_y / 2
        go, gi = r["out"], r["in"]
        ax.add_patch(Rectangle((x, y), box_w, box_h, facecolor=fill(go), edgecolor="#444444", linewidth=0.7,
                               hatch=hatch(go)))
        if gi is not None and gi is not go:
            ax.add_patch(Rectangle((x, y), strip, box_h, facecolor=fill(gi), edgecolor="#444444", linewidth=0.7,
                                   hatch=hatch(gi)))
        tx = x + (strip if gi is not None and gi is not go else 0) + 0.06
        ax.text(tx, y + box_h * 0.66, top, fontsize=6.5, va="center", ha="left",
                bbox=dict(boxstyle="square,pad=0.08", facecolor="white", edgecolor="none", alpha=0.75))
        ax.text(tx, y + box_h * 0.27, bottom, fontsize=6, va="center", ha="left", color="#222222",
                bbox=dict(boxstyle="square,pad=0.08", facecolor="white", edgecolor="none", alpha=0.75))
        if i + 1 < len(rows) and (i + 1) % cols:  # the next box in data-flow order
            ax.annotate("", xy=(x + box_w + gap_x * 0.9, y + box_h / 2), xytext=(x + box_w + gap_x * 0.1, y + box_h / 2),
                        arrowprops=dict(arrowstyle="->", color="#888888", lw=0.6))
    handles = []
    for g in seen:
        mods = len({_owner(m) for m in g.members})
        mods = f"{mods} module{'s' if mods != 1 else ''}"
        if not g.prunable:
            why = (g.reason or "frozen").split(" (")[0]
            lab = f"group {g.index}: frozen, {mods} ({_wrap(why, 34)})"
        else:
            lab = f"group {g.index}: {g.size} ch, {mods}" + (f", {g.n_frozen} ch frozen" if g.n_frozen else "")
        handles.append(Patch(facecolor=fill(g), edgecolor="#444444", hatch=hatch(g), label=lab))
    more = len(handles) - 40
    handles = handles[:40]
    if more > 0:
        handles.append(Patch(facecolor="white", edgecolor="white", label=f"... {more} more groups"))
    leg = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=((fig_w - legend_w) / fig_w, 1 - 0.55 / fig_h),
                     fontsize=6.5, frameon=False, title="fill: output channels' group\nleft strip: input channels' group",
                     title_fontsize=7)
    leg._legend_box.align = "left"
    if title is None:
        pr = sum(g.prunable for g in graph.groups)
        title = (f"{type(graph.model).__name__}: {len(graph.groups)} groups ({pr} prunable), {total} modules "
                 f"in data-flow order")
        if total > len(rows):
            title += f"; first {len(rows)} shown"
    fig.suptitle(title, fontsize=9, x=0.01, ha="left", y=1 - 0.25 / fig_h, va="top")
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
