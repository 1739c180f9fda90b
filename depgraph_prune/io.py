"""Save a pruned model and load it back into a freshly built, unpruned one.

A pruned model is its architecture (which the user's code builds) plus the pruning record
(:func:`depgraph_prune.surgery.history`: the kept positions of every sliced tensor and the width
attributes set, per surgery) plus its weights. ``save`` writes the record as JSON and the weights
as plain tensors into one file; ``load`` replays the record on a fresh model and loads the
weights::

    >>> import torch, torchvision, depgraph_prune as dp        # doctest: +SKIP
    >>> model = torchvision.models.resnet50()
    >>> dp.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5)
    >>> dp.save(model, "resnet50_pruned.dpz")
    >>> again = dp.load("resnet50_pruned.dpz", torchvision.models.resnet50())

File layout (format version 1): a safetensors file (``safetensors`` is a dependency of
depgraph_prune, the one container written). Files written by earlier versions as a ``torch.save``
zip archive of a dict of strings and plain tensors still load (read with
``torch.load(weights_only=True)``). Either way the file holds:

* ``header``: a JSON string ``{"format": "depgraph_prune", "version": 1, "kind": "model" | "state",
  ...}``; for a model also ``model`` (its class), ``arch`` (when given to ``save``: how to build
  the unpruned model, e.g. ``"resnet18"``), ``record`` (the pruning record), ``aliases`` (tied names → the name
  stored) and ``buffers`` (names of the stored tensors that are buffers, non-persistent ones
  included);
* the tensors, CPU, contiguous, under their qualified names, each stored once;
* ``checksum``: SHA-256 over the header string and every tensor's name, dtype, shape and bytes.

Loading never runs code from the file (no pickle): a corrupt, truncated or tampered file, a file
from a newer format version, or a record that does not fit the given model raise a
:class:`LoadError` (:class:`FormatError` or :class:`ModelMismatchError`) and leave the model exactly
as it was: everything is validated and built first, then committed, and a failing commit is rolled
back with the surgeon's own rollback.

``save_state`` / ``load_state`` do the same for plain state dicts (``RegularizedPruner.state_dict()``,
an optimizer's ``state_dict()``): nested dicts, lists, tuples, strings, numbers (NaN and infinities
included), booleans, None and tensors.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

from . import surgery
from .errors import PruningError

__all__ = ["save", "load", "save_state", "load_state", "read_header", "LoadError", "FormatError",
           "ModelMismatchError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FORMAT = "depgraph_prune"
_HEADER_KEY = "depgraph_prune.header"
_CHECKSUM_KEY = "depgraph_prune.checksum"
_TENSORS_KEY = "tensors"
_HISTORY_ATTR = surgery.HISTORY_ATTR  # where surgery.apply_plan keeps the record


class LoadError(PruningError):
    """A saved file could not be loaded; the model given to ``load`` was left unchanged."""


class FormatError(LoadError):
    """The file is not a (valid) depgraph_prune file: corrupt, truncated, tampered with, of an
    unknown kind, or written by a newer format version."""


class ModelMismatchError(LoadError):
    """The file is valid, but its pruning record or weights do not fit the given model."""


# ============================================================================ checksum and tensors
def _tensor_bytes(t: torch.Tensor) -> np.ndarray:
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return np.zeros(0, dtype=np.uint8)
    return flat.view(torch.uint8).numpy()


def _checksum(header: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(b"depgraph_prune/1\0")
    h.update(header.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode("utf-8"))
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _cpu_tensors(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors that share no memory with each other and span their
    whole storage (safetensors refuses shared storage; torch.save would write all of a view's
    storage). A tensor is copied only when that needs it."""
    out, seen = {}, set()
    for name, t in named.items():
        if t.device.type == "meta":
            raise PruningError(f"save: `{name}` is on the meta device and has no values to save; "
                               "materialize the model first")
        c = t.detach().to("cpu").contiguous()
        storage = c.untyped_storage()
        if c.numel() and (storage.data_ptr() in seen or c.storage_offset() != 0
                          or storage.nbytes() != c.numel() * c.element_size()):
            c = c.clone()
            storage = c.untyped_storage()
        if c.numel():
            seen.add(storage.data_ptr())
        out[name] = c
    return out


# ============================================================================ containers
def _have_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


_NO_SAFETENSORS = "the safetensors package, a dependency of depgraph-prune, is not installed (pip install safetensors)"


