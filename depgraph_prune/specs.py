"""Turn the ratio-spec formats of the published GReg / TPP code into ``{name or pattern: ratio}``.

Three formats are in use (see ``ALGORITHMS.md``, "Ratio-spec formats used by the published code"):

* **Stage lists** for ResNets, ``[r0, r1, ..., rk]``: ``r0`` for the stem conv, ``rS`` for every
  block of ``layerS``; inside a block every conv but the last one is pruned (BasicBlock: ``conv1``;
  Bottleneck: ``conv1`` and ``conv2``), never the ``downsample`` shortcut.  -> :func:`resnet_stages`
* **Layer ranges** for plain nets, ``"[0:0, 1-9:0.3, 10-15:0.5]"``: indices count the conv and linear
  layers in module order, ranges are inclusive, unlisted layers get 0.  -> :func:`layer_ranges`
* **Name patterns** (TPP), ``"*layer*.conv1:0.9,*layer4*conv[1-2]:0.14"``: :mod:`fnmatch` patterns on
  qualified module names, the last matching pattern wins.  -> :func:`name_patterns`

Every function returns a plain mapping from a module name (or fnmatch pattern) to a ratio in
``[0, 1)``.  Exact names are patterns without wildcards, so :func:`match_ratio` resolves either kind.
The number of channels a ratio removes is decided by the planner (``ceil(r * N)``, keeping at least
one channel), not here.
"""

from __future__ import annotations

import math
import re
from fnmatch import fnmatchcase
from numbers import Real
from typing import Iterable, Mapping, Sequence

import torch.nn as nn

__all__ = [
    "resnet_stages",
    "layer_ranges",
    "name_patterns",
    "match_ratio",
    "validate_ratios",
    "prunable_layer_names",
]

# Layer types counted by ``layer_ranges`` (conv of any dimensionality, transposed convs, linear).
_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d, nn.Linear)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Sub-module names that mark a residual shortcut branch inside a block (never pruned by stage specs).
_SHORTCUT_NAMES = ("downsample", "shortcut")
_STAGE_RE = re.compile(r"^layer(\d+)$")


