"""Generate docs/api.md from the docstrings of ``depgraph_prune``.

    python docs/gen_api.py            # rewrites docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is out of date

Every name of ``depgraph_prune.__all__`` gets a section (a name not placed in one of the sections
below lands in "Other public names"); the submodules that are not in ``__all__`` (``io``, ``optim``,
``viz``, ``surgery``, ``models``, ``zoo``, ``cli``) are listed at the end. Docstrings are written in
reStructuredText-flavoured prose; this script turns the common constructs into Markdown (inline
literals, roles, ``::`` literal blocks and doctests become fenced ``py`` / ``pycon`` blocks, which the
documentation tests do not run, and Google-style ``Args:`` sections become lists).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import depgraph_prune as dp  # noqa: E402

SECTIONS = [
    ("Pruning in one call", ["prune", "PruneResult", "build_graph"]),
    ("The dependency graph", ["DependencyGraph", "Group", "GroupMember"]),
    ("Measuring", ["count_ops", "OpCount", "measure_latency"]),
    ("Saving and loading", ["save", "load", "save_state", "load_state", "rebuild_optimizer"]),
    ("Regularized pruning", ["RegularizedPruner", "GReg1", "GReg2", "TPP", "GrowingReg", "OneShot", "OrthP"]),
    ("Unstructured pruning", ["sparsify", "Sparsity", "LayerSparsity", "keep_masks", "apply_masks", "remove_masks",
                              "masks", "sparsity_report"]),
    ("Analysis", ["mean_jsv", "filter_norm_separation"]),
    ("Extending: coupling rules", ["register_rule", "unregister_rule"]),
    ("Verification", ["Verification"]),
    ("Errors", ["PruningError", "TraceError", "SurgeryError", "VerificationError"]),
    ("Submodules", ["importance", "specs", "plan", "analysis", "regularize", "rules", "io", "optim", "viz",
                     "unstructured", "progress", "verify"]),
]
#: instance attributes that docstrings do not list
ATTRIBUTES = {
    "DependencyGraph": [("model", "the model (pruned in place by `prune`)"),
                        ("example_inputs", "the inputs it was traced with"),
                        ("groups", "every group, in order of first appearance (`group.index` is the position)"),
                        ("notes", "remarks of the builder (unused parameters, training-only branches)")],
    "Group": [("index", "position in `graph.groups`"),
              ("members", "the `GroupMember`s: parameter / buffer / width dimensions the channels slice"),
              ("size", "number of prunable channels (numbered `0 .. size-1`)"),
              ("n_frozen", "number of frozen channels"),
              ("frozen_reasons", "`Counter` of reason -> frozen channels"),
              ("str(group)", "a table of the members; `repr(group)` one line")],
    "PruneResult": [("str(result)", "the before/after table"),
                    ("widths", "`(first member, width before, width after)` per pruned group"),
                    ("frozen", "`(first member, channels, reason)` per frozen set of channels"),
                    ("records", "the surgery records (kept positions per `name:dim`, width attributes set)"),
                    ("notes", "remarks of the graph builder")],
}
#: modules without ``__all__`` whose public part is smaller than what they define
ONLY = {"depgraph_prune.surgery": ["history"]}
EXTRA_MODULES = ["io", "optim", "viz", "surgery", "models", "zoo", "cli"]

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`~?([^`]+)`")
_GOOGLE = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Attributes|Note|Notes|Example|Examples):\s*$")


def _inline(text: str) -> str:
    text = _ROLE.sub(lambda m: f"`{m.group(1).split('.')[-1] if '~' in m.group(0) else m.group(1)}`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)


def _inline_outside_fences(text: str) -> str:
    parts = re.split(r"(^```[a-z]*\n.*?^```$)", text, flags=re.S | re.M)
    return "".join(p if p.startswith("```") else _inline(p) for p in parts)


def _fence(lines: list[str], lang: str) -> list[str]:
    body = textwrap.dedent("\n".join(lines)).strip("\n").splitlines()
    return [f"```{lang}", *body, "```", ""]


def render_doc(doc: str | None) -> str:
    """A docstring as Markdown."""
    if not doc:
        return ""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i, literal_next = 0, False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += _fence(block, "pycon")
            continue
        if literal_next and stripped and indent > 0:
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent):
                block.append(lines[i])
                i += 1
            literal_next = False
            if any(b.strip().startswith(">>>") for b in block):
                out += _fence(block, "pycon")
            else:
                out += _fence(block, "py")
            continue
        m = _GOOGLE.match(stripped)
        if m and indent == 0:
            name = m.group(1)
            out += [f"**{name}:**", ""]
            i += 1
            items: list[list[str]] = []
            base = None
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > 0):
                ln = lines[i]
                if not ln.strip():
                    i += 1
                    continue
                ind = len(ln) - len(ln.lstrip())
                if ln.strip().startswith(">>>"):
                    break
                if base is None:
                    base = ind
                if ind == base:
                    items.append([ln.strip()])
                else:
                    items[-1].append(ln.strip())
                i += 1
            for item in items:
                head, sep, rest = item[0].partition(": ")
                text = " ".join([rest] + item[1:]) if sep else " ".join(item)
                out.append(f"- `{head}`: {_inline(text)}" if sep and " " not in head.split("(")[0].strip()
                           else f"- {_inline(text)}")
            out.append("")
            if i < len(lines) and lines[i].strip().startswith(">>>"):
                block = []
                while i < len(lines) and lines[i].strip():
                    block.append(lines[i])
                    i += 1
                out += _fence(block, "pycon")
            continue
        if stripped.endswith("::"):
            literal_next = True
            text = stripped[:-2].rstrip()
            line = line[: len(line) - len(stripped)] + (text + ":" if text else "")
            if not text:
                i += 1
                continue
        elif stripped:
            literal_next = False if indent == 0 else literal_next
        if indent >= 4 and stripped and not literal_next and (not out or not out[-1].strip()):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= 4):
                block.append(lines[i])
                i += 1
            out += _fence(block, "text")
            continue
        out.append(line)
        i += 1
    return _inline_outside_fences("\n".join(out).rstrip() + "\n")


def _annotation(a) -> str:
    if isinstance(a, str):
        return a[1:-1] if len(a) > 1 and a[0] == a[-1] and a[0] in "'\"" else a
    return inspect.formatannotation(a)


def _param(p: inspect.Parameter) -> str:
    text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
    if p.annotation is not p.empty:
        text += f": {_annotation(p.annotation)}"
    if p.default is not p.empty:
        default = "<factory>" if "_HAS_DEFAULT_FACTORY" in repr(p.default) else repr(p.default)
        text += f" = {default}" if p.annotation is not p.empty else f"={default}"
    return text


def _params(sig: inspect.Signature, drop_self: bool = False) -> list[str]:
    parts, star = [], False
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name == "self":
        params = params[1:]
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
        if p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL):
            star = True
        parts.append(_param(p))
    return parts


def _signature(name: str, obj, one_line: bool = False) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    parts = _params(sig)
    ret = "" if sig.return_annotation is sig.empty or inspect.isclass(obj) else f" -> {_annotation(sig.return_annotation)}"
    text = f"{name}({', '.join(parts)}){ret}"
    if len(text) <= 100 or one_line:
        return text
    return f"{name}(\n" + "".join(f"    {p},\n" for p in parts) + f"){ret}"


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    para = inspect.cleandoc(doc).split("\n\n")[0]
    return _inline(" ".join(para.split())).replace("::", ":")


_METHOD_HOOKS = {"setup", "update", "on_step", "penalty", "after_prune", "slice_filter"}


def _members(cls) -> list[tuple[str, object]]:
    """Public methods and properties defined by ``cls`` or a depgraph_prune base class (the
    regularization methods' hooks, called by the pruner, are left out)."""
    from depgraph_prune.regularize import Method
    out, seen = [], set(_METHOD_HOOKS) if issubclass(cls, Method) else set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("depgraph_prune"):
            continue
        for name, obj in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            if isinstance(obj, (property, staticmethod, classmethod)) or inspect.isfunction(obj):
                seen.add(name)
                out.append((name, obj))
    return out


def document_object(qual: str, obj, level: int = 3) -> list[str]:
    h = "#" * level
    out = [f"{h} `{qual}`", ""]
    if inspect.isclass(obj):
        sig = _signature(qual, obj)
        if sig and not issubclass(obj, BaseException):
            out += ["```py", f"class {sig}", "```", ""]
        out.append(render_doc(obj.__doc__))
        if obj.__name__ in ATTRIBUTES:
            out += ["Attributes:", ""] + [f"- `{a}`: {d}" for a, d in ATTRIBUTES[obj.__name__]] + [""]
        if dataclasses.is_dataclass(obj) and obj.__name__ not in ATTRIBUTES:
            out += ["Fields:", ""]
            for f in dataclasses.fields(obj):
                out.append(f"- `{f.name}`: `{f.type}`")
            out.append("")
        members = _members(obj) if not issubclass(obj, BaseException) else []
        if members:
            out += ["Members:", ""]
            for name, member in members:
                if isinstance(member, property):
                    doc = _first_paragraph(member.fget.__doc__ if member.fget else None)
                    out.append(f"- `{name}` (property){': ' + doc if doc else ''}")
                else:
                    fn = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                    try:
                        fsig = inspect.signature(fn)
                        ret = ("" if fsig.return_annotation is fsig.empty
                               else f" -> {_annotation(fsig.return_annotation)}")
                        sig = f"({', '.join(_params(fsig, drop_self=True))}){ret}"
                    except (TypeError, ValueError):
                        sig = "(...)"
                    doc = _first_paragraph(fn.__doc__)
                    out.append(f"- `{name}{sig}`{': ' + doc if doc else ''}")
            out.append("")
    elif inspect.ismodule(obj):
        out.append(render_doc(obj.__doc__))
        names = ONLY.get(obj.__name__) or getattr(obj, "__all__", None) or [n for n, v in vars(obj).items()
                                                  if not n.startswith("_") and getattr(v, "__module__", "") == obj.__name__
                                                  and (inspect.isfunction(v) or inspect.isclass(v))]
        rows = []
        for n in names:
            v = getattr(obj, n, None)
            if v is None:
                continue
            if inspect.isfunction(v) or inspect.isclass(v):
                sig = (_signature(n, v, one_line=True) if inspect.isfunction(v) else "") or n
                rows.append(f"- `{sig}`: {_first_paragraph(v.__doc__)}" if v.__doc__ else f"- `{sig}`")
            elif inspect.ismodule(v):
                rows.append(f"- `{n}` (module): {_first_paragraph(v.__doc__)}")
            else:
                rows.append(f"- `{n}`: `{type(v).__name__}`")
        if rows:
            out += [f"Contents of `{obj.__name__}`:", "", *rows, ""]
    else:
        sig = _signature(qual, obj)
        if sig:
            out += ["```py", sig, "```", ""]
        out.append(render_doc(obj.__doc__))
    return out


def generate() -> str:
    public = list(dp.__all__)
    placed = set()
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand. `dp` is "
             "`import depgraph_prune as dp`. Every name of `depgraph_prune.__all__` is here:", "",
             ", ".join(f"`{n}`" for n in public) + ".", ""]
    for title, names in SECTIONS:
        present = [n for n in names if n in public and n not in placed]
        if not present:
            continue
        lines += [f"## {title}", ""]
        for n in present:
            placed.add(n)
            lines += document_object(f"dp.{n}", getattr(dp, n))
    rest = [n for n in public if n not in placed]
    if rest:
        lines += ["## Other public names", ""]
        for n in rest:
            lines += document_object(f"dp.{n}", getattr(dp, n))
    extra = []
    for mod in EXTRA_MODULES:
        if mod in placed:
            continue
        try:
            module = importlib.import_module(f"depgraph_prune.{mod}")
        except ImportError:
            continue
        extra += document_object(f"depgraph_prune.{mod}", module)
    if extra:
        lines += ["## Other modules", "", "Not in `__all__`; import them as `from depgraph_prune import <module>`.", ""]
        lines += extra
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip() + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = os.path.join(HERE, "api.md")
    text = generate()
    if "--check" in argv:
        with open(path, encoding="utf-8") as f:
            current = f.read()
        if current != text:
            print("docs/api.md is out of date: python docs/gen_api.py")
            return 1
        return 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {path} ({len(text.splitlines())} lines, {len(dp.__all__)} public names)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
