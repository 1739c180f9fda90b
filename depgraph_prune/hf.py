"""Hugging Face models after pruning: keep ``model.config`` describing the widths.

``dp.prune`` calls :func:`update_config` on any model with a transformers-style ``config``
(duck-typed: the package never imports transformers). Where every layer has the same width, the
config field is set (``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``intermediate_size`` or the family's name for it), so ``save_pretrained`` /
``from_pretrained`` rebuild the pruned architecture; this is checked by building the class from
the new config on the meta device and comparing every shape and head width. Where layers differ,
or the config has no field for a width (BERT's heads pruned with the hidden size kept: its head
size is ``hidden_size // num_attention_heads``), the config is left as it was and the per-layer
widths are recorded in ``config.pruned_widths`` (saved with the config; transformers' classes
cannot build from it: reload those with ``dp.save`` / ``dp.load``).

Example::

    >>> import torch, transformers, depgraph_prune as dp
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    >>> model = transformers.LlamaForCausalLM(cfg).eval()
    >>> _ = dp.prune(model, {"input_ids": torch.randint(0, 64, (1, 6))}, ratio=0.5)
    >>> model.config.intermediate_size, model.config.num_key_value_heads
    (32, 1)
"""
from __future__ import annotations

from torch import nn

# the first projection of a layer's MLP, by attribute name, across transformers' families
_MLP_IN = ("up_proj", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "wi", "wi_0", "lin1", "intermediate_dense")
_FFN_KEYS = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "encoder_ffn_dim", "hidden_dim")


def _out_width(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    w = getattr(m, "weight", None)
    if type(m).__name__ == "Conv1D" and w is not None:  # transformers' transposed linear
        return int(w.shape[1])
    return None


def _layers(model: nn.Module, n: int | None) -> list[nn.Module]:
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) and (n is None or len(m) == n):
            return list(m)
    return []


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Per-layer widths of a transformers decoder/encoder stack, as far as they can be read."""
    config = model.config
    layers = _layers(model, getattr(config, "num_hidden_layers", None))
    out: dict[str, list[int]] = {"num_attention_heads": [], "num_key_value_heads": [], "intermediate_size": []}
    for layer in layers:
        heads = kv = ffn = None
        for name, m in layer.named_modules():
            hd = getattr(m, "head_dim", getattr(m, "attention_head_size", None))
            q = getattr(m, "q_proj", getattr(m, "query", None))
            k = getattr(m, "k_proj", getattr(m, "key", None))
            if heads is None and isinstance(hd, int) and hd > 0 and _out_width(q) and _out_width(k):
                heads, kv = _out_width(q) // hd, _out_width(k) // hd
            if heads is None and isinstance(hd, int) and hd > 0 and _out_width(getattr(m, "c_attn", None)) \
                    and getattr(m, "q_attn", None) is None:  # GPT-2: one (3 * heads * head_dim) projection
                heads = kv = _out_width(m.c_attn) // (3 * hd)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "dense" and name.endswith("intermediate.dense"):
                leaf = "intermediate_dense"
            if ffn is None and leaf in _MLP_IN and _out_width(m):
                ffn = _out_width(m)
            if ffn is None and isinstance(getattr(m, "intermediate_dim", None), int) and hasattr(m, "gate_up_proj"):
                ffn = m.intermediate_dim  # mixture of experts
        for key, v in (("num_attention_heads", heads), ("num_key_value_heads", kv), ("intermediate_size", ffn)):
            if v is not None:
                out[key].append(v)
    return {k: v for k, v in out.items() if v and len(v) == len(layers)}


def update_config(model: nn.Module) -> list[str]:
    """Set ``model.config``'s width fields from the (pruned) modules; returns what changed."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or not hasattr(config, "num_hidden_layers"):
        return []
    changed, old = [], {}

    def put(key, value):
        if hasattr(config, key) and getattr(config, key) != value:
            changed.append(f"{key}: {getattr(config, key)} -> {value}")
            old.setdefault(key, getattr(config, key))
            setattr(config, key, value)

    try:
        emb = model.get_input_embeddings()
    except Exception:  # vision and audio models have none (transformers raises NotImplementedError)
        emb = None
    old_heads = getattr(config, "num_attention_heads", None)
    old_hidden = getattr(config, "hidden_size", None)
    if isinstance(emb, nn.Embedding):
        put("hidden_size", emb.embedding_dim)
    widths = layer_widths(model)
    varying = {}
    for key, values in widths.items():
        if len(set(values)) == 1:
            if key == "intermediate_size":
                for k in _FFN_KEYS:
                    if isinstance(getattr(config, k, None), int):
                        put(k, values[0])
                        break
            else:
                put(key, values[0])
        else:
            varying[key] = values
    # head_dim used to follow hidden_size // num_attention_heads: say it now that both may move
    head_dim = getattr(config, "head_dim", None)
    if old_heads and old_hidden and "num_attention_heads" in widths and hasattr(config, "head_dim"):
        if head_dim is None:
            put("head_dim", old_hidden // old_heads)
    problem = None if varying else describes(model)
    if varying or problem:
        # a config that half-describes the model would build a wrong one: leave it as it was
        for key, value in old.items():
            setattr(config, key, value)
        config.pruned_widths = widths
        changed = ["the config cannot describe the pruned model, so it was left as it was ("
                   + (f"per-layer widths differ: {sorted(varying)}" if varying else problem)
                   + "): per-layer widths are in config.pruned_widths; reload with dp.save/dp.load, "
                     "not from_pretrained"]
    return changed


_HEAD_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim")


def describes(model: nn.Module) -> str | None:
    """None if ``type(model)(model.config)`` builds exactly the pruned shapes and head widths
    (so ``from_pretrained`` rebuilds it); else what differs. Built on the meta device: no memory."""
    import copy

    import torch
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception as exc:
        return f"the model class cannot be built from it ({type(exc).__name__}: {exc})"
    mine = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    theirs = {n: tuple(t.shape) for n, t in fresh.state_dict().items()}
    for n, shape in mine.items():
        if n in theirs and theirs[n] != shape:
            return f"`{n}` would be built {theirs[n]}, it is {shape}"
    fresh_modules = dict(fresh.named_modules())
    for n, m in model.named_modules():
        f = fresh_modules.get(n)
        for a in _HEAD_ATTRS:
            if f is not None and isinstance(getattr(m, a, None), int) and getattr(f, a, None) != getattr(m, a):
                return f"`{n}.{a}` would be {getattr(f, a, None)}, it is {getattr(m, a)}"
    return None