def _check_ratio(key, value) -> float:
    """Return ``value`` as a float after checking it lies in ``[0, 1)``; ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"ratio for {key!r} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"ratio for {key!r} must be in [0, 1), got {value!r}")
    return value


def validate_ratios(ratios: Mapping[str, float]) -> "dict[str, float]":
    """Check every ratio of a ``{name or pattern: ratio}`` mapping and return a float copy.

    Raises ``ValueError`` naming the first offending key (ratio outside ``[0, 1)``, not a number,
    or a key that is not a non-empty string).

    Example:
        >>> validate_ratios({"layer1.0.conv1": 0.5, "*conv2": 0})
        {'layer1.0.conv1': 0.5, '*conv2': 0.0}
        >>> validate_ratios({"fc": 1.0})
        Traceback (most recent call last):
        ...
        ValueError: ratio for 'fc' must be in [0, 1), got 1.0
    """
    out: "dict[str, float]" = {}
    for key, value in ratios.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"ratio keys must be non-empty strings, got {key!r}")
        out[key] = _check_ratio(key, value)
    return out


def prunable_layer_names(model: nn.Module, exclude: Iterable[str] = ()) -> list:
    """Names of the conv (any ``nn.Conv*d`` / ``nn.ConvTranspose*d``) and ``nn.Linear`` modules, in
    ``model.named_modules()`` order: the indexing used by :func:`layer_ranges`.

    ``exclude`` holds fnmatch patterns of names left out of the count.

    Example:
        >>> from depgraph_prune.models import digits_cnn
        >>> prunable_layer_names(digits_cnn())
        ['conv1', 'conv2', 'conv3', 'fc']
    """
    exclude = tuple(exclude)
    return [name for name, m in model.named_modules()
            if isinstance(m, _COUNTED) and not any(fnmatchcase(name, p) for p in exclude)]


# --------------------------------------------------------------------------------------- stages
def _is_shortcut(rel_name: str) -> bool:
    return any(part in _SHORTCUT_NAMES for part in rel_name.split("."))


def resnet_stages(model: nn.Module, stages: Sequence[float], skip: Iterable[str] = ()) -> "dict[str, float]":
    """Expand a GReg/TPP stage list ``[r0, r1, ..., rk]`` into ``{module name: ratio}``.

    * ``r0`` goes to the stem: every conv outside the ``layerS`` stages (``conv1`` on torchvision and
      CIFAR ResNets; the classifier is a Linear and is never included).
    * ``rS`` goes to every block ``layerS.B``; inside a block, the convs in module order except the
      *last* one are pruned (BasicBlock: ``conv1``; Bottleneck: ``conv1``, ``conv2``). Convs inside a
      ``downsample``/``shortcut`` branch are never included.
    * ``skip`` lists block names (``"layer2.0"``) or conv names left untouched; each must exist.

    The stage count ``k`` is the number of top-level children named ``layer1``..``layerk`` (4 for
    torchvision ResNets, 3 for the CIFAR ResNets). The TPP code appends one more entry for the
    classifier (``[0, .3, .3, .3, .14, 0]``); it is accepted when it is 0.

    Only nonzero ratios are returned, in module order.

    Example:
        >>> import torchvision
        >>> ratios = resnet_stages(torchvision.models.resnet50(), [0, .3, .3, .3, .14])
        >>> len(ratios), ratios["layer1.0.conv1"], ratios["layer4.2.conv2"]
        (32, 0.3, 0.14)
        >>> from depgraph_prune.models import cifar_resnet
        >>> list(resnet_stages(cifar_resnet(20), [0, .5, 0, 0], skip=["layer1.1"]))
        ['layer1.0.conv1', 'layer1.2.conv1']
    """
    stage_mods = {}
    for name, child in model.named_children():
        m = _STAGE_RE.match(name)
        if m:
            stage_mods[int(m.group(1))] = (name, child)
    if not stage_mods:
        raise ValueError(f"{type(model).__name__} has no top-level 'layer1'.. stages; resnet_stages "
                         "needs a ResNet-style model (use layer_ranges or name_patterns otherwise)")
    k = len(stage_mods)
    if sorted(stage_mods) != list(range(1, k + 1)):
        raise ValueError(f"ResNet stages must be named layer1..layer{k}, found {[v[0] for v in stage_mods.values()]}")

    stages = list(stages)
    if len(stages) == k + 2:  # TPP's trailing classifier entry
        last = _check_ratio("classifier (last stage-list entry)", stages[-1])
        if last != 0.0:
            raise ValueError("the last stage-list entry (classifier) must be 0: the output classes "
                             f"cannot be pruned, got {stages[-1]!r}")
        stages = stages[:-1]
    if len(stages) != k + 1:
        raise ValueError(f"stage list needs {k + 1} entries for {type(model).__name__} "
                         f"(stem + {k} stages), got {len(stages)}: {stages!r}")
    ratios = [_check_ratio("stem (stage 0)" if i == 0 else f"layer{i}", r) for i, r in enumerate(stages)]

    # Candidate (name, ratio) pairs in module order.
    candidates = []
    for name, m in model.named_modules():
        if not isinstance(m, _CONV):
            continue
        top = name.split(".")[0]
        if not _STAGE_RE.match(top):
            candidates.append((name, ratios[0], None))
    block_names = []
    for s, (sname, stage) in sorted(stage_mods.items()):
        for bname, block in stage.named_children():
            full_block = f"{sname}.{bname}"
            block_names.append(full_block)
            convs = [n for n, m in block.named_modules() if isinstance(m, _CONV) and not _is_shortcut(n)]
            for n in convs[:-1]:
                candidates.append((f"{full_block}.{n}", ratios[s], full_block))

    skip = [str(x) for x in skip]
    cand_names = {c[0] for c in candidates}
    for s in skip:
        if s not in block_names and s not in cand_names:
            raise ValueError(f"skip entry {s!r} is neither a block (e.g. {block_names[0]!r}) nor a prunable conv of "
                             f"{type(model).__name__}")
    skip_set = set(skip)

    out: "dict[str, float]" = {}
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    for name, r, block in sorted(candidates, key=lambda c: order[c[0]]):
        if r == 0.0 or name in skip_set or (block is not None and block in skip_set):
            continue
        out[name] = r
    return out


# --------------------------------------------------------------------------------------- ranges
_INDEX_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def _parse_ranges(spec: str):
    """Parse ``"[0:0, 1-9:0.3]"`` into a list of ``(begin, end, ratio, token)``."""
    if not isinstance(spec, str):
        raise ValueError(f"layer-range spec must be a string, got {type(spec).__name__}")
    body = spec.strip()
    if body.startswith("[") or body.endswith("]"):
        if not (body.startswith("[") and body.endswith("]")):
            raise ValueError(f"unbalanced brackets in layer-range spec {spec!r}")
        body = body[1:-1]
    entries = []
    tokens = body.split(",")
    for i, raw in enumerate(tokens):
        tok = raw.strip()
        if not tok:
            if i == len(tokens) - 1 and i > 0:  # tolerate one trailing comma
                continue
            if len(tokens) == 1:  # empty spec
                continue
            raise ValueError(f"empty entry in layer-range spec {spec!r}")
        if tok.count(":") != 1:
            raise ValueError(f"malformed layer-range token {tok!r} in {spec!r}: expected 'i:ratio' or 'a-b:ratio'")
        idx, val = tok.split(":")
        m = _INDEX_RE.match(idx)
        if not m:
            raise ValueError(f"malformed layer index {idx.strip()!r} in token {tok!r}: expected 'i' or 'a-b' "
                             "with non-negative integers")
        begin = int(m.group(1))
        end = int(m.group(2)) if m.group(2) is not None else begin
        if end < begin:
            raise ValueError(f"empty range {idx.strip()!r} in token {tok!r}: the end is before the beginning")
        try:
            ratio = float(val.strip())
        except ValueError:
            raise ValueError(f"malformed ratio {val.strip()!r} in token {tok!r}") from None
        entries.append((begin, end, _check_ratio(tok, ratio), tok))
    return entries


def layer_ranges(model: nn.Module, spec: str, exclude: Iterable[str] = ()) -> "dict[str, float]":
    """Expand a layer-range spec ``"[0:0, 1-9:0.3, 10-15:0.5]"`` into ``{module name: ratio}``.

    Indices count conv (any ``nn.Conv*d`` / ``nn.ConvTranspose*d``) and ``nn.Linear`` modules in
    ``model.named_modules()`` order, starting at 0; ``a-b`` ranges are inclusive; unlisted layers get
    0; when entries overlap the later one wins (as in the published parser). The brackets are
    optional. ``exclude`` takes fnmatch patterns of layers left out of the count (the GReg code does
    not count ResNet ``downsample`` convs: ``exclude=["*downsample*"]``).

    Only nonzero ratios are returned, in module order. ``ValueError`` names the malformed token,
    the offending ratio, or an index past the last layer.

    Example:
        >>> from depgraph_prune.models import digits_cnn
        >>> layer_ranges(digits_cnn(), "[0:0, 1-2:0.5]")
        {'conv2': 0.5, 'conv3': 0.5}
        >>> layer_ranges(digits_cnn(), "[0-4:0.5]")
        Traceback (most recent call last):
        ...
        ValueError: layer index 4 in token '0-4:0.5' is out of range: DigitsCNN has 4 conv/linear layers (indices 0..3)
    """
    names = prunable_layer_names(model, exclude)
    per_layer = [0.0] * len(names)
    for begin, end, ratio, tok in _parse_ranges(spec):
        if end >= len(names):
            raise ValueError(f"layer index {end} in token {tok!r} is out of range: {type(model).__name__} has "
                             f"{len(names)} conv/linear layers (indices 0..{len(names) - 1})")
        for i in range(begin, end + 1):
            per_layer[i] = ratio
    return dict((n, r) for n, r in zip(names, per_layer) if r != 0.0)


# ------------------------------------------------------------------------------------- patterns
def name_patterns(spec) -> "dict[str, float]":
    """Parse a TPP name-pattern spec into an ordered ``dict`` ``{fnmatch pattern: ratio}``.

    ``spec`` is a string ``"*layer*.conv1:0.9,*layer4*conv[1-2]:0.14"`` (entries separated by ``,``
    or ``;``, optional surrounding ``{}``, optionally quoted keys), or an existing mapping, which is
    validated and copied. The order is kept, because the *last* matching pattern wins
    (see :func:`match_ratio`). A pattern given twice keeps its first position and its last ratio.

    Example:
        >>> name_patterns("*layer*.conv1:0.9, *layer4*conv[1-2]:0.14")
        {'*layer*.conv1': 0.9, '*layer4*conv[1-2]': 0.14}
        >>> name_patterns("*conv1=0.5")
        Traceback (most recent call last):
        ...
        ValueError: malformed name-pattern token '*conv1=0.5' in '*conv1=0.5': expected 'pattern:ratio'
    """
    if isinstance(spec, Mapping):
        return validate_ratios(spec)
    if not isinstance(spec, str):
        raise ValueError(f"name-pattern spec must be a string or a mapping, got {type(spec).__name__}")
    body = spec.strip()
    if body.startswith("{") or body.endswith("}"):
        if not (body.startswith("{") and body.endswith("}")):
            raise ValueError(f"unbalanced braces in name-pattern spec {spec!r}")
        body = body[1:-1]
    sep = ";" if ";" in body else ","
    out: "dict[str, float]" = {}
    tokens = body.split(sep)
    for i, raw in enumerate(tokens):
        tok = raw.strip()
        if not tok:
            if (i == len(tokens) - 1 and i > 0) or len(tokens) == 1:
                continue
            raise ValueError(f"empty entry in name-pattern spec {spec!r}")
        if ":" not in tok:
            raise ValueError(f"malformed name-pattern token {tok!r} in {spec!r}: expected 'pattern:ratio'")
        pat, val = tok.rsplit(":", 1)
        pat = pat.strip()
        if len(pat) >= 2 and pat[0] == pat[-1] and pat[0] in "'\"":
            pat = pat[1:-1].strip()
        if not pat or ":" in pat:
            raise ValueError(f"malformed name-pattern token {tok!r} in {spec!r}: expected 'pattern:ratio'")
        if pat.count("[") != pat.count("]"):
            raise ValueError(f"unbalanced brackets in pattern {pat!r} of token {tok!r}")
        try:
            ratio = float(val.strip())
        except ValueError:
            raise ValueError(f"malformed ratio {val.strip()!r} in token {tok!r}") from None
        out[pat] = _check_ratio(pat, ratio)
    return out


def match_ratio(name: str, ratios: Mapping[str, float], default: float = 0.0) -> float:
    """The ratio of module ``name`` under ``ratios`` (fnmatch patterns, *last* match wins).

    Exact module names are patterns without wildcards. Matching is case-sensitive
    (:func:`fnmatch.fnmatchcase`). ``default`` is returned when nothing matches.

    Example:
        >>> spec = name_patterns("*layer*.conv1:0.9,*layer4*conv[1-2]:0.14")
        >>> match_ratio("layer4.0.conv1", spec), match_ratio("layer1.0.conv1", spec), match_ratio("fc", spec)
        (0.14, 0.9, 0.0)
    """
    result = default
    for pattern, ratio in ratios.items():
        if pattern == name or fnmatchcase(name, pattern):
            result = _check_ratio(pattern, ratio)
    return result