def _file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write(path, header: str, tensors: dict[str, torch.Tensor], container: str = "safetensors") -> None:
    """Write atomically: a temporary file next to ``path``, renamed when complete, with the mode a
    plain ``open()`` would give (``mkstemp`` makes it 0600). ``container="torch"`` is the writer
    of earlier versions, kept only so tests can make such files for the reader."""
    if container == "safetensors" and not _have_safetensors():
        raise PruningError(f"save: {_NO_SAFETENSORS}")
    checksum = _checksum(header, tensors)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".depgraph_prune-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        if container == "safetensors":
            from safetensors.torch import save_file
            save_file(tensors, tmp, metadata={_HEADER_KEY: header, _CHECKSUM_KEY: checksum})
        elif container == "torch":
            torch.save({_HEADER_KEY: header, _CHECKSUM_KEY: checksum, _TENSORS_KEY: tensors}, tmp)
        else:
            raise PruningError(f"unknown container {container!r}")
        os.chmod(tmp, _file_mode())  # after writing: a writer may replace the file it was given
        os.replace(tmp, path)  # a crash mid-write never leaves a half-written file under `path`
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_raw(path) -> tuple[str, str, dict[str, torch.Tensor]]:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as exc:
        raise LoadError(f"cannot read {path!r}: {exc}") from exc
    if len(magic) < 8:
        raise FormatError(f"{path!r} is empty or truncated ({len(magic)} bytes)")
    if magic[:4] == b"PK\x03\x04":  # torch.save zip archive
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FormatError(f"{path!r} is not a readable depgraph_prune file (torch container: "
                              f"{type(exc).__name__}: {_first_line(exc)})") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get(_HEADER_KEY), str) \
                or not isinstance(obj.get(_CHECKSUM_KEY), str) or not isinstance(obj.get(_TENSORS_KEY), dict):
            raise FormatError(f"{path!r} is a torch archive but not a depgraph_prune file")
        tensors = obj[_TENSORS_KEY]
        if not all(isinstance(k, str) and type(v) is torch.Tensor for k, v in tensors.items()):
            raise FormatError(f"{path!r}: its tensor table holds something other than named plain tensors")
        return obj[_HEADER_KEY], obj[_CHECKSUM_KEY], tensors
    if not _have_safetensors():
        raise LoadError(f"cannot read {path!r}: {_NO_SAFETENSORS}")
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise FormatError(f"{path!r} is not a readable depgraph_prune file ({type(exc).__name__}: "
                          f"{_first_line(exc)}); it may be truncated or corrupt") from exc
    header, checksum = meta.get(_HEADER_KEY), meta.get(_CHECKSUM_KEY)
    if not isinstance(header, str) or not isinstance(checksum, str):
        raise FormatError(f"{path!r} is a safetensors file without a depgraph_prune header "
                          "(not written by depgraph_prune.save / save_state)")
    return header, checksum, tensors


def _read(path, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    header, checksum, tensors = _read_raw(path)
    try:
        meta = json.loads(header)
    except ValueError as exc:
        raise FormatError(f"{os.fspath(path)!r}: the header is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise FormatError(f"{os.fspath(path)!r}: not a depgraph_prune file (header format {meta.get('format')!r})"
                          if isinstance(meta, dict) else f"{os.fspath(path)!r}: malformed header")
    version = meta.get("version")
    if type(version) is not int or version < 1:
        raise FormatError(f"{os.fspath(path)!r}: malformed format version {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{os.fspath(path)!r} was written in format version {version}, newer than this "
                          f"depgraph_prune reads ({FORMAT_VERSION}): upgrade depgraph_prune to load it")
    if _checksum(header, tensors) != checksum:
        raise FormatError(f"{os.fspath(path)!r}: checksum mismatch: the record or the weights were modified "
                          "or corrupted after saving")
    if meta.get("kind") != kind:
        other = {"model": "dp.load", "state": "dp.load_state"}.get(meta.get("kind"), "nothing here")
        raise FormatError(f"{os.fspath(path)!r} holds a {meta.get('kind')!r}, not a {kind!r}: read it with {other}")
    return meta, tensors


def read_header(path) -> dict:
    """The checked header of a saved file (format, version, kind, and for a model its record)."""
    header, checksum, tensors = _read_raw(path)
    try:
        meta = json.loads(header)
    except ValueError as exc:
        raise FormatError(f"{os.fspath(path)!r}: the header is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise FormatError(f"{os.fspath(path)!r}: not a depgraph_prune file")
    if isinstance(meta.get("version"), int) and meta["version"] <= FORMAT_VERSION \
            and _checksum(header, tensors) != checksum:
        raise FormatError(f"{os.fspath(path)!r}: checksum mismatch")
    return meta


def _first_line(exc) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else ""


# ============================================================================ save
def _module_tensors(model: nn.Module):
    """(qualified name, module, attr, tensor, is_buffer, persistent) for every parameter and
    buffer slot, shared ones under each of their names, in ``named_modules`` order."""
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, t in mod._parameters.items():
            if t is not None:
                yield prefix + attr, mod, attr, t, False, True
        for attr, t in mod._buffers.items():
            if t is not None:
                yield prefix + attr, mod, attr, t, True, attr not in mod._non_persistent_buffers_set


def save(model: nn.Module, path, *, arch: str | None = None, sparse="masked") -> None:
    """Write ``model``'s pruning record and weights (parameters and buffers, non-persistent
    buffers included) to ``path`` (safetensors); reload with :func:`load` into a fresh, unpruned
    model. ``arch``: optional note in the header of how to build that unpruned model (the
    command line stores its ``--model`` / ``--base`` there and suggests it when loading).

    The file is written to a temporary name next to ``path`` and renamed when complete; its mode
    follows the umask, as for any new file.
    ``sparse``: ``"masked"`` (default) stores the masked parameters (:func:`depgraph_prune.sparsify`)
    compactly, nonzero values plus a bitmap, and their masks with them (an unmasked model's file
    is unchanged); ``"auto"`` also packs unmasked parameters with at least half exact zeros (64
    entries or more; e.g. after :func:`~depgraph_prune.remove_masks`); ``False`` writes every
    tensor dense and drops the masks. See :func:`_sparse_pack`.
    """
    if not isinstance(model, nn.Module):
        raise PruningError(f"save: model must be an nn.Module, got {type(model).__name__}")
    record = surgery.history(model)
    named, aliases, buffers, first = {}, {}, [], {}
    for name, _mod, _attr, t, is_buffer, _persistent in _module_tensors(model):
        if id(t) in first:
            if name != first[id(t)]:
                aliases[name] = first[id(t)]
            continue
        first[id(t)] = name
        named[name] = t
        if is_buffer:
            buffers.append(name)
    meta = {"format": _FORMAT, "version": FORMAT_VERSION, "kind": "model", "model": type(model).__name__,
            "torch": torch.__version__, "record": record, "aliases": aliases, "buffers": buffers}
    if arch is not None:
        meta["arch"] = str(arch)
    named = _cpu_tensors(named)
    named, sparse_meta = _sparse_pack(model, named, set(buffers), sparse)
    if sparse_meta:
        meta["sparse"] = sparse_meta
    try:
        header = json.dumps(meta, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise PruningError(f"save: the pruning record of {type(model).__name__} is not JSON-serializable ({exc})") from exc
    _write(path, header, named)


# ============================================================================ sparse tensors
_SPARSE_SEP = "::"  # never in a qualified module name
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _nonzero_bits(t: torch.Tensor) -> torch.Tensor:
    """Positions whose *bit pattern* is not zero (``-0.0`` counts as a value: bit-identical reload)."""
    flat = t.reshape(-1)
    if t.dtype.is_complex:
        flat = torch.view_as_real(flat).reshape(-1, 2)
        return (flat.view(_INT_VIEW[flat.element_size()]) != 0).any(1)
    return flat.view(_INT_VIEW[t.element_size()]) != 0


def _pack_bits(b: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(b.numpy(), bitorder="little"))


def _unpack_bits(t: torch.Tensor, n: int, where: str) -> torch.Tensor:
    if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != (n + 7) // 8:
        raise FormatError(f"{where}: malformed bitmap ({t.dtype}, {tuple(t.shape)} for {n} positions)")
    return torch.from_numpy(np.unpackbits(t.numpy(), count=n, bitorder="little").astype(bool))


def _sparse_pack(model: nn.Module, named: dict, buffers: set, mode) -> tuple[dict, dict]:
    """Replace sparse parameters by ``name::values`` (the entries with nonzero bits, flat, in
    order) and ``name::bitmap`` (one bit per entry, ``np.packbits`` little-endian), plus
    ``name::mask`` for a mask that is not exactly the zero pattern. Returns the new tensor table
    and the header's ``sparse`` entry ``{name: {"shape": [...], "mask": null | "values" | "own"}}``.
    For float32 at 80% zeros a tensor takes 0.2 + 1/32 of its dense bytes."""
    if mode not in ("auto", "masked", False, None):
        raise PruningError(f"save: sparse must be 'auto', 'masked' or False, got {mode!r}")
    if not mode:
        return named, {}
    from . import unstructured
    by_id = {}
    for mod_name, mod in model.named_modules():
        for attr, m in mod.__dict__.get(unstructured.MASKS_ATTR, {}).items():
            p = getattr(mod, attr, None)
            if isinstance(p, torch.Tensor):
                by_id[id(p)] = (mod_name, mod, attr)
    first = {}
    for name, _mod, _attr, t, _b, _p in _module_tensors(model):
        first.setdefault(name, t)
    out, meta = {}, {}
    for name, c in named.items():
        orig = first.get(name)
        floating = name not in buffers and (c.dtype.is_floating_point or c.dtype.is_complex)
        masked = floating and orig is not None and id(orig) in by_id
        if not masked and not (floating and mode == "auto" and c.numel() >= 64):
            out[name] = c
            continue
        keep = _nonzero_bits(c)
        if not masked and int(keep.sum()) * 2 > c.numel():  # dense enough: as it is
            out[name] = c
            continue
        flat = c.reshape(-1)
        out[name + _SPARSE_SEP + "values"] = flat[keep].clone()
        out[name + _SPARSE_SEP + "bitmap"] = _pack_bits(keep)
        kind = None
        if masked:
            mod_name, mod, attr = by_id[id(orig)]
            pruned = unstructured._synced(model, name, mod, attr).detach().cpu().reshape(-1)
            if torch.equal(pruned, ~keep):
                kind = "values"
            else:
                kind = "own"
                out[name + _SPARSE_SEP + "mask"] = _pack_bits(pruned)
        meta[name] = {"shape": list(c.shape), "mask": kind}
    return out, meta


def _sparse_unpack(meta: dict, stored: dict, path) -> tuple[dict, dict]:
    """Inverse of :func:`_sparse_pack` on a file's (checksummed) tensors: the dense table, and the
    masks ``{name: bool tensor (True = pruned)}`` to attach."""
    info = meta.get("sparse", {})
    where = f"{os.fspath(path)!r}"
    if not isinstance(info, dict):
        raise FormatError(f"{where}: malformed sparse table in the header")
    out = {k: v for k, v in stored.items() if _SPARSE_SEP not in k}
    consumed, masks = set(), {}
    for name, entry in info.items():
        w = f"{where}, sparse tensor `{name}`"
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list) or \
                not all(type(d) is int and d >= 0 for d in entry["shape"]) or entry.get("mask") not in (None, "values", "own"):
            raise FormatError(f"{w}: malformed entry {entry!r}")
        if name in out:
            raise FormatError(f"{w}: stored both dense and sparse")
        keys = [name + _SPARSE_SEP + s for s in ("values", "bitmap")] + \
            ([name + _SPARSE_SEP + "mask"] if entry["mask"] == "own" else [])
        for k in keys:
            if k not in stored:
                raise FormatError(f"{w}: the file has no `{k}`")
        consumed.update(keys)
        values, shape = stored[keys[0]], tuple(entry["shape"])
        n = int(np.prod(shape, dtype=np.int64))
        keep = _unpack_bits(stored[keys[1]], n, w)
        if values.dim() != 1 or values.numel() != int(keep.sum()):
            raise FormatError(f"{w}: {values.numel()} values for {int(keep.sum())} set bits")
        dense = torch.zeros(n, dtype=values.dtype)
        dense[keep] = values
        out[name] = dense.view(shape)
        if entry["mask"] == "values":
            masks[name] = (~keep).view(shape)
        elif entry["mask"] == "own":
            masks[name] = _unpack_bits(stored[keys[2]], n, w).view(shape)
    extra = [k for k in stored if _SPARSE_SEP in k and k not in consumed]
    if extra:
        raise FormatError(f"{where}: `{extra[0]}` is not described by the header's sparse table")
    return out, masks


def _attach_masks(model: nn.Module, masks: dict) -> None:
    from . import unstructured
    for mod in model.modules():
        mod.__dict__.pop(unstructured.MASKS_ATTR, None)
        mod.__dict__.pop(unstructured.KEEP_ATTR, None)
    for name, m in masks.items():
        owner, _, attr = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        p = getattr(mod, attr)
        mod.__dict__.setdefault(unstructured.MASKS_ATTR, {})[attr] = m.to(p.device)


# ============================================================================ load
def _fail(msg: str):
    raise ModelMismatchError(msg)


def _parse_key(key) -> tuple[str, int]:
    if not isinstance(key, str) or ":" not in key:
        raise FormatError(f"malformed record key {key!r} (expected 'name:dim')")
    name, _, dim = key.rpartition(":")
    if not dim.isdigit():
        raise FormatError(f"malformed record key {key!r} (expected 'name:dim')")
    return name, int(dim)


def _check_record_shape(record) -> None:
    if not isinstance(record, list):
        raise FormatError("the pruning record is not a list")
    for i, entry in enumerate(record):
        if not isinstance(entry, dict) or not isinstance(entry.get("kept"), dict) \
                or not isinstance(entry.get("attrs"), dict):
            raise FormatError(f"pruning record entry {i} is malformed (expected {{'kept': {{...}}, 'attrs': {{...}}}})")


def _width_slot(model: nn.Module, name: str):
    """(module, attr, index or None) for a width member name (``bn.num_features``,
    ``ln.normalized_shape[0]``), or None when ``name`` is not one."""
    owner_name, _, attr = name.rpartition(".")
    index = None
    if attr.endswith("]") and "[" in attr:
        attr, _, rest = attr.partition("[")
        if not rest[:-1].isdigit():
            return None
        index = int(rest[:-1])
    try:
        mod = model.get_submodule(owner_name) if owner_name else model
    except AttributeError:
        return None
    if not hasattr(mod, attr):
        return None
    value = getattr(mod, attr)
    if index is None:
        return (mod, attr, None) if type(value) is int else None
    if isinstance(value, (tuple, list)) and index < len(value) and type(value[index]) is int:
        return mod, attr, index
    return None


def _check_kept(where: str, kept, size: int) -> np.ndarray:
    if not isinstance(kept, list) or not all(type(i) is int for i in kept):
        raise FormatError(f"{where}: kept positions must be a list of integers")
    idx = np.asarray(kept, dtype=np.int64)
    if idx.size == 0:
        _fail(f"{where}: keeps no position at all")
    if idx.min() < 0 or idx.max() >= size:
        _fail(f"{where}: kept positions must lie in [0, {size}) for this model, got up to {int(idx.max())}")
    if idx.size > 1 and not (np.diff(idx) > 0).all():
        _fail(f"{where}: kept positions must be sorted and unique")
    return idx


def _plan_replay(model: nn.Module, record: list):
    """Replay ``record`` on shapes only. Returns the final shape and the composite kept positions
    (in the unpruned tensor) per tensor id, and the final value of every width attribute."""
    slots = {}  # name -> tensor
    for name, _mod, _attr, t, _b, _p in _module_tensors(model):
        slots[name] = t
    shapes = {id(t): list(t.shape) for t in slots.values()}
    positions: dict[tuple[int, int], np.ndarray] = {}  # (id, dim) -> positions in the original tensor
    widths: dict[tuple[int, str, int | None], int] = {}
    attrs: dict[tuple[int, str], tuple[nn.Module, str, Any]] = {}
    for i, entry in enumerate(record):
        seen: set = set()
        updates = []
        for key, kept in entry["kept"].items():
            name, dim = _parse_key(key)
            where = f"pruning record entry {i}, `{key}`"
            t = slots.get(name)
            if t is not None:
                if dim >= t.dim():
                    _fail(f"{where}: `{name}` has only {t.dim()} dims in this model")
                if (id(t), dim) in seen:
                    _fail(f"{where}: the same tensor dim is sliced twice in one surgery")
                seen.add((id(t), dim))
                idx = _check_kept(where, kept, shapes[id(t)][dim])
                prev = positions.get((id(t), dim))
                updates.append(("t", (id(t), dim), idx, prev[idx] if prev is not None else idx))
                continue
            slot = _width_slot(model, name)
            if slot is None or dim != 0:
                _fail(f"{where}: {type(model).__name__} has no parameter, buffer or width attribute "
                      f"named `{name}`: the file was saved from a different architecture")
            mod, attr, index = slot
            wkey = (id(mod), attr, index)
            cur = getattr(mod, attr) if index is None else getattr(mod, attr)[index]
            size = widths.get(wkey, cur)
            idx = _check_kept(where, kept, size)
            updates.append(("w", wkey, idx, None))
        for kind, k, idx, pos in updates:  # one surgery slices every tensor from its pre-surgery shape
            if kind == "t":
                shapes[k[0]][k[1]] = int(idx.size)
                positions[k] = pos
            else:
                widths[k] = int(idx.size)
        for qual, value in entry["attrs"].items():
            if not isinstance(qual, str):
                raise FormatError(f"pruning record entry {i}: malformed attribute name {qual!r}")
            owner_name, _, attr = qual.rpartition(".")
            where = f"pruning record entry {i}, attribute `{qual}`"
            try:
                mod = model.get_submodule(owner_name) if owner_name else model
            except AttributeError:
                _fail(f"{where}: {type(model).__name__} has no submodule `{owner_name}`")
            if not attr or not hasattr(mod, attr):
                _fail(f"{where}: `{owner_name or type(model).__name__}` has no attribute `{attr}`")
            current = getattr(mod, attr)
            attrs[(id(mod), attr)] = (mod, attr, _coerce(where, current, value))
    return slots, shapes, positions, attrs


def _coerce(where: str, current, value):
    """The record's JSON value in the type of the attribute it replaces."""
    if type(current) is bool or type(value) is bool:
        if type(current) is not type(value):
            _fail(f"{where}: {value!r} does not fit the current value {current!r}")
        return value
    if isinstance(current, int):
        if type(value) is not int:
            _fail(f"{where}: expected an integer, got {value!r}")
        if value <= 0:
            _fail(f"{where}: a width must be positive, got {value}")
        return value
    if isinstance(current, (tuple, list)):
        if not isinstance(value, list) or len(value) != len(current) or \
                not all(type(a) is type(b) for a, b in zip(current, value)):
            _fail(f"{where}: {value!r} does not fit the current value {current!r}")
        if hasattr(current, "_fields"):  # a namedtuple
            return type(current)(*value)
        return type(current)(value)
    if isinstance(current, (float, str)) or current is None:
        if type(value) is not type(current) and not (current is None or value is None):
            _fail(f"{where}: {value!r} does not fit the current value {current!r}")
        return value
    _fail(f"{where}: cannot restore an attribute of type {type(current).__name__}")


def load(path, model: nn.Module, *, example_inputs: Any = None) -> nn.Module:
    """Load a file written by :func:`save` into ``model``, a freshly built *unpruned* instance of
    the same architecture: the pruning record is replayed (tensors narrowed, width attributes
    set), the weights are loaded, ``surgery.history(model)`` is restored. Returns ``model``.

    Parameters keep their identity (``param.data`` is replaced), as in the surgeon. Each tensor
    keeps the dtype and device of ``model``'s own tensor, as with ``load_state_dict``: build the
    model in the dtype it was saved in for bit-identical outputs. With ``example_inputs`` the
    loaded model is also run once, as the surgeon validates its result (on meta tensors where
    possible), and the load is undone if that fails.

    Masks saved with sparse tensors (:func:`depgraph_prune.sparsify`) are attached again (any
    masks ``model`` had before are dropped); re-attach them to an optimizer with
    :func:`depgraph_prune.keep_masks`.

    Raises :class:`FormatError` (corrupt, truncated, tampered, newer version) or
    :class:`ModelMismatchError` (record or weights do not fit ``model``; ``model`` was already
    pruned); in every case ``model`` is left exactly as it was.
    """
    if not isinstance(model, nn.Module):
        raise PruningError(f"load: model must be an nn.Module, got {type(model).__name__}")
    meta, stored = _read(path, "model")
    stored, file_masks = _sparse_unpack(meta, stored, path)
    record, aliases, buffers = meta.get("record"), meta.get("aliases"), meta.get("buffers")
    _check_record_shape(record)
    if not isinstance(aliases, dict) or not isinstance(buffers, list) or \
            not all(isinstance(k, str) and isinstance(v, str) and v in stored for k, v in aliases.items()):
        raise FormatError(f"{os.fspath(path)!r}: malformed tensor table in the header")
    if surgery.history(model):
        _fail("load: the given model was already pruned; pass a freshly built, unpruned model")

    # ---- build phase: nothing in the model is touched -------------------------------------------
    slots, shapes, positions, attrs = _plan_replay(model, record)
    for name, t in slots.items():
        if t.device.type == "meta":
            raise LoadError(f"load: `{name}` is on the meta device; materialize the model first "
                            "(model.to_empty(device='cpu'))")
    holders: dict[int, list] = {}
    names_of: dict[int, list[str]] = {}
    for name, mod, attr, t, is_buffer, _persistent in _module_tensors(model):
        holders.setdefault(id(t), []).append((mod, attr, is_buffer))
        names_of.setdefault(id(t), []).append(name)
    file_names = set(stored) | set(aliases)
    model_names = set(slots)
    if model_names - file_names:
        missing = sorted(model_names - file_names)
        _fail(f"load: the file has no tensor for `{missing[0]}` ({len(missing)} missing): it was saved "
              "from a different architecture")
    if file_names - model_names:
        extra = sorted(file_names - model_names)
        _fail(f"load: the file holds `{extra[0]}` ({len(extra)} in all), which {type(model).__name__} does "
              "not have: it was saved from a different architecture")
    new_tensors, used = {}, {}
    with torch.no_grad():
        for tid, names in names_of.items():
            sources = {aliases.get(n, n) for n in names}
            if len(sources) != 1:
                _fail(f"load: {sorted(names)} are one tensor in this model but separate tensors in the file")
            src_name = sources.pop()
            if src_name in used:
                _fail(f"load: `{used[src_name]}` and `{names[0]}` are one tensor in the file but separate "
                      "tensors in this model")
            used[src_name] = names[0]
            src = stored[src_name]
            t = slots[names[0]]
            shape = tuple(shapes[tid])
            if tuple(src.shape) != shape:
                _fail(f"load: `{names[0]}` has shape {tuple(src.shape)} in the file, but {shape} after "
                      f"replaying the pruning record on this model")
            is_buffer = holders[tid][0][2]
            if is_buffer != (src_name in buffers):
                _fail(f"load: `{names[0]}` is a {'buffer' if is_buffer else 'parameter'} in this model but not in the file")
            if src.dtype.is_floating_point != t.dtype.is_floating_point or src.dtype.is_complex != t.dtype.is_complex:
                _fail(f"load: `{names[0]}` is {src.dtype} in the file and {t.dtype} in this model")
            new = src.to(device=t.device, dtype=t.dtype)  # the file's tensors are ours: no copy ...
            if new.data_ptr() % 64:
                # ... unless misaligned (safetensors packs tensors at 8-byte offsets): CPU kernels
                # pick other code paths for unaligned data, and the outputs would differ in the last bit
                new = new.clone()
            grad = None
            if isinstance(t, nn.Parameter) and t.grad is not None:
                dims = {d: positions[(tid, d)] for d in range(t.dim()) if (tid, d) in positions}
                grad = surgery._slice(t.grad, dims) if dims else t.grad
            new_tensors[tid] = (t, new, grad)

    replay = _ReplayCheck(model, slots, positions, record, example_inputs) if example_inputs is not None else None

    # ---- commit phase ------------------------------------------------------------------------------
    undo = []
    old_history = model.__dict__.get(_HISTORY_ATTR, _MISSING)
    try:
        for tid, (t, new, grad) in new_tensors.items():
            if isinstance(t, nn.Parameter):
                undo.append(("param", t, t.data, t.grad))
                t.grad = None
                t.data = new
                t.grad = grad
            else:
                for mod, attr, _ in holders[tid]:
                    old = mod._buffers[attr]
                    mod._buffers[attr] = new
                    undo.append(("buffer", mod, attr, old))
        for mod, attr, value in attrs.values():
            old = getattr(mod, attr)
            if old == value and type(old) is type(value):
                continue
            setattr(mod, attr, value)
            undo.append(("attr", mod, attr, old))
        for fn, mod in surgery._refreshers((m, n) for n, m in model.named_modules()):
            fn(mod)  # e.g. an RNN's packed cuDNN weights
        model.__dict__[_HISTORY_ATTR] = copy.deepcopy(record)
        if example_inputs is not None:
            problem = surgery.check_runs(model, example_inputs, None)
            if problem:
                raise ModelMismatchError(f"load: the loaded model does not run on example_inputs ({problem})")
            problem = replay.check(model)
            if problem:
                raise ModelMismatchError(f"load: the pruning record does not replay to a function-preserving "
                                         f"prune of this {type(model).__name__} ({problem}): the file was saved "
                                         "from a different architecture")
    except Exception as exc:
        _restore_history(model, old_history)
        surgery._rollback(undo)
        if isinstance(exc, LoadError):
            raise exc.__class__(f"{exc}; the model was restored") from exc
        raise LoadError(f"load failed while committing ({type(exc).__name__}: {exc}); the model was restored") from exc
    _attach_masks(model, file_masks)
    return model


class _ReplayCheck:
    """The numerical check of :mod:`depgraph_prune.verify`, for a replayed record: this model's
    own weights with the record's removed positions zeroed must compute what the same weights,
    sliced as the record says and placed in the replayed model, compute. Made on the model's
    weights before the file's are loaded; the file's weights themselves are not involved."""

    def __init__(self, model, slots, positions, record, example_inputs):
        from . import verify
        self.inputs = example_inputs
        self.dtype = verify.choose_dtype(model)
        base = verify.base_state(model, self.dtype) if self.dtype is not None else \
            {n: t.detach() for n, t in slots.items()}
        removed, sliced = {}, {}
        for name, t in slots.items():
            dims = {d: pos for (tid, d), pos in positions.items() if tid == id(t)}
            if not dims:
                continue
            out = base[name]
            for d, pos in sorted(dims.items()):
                removed.setdefault(name, {})[d] = torch.as_tensor(np.setdiff1d(np.arange(t.shape[d]), pos))
                out = out.index_select(d, torch.as_tensor(pos, dtype=torch.long, device=out.device))
            sliced[name] = out
        _apply_rescales(record, sliced)
        self.affine, self.skip = self._classify(model, example_inputs, removed)
        self.state = {**base, **sliced}
        if self.skip:
            return
        self.probe = verify.Probe(model, removed)
        with verify.masked(model, removed, base if self.dtype is not None else None) as state:
            self.ref = verify.run(model, example_inputs, self.dtype, state, self.affine, self.probe)

    @staticmethod
    def _classify(model, example_inputs, removed):
        """Whether the removed channels reach layer/group/RMS norms (checked with affine norms) or
        other channel-normalizing ops (then only the run check applies), from this model's graph."""
        from . import verify
        from .graph import DependencyGraph
        try:
            graph = DependencyGraph(model, example_inputs)
        except Exception as exc:  # the run check still applies
            return False, f"the model's graph could not be built ({type(exc).__name__}: {exc})"
        comp_group = np.full(graph._ncomp, -1, dtype=np.int64)
        for g in graph.groups:
            comp_group[g._comps] = g.index
        hit = set()
        for name, dims in removed.items():
            for d, drop in dims.items():
                m = graph._ctx.members.get((graph._ctx.canonical_name(name), d))
                if m is None:
                    continue
                atoms = m.atoms[drop.numpy()]
                atoms = atoms[atoms >= 0]
                hit |= set(np.unique(comp_group[graph._labels[atoms]]).tolist()) - {-1}
        groups = [g for g in graph.groups if g.index in hit]
        _, affine, structural = verify.classify(graph, groups)
        if structural:
            return False, next(iter(structural.values()))
        return bool(affine), None

    def check(self, model) -> str | None:
        from . import verify
        if self.skip:
            import warnings
            warnings.warn(f"load: the replayed record was checked by running the model, not numerically "
                          f"(removed channels {self.skip})", stacklevel=3)
            return None
        self.probe.mode = "check"
        try:
            out = verify.run(model, self.inputs, self.dtype, self.state, self.affine, self.probe)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        diff = max(verify.compare(self.ref, out), self.probe.worst)
        tol = verify.TOLERANCE.get(self.dtype or verify.model_dtype(model), 1e-4)
        return None if diff <= tol else f"max relative diff {diff:.3g} against the masked original"


def _apply_rescales(record, sliced):
    """Apply each surgery's row rescaling (``record[i]["rescaled"]``, positions in the tensor as
    that surgery left it) to the finally sliced tensors, following the later surgeries' cuts."""
    for i, entry in enumerate(record):
        for name, dim, idx, factor in entry.get("rescaled", []):
            pos = np.asarray(idx, dtype=np.int64)
            for later in record[i + 1:]:
                kept = later["kept"].get(f"{name}:{dim}")
                if kept is not None:
                    pos = np.nonzero(np.isin(np.asarray(kept), pos))[0]
            if name in sliced and pos.size:
                t = sliced[name] = sliced[name].clone()
                ix = torch.as_tensor(pos, dtype=torch.long, device=t.device)
                t.index_copy_(dim, ix, t.index_select(dim, ix) * factor)


_MISSING = object()


def _restore_history(model, old):
    if old is _MISSING:
        model.__dict__.pop(_HISTORY_ATTR, None)
    else:
        model.__dict__[_HISTORY_ATTR] = old


# ============================================================================ plain state dicts
def _encode(obj, tensors: dict, where: str = "state"):
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return {"__float__": repr(float(obj))}  # 'nan', 'inf', '-inf'
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return _encode(obj.item(), tensors, where)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}[{k!r}]") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, f"{where} key"), _encode(v, tensors, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
    raise PruningError(f"save_state: {where} is a {type(obj).__name__}; only dicts, lists, tuples, strings, "
                       "numbers, booleans, None and tensors can be saved")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, val), = obj.items()
        if tag == "__tensor__":
            if val not in tensors:
                raise FormatError(f"the state refers to a tensor {val!r} the file does not hold")
            return tensors[val]
        if tag == "__float__":
            if val not in ("nan", "inf", "-inf"):
                raise FormatError(f"malformed float {val!r}")
            return float(val)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in val)
        if tag == "__dict__":
            out = {}
            for pair in val:
                k = _decode(pair[0], tensors)
                if isinstance(k, list):
                    raise FormatError("malformed state: a list used as a dict key")
                out[k] = _decode(pair[1], tensors)
            return out
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(state: Any, path) -> None:
    """Write a plain state dict (``RegularizedPruner.state_dict()``, ``optimizer.state_dict()``, ...)
    as JSON + tensors, with the same checksum and versioning as :func:`save`."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors)
    meta = {"format": _FORMAT, "version": FORMAT_VERSION, "kind": "state", "torch": torch.__version__,
            "state": encoded}
    header = json.dumps(meta, allow_nan=False, separators=(",", ":"))
    _write(path, header, _cpu_tensors(tensors))


def load_state(path, map_location=None) -> Any:
    """Read a file written by :func:`save_state`; tensors come back on the CPU (or ``map_location``).
    Raises :class:`FormatError` for a corrupt, tampered or newer-version file."""
    meta, tensors = _read(path, "state")
    if map_location is not None:
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    try:
        return _decode(meta["state"], tensors)
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{os.fspath(path)!r}: malformed state ({type(exc).__name__}: {exc})") from exc
