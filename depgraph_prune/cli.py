"""The ``depgraph-prune`` command line (also ``python -m depgraph_prune``).

    depgraph-prune prune   --model resnet50 --ratio 0.5 [--out pruned.dpz] [--json] [--latency] [--plot widths.png]
    depgraph-prune prune   --model fasterrcnn_resnet50_fpn --submodule backbone --importance taylor --calibration 4
    depgraph-prune inspect --model resnet50 [--group layer1.0.conv1] [--draw groups.png] [--dot graph.dot]
    depgraph-prune zoo     [--family resnet] [--kind classification] [--out zoo.md]

``--model`` takes a torchvision model name (random weights, nothing is downloaded), a
``package.module:factory`` (or ``path/to/file.py:factory``) that builds your own model when called
with no arguments, or a file saved with ``--out`` together with ``--base``, the architecture it was
saved from.

Errors are one line on stderr, ``error: <what is wrong>. <what to do>``; the exit status is 2 when
the command line itself is wrong (bad option value, unknown model, missing file) and 1 when the work
failed (the model cannot be traced or pruned, a file cannot be loaded or written). ``--verbose``
prints the traceback too.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
import traceback
from typing import Any

PROG = "depgraph-prune"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

__all__ = ["main", "build_parser", "CLIError", "load_model", "default_input_shape", "parse_shape",
           "parse_ratios", "measure_latency", "EXIT_FAILURE", "EXIT_USAGE"]


class CLIError(Exception):
    """An error reported as one line: ``error: <message>. <hint>``, exit status ``code``."""

    def __init__(self, message: str, hint: str = "", code: int = EXIT_FAILURE):
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a :class:`CLIError` (one line, exit status 2)."""

    def error(self, message):
        raise CLIError(message, f"Run '{self.prog} --help' for usage.", EXIT_USAGE)


def _format_error(message: str, hint: str = "") -> str:
    msg = " ".join(str(message).split()).rstrip()
    if msg and not msg.endswith((".", "!", "?")):
        msg += "."
    hint = " ".join(str(hint).split())
    return f"error: {msg} {hint}".rstrip()


# ============================================================================ argument types
def parse_ratio(text: str) -> float:
    """A pruning ratio: a number in [0, 1)."""
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None
    if not math.isfinite(r) or not 0.0 <= r < 1.0:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), got {text!r} (0.5 removes half the channels)")
    return r


def _speedup(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"target speedup must be a number > 1, got {text!r}") from None
    if not math.isfinite(s) or s <= 1.0:
        raise argparse.ArgumentTypeError(f"target speedup must be a number > 1, got {text!r} (2 halves the MACs)")
    return s


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def parse_count(text: str) -> int:
    """A MAC or parameter count: ``2e9``, ``1.5G``, ``300M``, ``20k``."""
    t = text.strip().upper().replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(t[-1:], 1)
    try:
        n = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count like 2e9, 1.5G or 300M, got {text!r}") from None
    if not math.isfinite(n) or n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive count like 2e9, 1.5G or 300M, got {text!r}")
    return int(n)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``, ``(1, 3, 224, 224)``) → ``(1, 3, 224, 224)``."""
    cleaned = text.strip().strip("()[]").replace("x", ",").replace("X", ",").replace(" ", "")
    parts = [p for p in cleaned.split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"input shape must be positive integers separated by commas, like "
                                         f"1,3,224,224; got {text!r}")
    return dims


def parse_ratios(spec: str, model) -> dict[str, float]:
    """``--ratios``: one of the published spec formats (``depgraph_prune.specs``):

    * name patterns ``"*layer*.conv1:0.5,layer4.*:0.2"`` (fnmatch on module names, last match wins);
    * layer ranges ``"[0:0, 1-9:0.3, 10-15:0.5]"`` (conv / linear layers counted in module order);
    * a ResNet stage list ``"[0, .3, .3, .3, .14]"`` (stem, then each ``layerS``).
    """
    from . import specs
    s = spec.strip()
    if s.startswith("["):
        if ":" in s:
            return specs.layer_ranges(model, s)
        try:
            stages = json.loads(s.replace("[.", "[0.").replace(",.", ",0.").replace(", .", ", 0."))
        except ValueError:
            raise ValueError(f"cannot read the stage list {spec!r}; write it like [0, 0.3, 0.3, 0.3, 0.14]") from None
        return specs.resnet_stages(model, stages)
    return specs.name_patterns(s)


# ============================================================================ models and inputs
def _torchvision_names() -> list[str]:
    import torchvision
    return torchvision.models.list_models()


def default_input_shape(name: str | None) -> tuple[int, ...]:
    """The example input for a torchvision model: ``1,3,224,224``; ``1,3,299,299`` for Inception;
    ``1,3,8,112,112`` for video models (``1,3,16,224,224`` for MViT and S3D)."""
    if not name:
        return (1, 3, 224, 224)
    if "inception" in name:
        return (1, 3, 299, 299)
    try:
        import torchvision
        from torchvision.models import video
        videos = torchvision.models.list_models(module=video)
    except Exception:  # pragma: no cover
        videos = []
    if name in videos:
        return (1, 3, 16, 224, 224) if name.startswith(("mvit", "s3d")) else (1, 3, 8, 112, 112)
    return (1, 3, 224, 224)


def _torchvision_model(name: str):
    import torchvision
    names = _torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"Did you mean {' or '.join(close)}? " if close else ""
        raise CLIError(f"unknown model {name!r}: not a torchvision model name, a package.module:factory, or an "
                       f"existing file", hint + "List the names with python -c \"import torchvision; "
                       "print(torchvision.models.list_models())\"; for your own model pass --model "
                       "package.module:factory.", EXIT_USAGE)
    builder = torchvision.models.get_model_builder(name)
    kwargs: dict[str, Any] = {"weights": None}
    try:
        if "weights_backbone" in inspect.signature(builder).parameters:
            kwargs["weights_backbone"] = None  # never download a backbone either
    except (TypeError, ValueError):  # pragma: no cover
        pass
    return builder(**kwargs)


def _import_factory(spec: str):
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr:
        raise CLIError(f"--model {spec!r} is not of the form package.module:factory", "Example: --model "
                       "mypackage.models:build_net (a function that returns an nn.Module).", EXIT_USAGE)
    if module_part.endswith(".py"):
        if not os.path.isfile(module_part):
            raise CLIError(f"the file {module_part!r} named by --model does not exist", "Check the path.",
                           EXIT_USAGE)
        name = "_depgraph_prune_user_" + os.path.splitext(os.path.basename(module_part))[0]
        ispec = importlib.util.spec_from_file_location(name, module_part)
        module = importlib.util.module_from_spec(ispec)
        sys.modules[name] = module
        try:
            ispec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise CLIError(f"importing {module_part!r} failed ({type(exc).__name__}: {exc})",
                           "Fix the error in that file (run with --verbose for the traceback).") from exc
    else:
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)  # like `python -m`: modules in the current directory are importable
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and (module_part == exc.name or module_part.startswith(exc.name + ".")):
                raise CLIError(f"cannot import module {module_part!r} named by --model ({exc})",
                               "Check the name; the module must be importable from the current directory or "
                               "an installed package.", EXIT_USAGE) from exc
            raise CLIError(f"importing {module_part!r} failed ({type(exc).__name__}: {exc})",
                           "Install what it needs (run with --verbose for the traceback).") from exc
        except Exception as exc:
            raise CLIError(f"importing {module_part!r} failed ({type(exc).__name__}: {exc})",
                           "Fix the error in that module (run with --verbose for the traceback).") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            close = difflib.get_close_matches(attr, public, n=3)
            raise CLIError(f"module {module_part!r} has no attribute {attr!r}",
                           (f"Did you mean {' or '.join(close)}?" if close else
                            "Name a function that takes no arguments and returns an nn.Module."), EXIT_USAGE)
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"{spec!r} is not callable", "Name a function (or class) that builds the model when called "
                       "with no arguments.", EXIT_USAGE)
    try:
        return obj()
    except Exception as exc:
        raise CLIError(f"calling {spec}() failed ({type(exc).__name__}: {exc})",
                       "The factory must build the model with no arguments (run with --verbose for the "
                       "traceback).") from exc


def _build(spec: str):
    """``(model, example_inputs or None, torchvision name or None)`` for a non-file --model/--base."""
    from torch import nn
    if ":" in spec:
        built = _import_factory(spec)
        inputs = None
        if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
            built, inputs = built
        if not isinstance(built, nn.Module):
            raise CLIError(f"{spec}() returned a {type(built).__name__}, not an nn.Module",
                           "Return the model (or a (model, example_inputs) pair).", EXIT_USAGE)
        return built, inputs, None
    return _torchvision_model(spec), None, spec


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".dpz", ".safetensors", ".pt", ".pth")) or os.sep in spec and ":" not in spec


def _saved_header(path: str) -> dict | None:
    """The header of a saved file, or None when it cannot be read (the load reports why)."""
    try:
        from . import io as dp_io
        return dp_io.read_header(path)
    except Exception:
        return None


def _guess_base(path: str, header: dict | None) -> list[str]:
    """Architectures a saved file may come from: the ``arch`` its header records (files written
    by ``prune --out``), else the torchvision models of the recorded class whose tensor names
    are exactly the file's (built on the meta device: no memory, no weights)."""
    if not header:
        return []
    if header.get("arch"):
        return [str(header["arch"])]
    cls = header.get("model")
    if not cls:
        return []
    try:
        import torch
        import torchvision
        from . import io as dp_io
        _, _, tensors = dp_io._read_raw(path)
        names = set(tensors) | set(header.get("aliases") or {})
        found = []
        for name in torchvision.models.list_models():
            builder = torchvision.models.get_model_builder(name)
            ret = inspect.signature(builder).return_annotation
            if getattr(ret, "__name__", ret) != cls:
                continue
            with torch.device("meta"):
                model = builder(weights=None)
            mine = {n for n, _ in model.named_parameters(remove_duplicate=False)} | \
                   {n for n, _ in model.named_buffers(remove_duplicate=False)}
            if mine == names:
                found.append(name)
        return found
    except Exception:  # a suggestion only: never fail the command over it
        return []


def _base_hint(path: str, base: str | None) -> str:
    header = _saved_header(path)
    guesses = [g for g in _guess_base(path, header) if g != base]
    if guesses:
        if header.get("arch"):
            return f"The file was saved from {guesses[0]} (its header records it): pass --base {guesses[0]}."
        return f"The file's tensors match {' or '.join(guesses)}: pass --base {guesses[0]}."
    return "Check that --base names the architecture the file was saved from."


def _load_hint(exc, path: str, base: str) -> str:
    """What to do about a failed load, by its cause."""
    from . import io as dp_io
    text = str(exc)
    if isinstance(exc, dp_io.ModelMismatchError):
        return _base_hint(path, base)
    if isinstance(exc, dp_io.FormatError):
        if "checksum" in text:
            return ("The file was changed or damaged after it was saved; write it again "
                    "(depgraph-prune prune ... --out FILE, or dp.save).")
        if "newer than" in text:
            return "Upgrade depgraph-prune (pip install -U depgraph-prune) to read it."
        if "holds a 'state'" in text:
            return "It is a state file (dp.save_state); --model needs a model file (dp.save, prune --out)."
        return "The file is damaged or was not written by depgraph-prune (prune --out, dp.save); write it again."
    if dp_io._NO_SAFETENSORS in text:
        return "Install it: pip install safetensors."
    if "cannot read" in text:
        return "Check the path and the file's permissions."
    return _base_hint(path, base)


def load_model(spec: str, base: str | None = None, submodule: str | None = None):
    """Resolve ``--model`` (and ``--base``): ``(model, example_inputs or None, name for defaults)``.

    A file is loaded with :func:`depgraph_prune.io.load` into a fresh ``base`` model (the pruning
    record is replayed, then the weights are loaded); with ``submodule``, into that submodule of
    it (a file written by ``prune --submodule``)."""
    if os.path.isfile(spec):
        if not base:
            guesses = _guess_base(spec, _saved_header(spec))
            example = f"--base {guesses[0]}" if guesses else "e.g. --base resnet50"
            why = (f" (its header records {' or '.join(guesses)})" if guesses and
                   (_saved_header(spec) or {}).get("arch") else
                   f" (its tensors match {' or '.join(guesses)})" if guesses else "")
            raise CLIError(f"--model {spec!r} is a saved file, and loading it needs --base, the architecture it "
                           f"was saved from{why}", f"Add {example} (or --base package.module:factory).",
                           EXIT_USAGE)
        if os.path.isfile(base):
            raise CLIError(f"--base {base!r} is a file", "--base names the unpruned architecture: a torchvision "
                           "name or package.module:factory.", EXIT_USAGE)
        model, inputs, name = _build(base)
        target = _submodule(model, submodule)
        try:
            from . import io as dp_io
        except ImportError as exc:  # pragma: no cover - io.py ships with the package
            raise CLIError(f"loading a saved model needs depgraph_prune.io, which cannot be imported ({exc})",
                           "Reinstall depgraph_prune.") from exc
        try:
            dp_io.load(spec, target)
        except dp_io.LoadError as exc:
            into = f"{base}.{submodule}" if submodule else base
            raise CLIError(f"cannot load {spec!r} into {into}: {exc}", _load_hint(exc, spec, base)) from exc
        return model, inputs, name
    if _looks_like_path(spec):
        raise CLIError(f"the model file {spec!r} does not exist", "Check the path (files are written by "
                       "'depgraph-prune prune ... --out FILE').", EXIT_USAGE)
    if base:
        raise CLIError(f"--base is only used with a saved file, but --model {spec!r} is not an existing file",
                       "Drop --base, or check the file's path.", EXIT_USAGE)
    return _build(spec)


def _submodule(model, name: str | None):
    """``model.get_submodule(name)`` (the model itself for None), with a suggestion when absent."""
    if not name:
        return model
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        tops = [n for n in names if "." not in n]
        close = difflib.get_close_matches(name, names, n=3)
        raise CLIError(f"--submodule {name!r} is not a submodule of the model",
                       f"Did you mean {' or '.join(close)}?" if close else
                       f"Its top-level submodules: {', '.join(tops[:12])}.", EXIT_USAGE)
    return model.get_submodule(name)


def _example_inputs(args, inputs, name):
    import torch
    if args.input_shape is not None or inputs is None:
        shape = args.input_shape or default_input_shape(name)
        g = torch.Generator().manual_seed(args.seed)
        return torch.randn(*shape, generator=g), shape
    shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else None
    return inputs, shape


def _check_out_path(option: str, path: str | None):
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"the folder of {option} {path!r} does not exist", "Create it first, or write elsewhere.",
                       EXIT_USAGE)


def _check_modules(model, names, option):
    known = {n for n, _ in model.named_modules() if n}
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, sorted(known), n=3)
            raise CLIError(f"{option} {n!r} is not a submodule of the model",
                           f"Did you mean {' or '.join(close)}?" if close else
                           "Use a qualified module name as printed by 'depgraph-prune inspect'.", EXIT_USAGE)


def _split_names(values) -> list[str]:
    out = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


# ============================================================================ latency
from .measure import measure_latency  # noqa: E402  (kept importable from here)


# ============================================================================ calibration
CALIBRATION_HELP = ("batches for the gradient criteria (taylor, hessian): N random batches shaped like the "
                    "example input, or a file written with torch.save holding a tensor of inputs, a list of "
                    "input tensors, a list of (inputs, targets) pairs, or a dict {'inputs': ..., 'targets': ...}. "
                    "Without targets the model's own predictions (argmax of its output) are the targets, so "
                    "the scores measure how much each channel supports what the model currently predicts on "
                    "those inputs; on random inputs that is a check of the pipeline, not of accuracy on your data")


def _calibration(spec: str, model, x, seed: int) -> list[tuple]:
    """``--calibration`` as a list of ``(inputs, targets)`` pairs for ``dp.prune(calibration=)``."""
    import torch
    batches: list = []
    if spec.strip().isdigit():
        n = int(spec)
        if n < 1:
            raise CLIError("--calibration 0: give at least one batch", "Example: --calibration 8.", EXIT_USAGE)
        if not isinstance(x, torch.Tensor):
            raise CLIError("--calibration N makes random batches shaped like the example input, which is not "
                           "one tensor here", "Pass a file of saved inputs: --calibration inputs.pt.", EXIT_USAGE)
        g = torch.Generator().manual_seed(seed + 1)
        batches = [(torch.randn(x.shape, generator=g, dtype=x.dtype), None) for _ in range(n)]
    elif os.path.isfile(spec):
        try:
            obj = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CLIError(f"cannot read --calibration {spec!r} ({type(exc).__name__}: {_first_line(exc)})",
                           "Write it with torch.save(tensor_or_list, path) (plain tensors only).") from exc
        if isinstance(obj, dict) and "inputs" in obj:
            ins, tgs = obj["inputs"], obj.get("targets")
            ins = [ins] if isinstance(ins, torch.Tensor) else list(ins)
            tgs = [None] * len(ins) if tgs is None else ([tgs] if isinstance(tgs, torch.Tensor) else list(tgs))
            if len(tgs) != len(ins):
                raise CLIError(f"--calibration {spec!r}: {len(ins)} input batches but {len(tgs)} target batches",
                               "Give one targets tensor per inputs tensor.", EXIT_USAGE)
            batches = list(zip(ins, tgs))
        elif isinstance(obj, torch.Tensor):
            batches = [(obj, None)]
        elif isinstance(obj, (list, tuple)) and obj:
            for item in obj:
                if isinstance(item, torch.Tensor):
                    batches.append((item, None))
                elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], torch.Tensor):
                    batches.append((item[0], item[1]))
                else:
                    batches = []
                    break
        if not batches:
            raise CLIError(f"--calibration {spec!r} holds a {type(obj).__name__} that is not a tensor, a list of "
                           "tensors or (inputs, targets) pairs, or a dict with 'inputs'",
                           "See --help for the layouts it reads.", EXIT_USAGE)
    else:
        raise CLIError(f"--calibration {spec!r} is neither a number of batches nor an existing file",
                       "Example: --calibration 8 (random batches) or --calibration inputs.pt.", EXIT_USAGE)
    out = []
    with torch.no_grad():
        for inputs, targets in batches:
            if targets is None:
                try:
                    pred = model(inputs)
                except Exception as exc:
                    raise CLIError(f"the model does not run on a --calibration batch of shape "
                                   f"{tuple(inputs.shape)} ({type(exc).__name__}: {_first_line(exc)})",
                                   "Save inputs the model accepts.") from exc
                if not isinstance(pred, torch.Tensor) or pred.dim() != 2:
                    raise CLIError("without targets, --calibration uses the model's predictions as targets, which "
                                   "needs an output of shape (batch, classes)",
                                   "Save (inputs, targets) pairs with a target the loss (cross-entropy) reads, or "
                                   "use the Python API with your loss_fn.", EXIT_USAGE)
                targets = pred.argmax(1)
            out.append((inputs, targets))
    return out


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _progress_on(args) -> bool:
    """--progress / --no-progress; by default only where stderr is a terminal."""
    if args.progress is not None:
        return args.progress
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# ============================================================================ subcommands
def _common_model_args(p):
    p.add_argument("--model", "-m", required=True,
                   help="torchvision model name (random weights), package.module:factory or file.py:factory "
                        "(your model; the factory takes no arguments and returns the model or a "
                        "(model, example_inputs) pair), or a file saved with --out (then also give --base)")
    p.add_argument("--base", help="with a saved file as --model: the unpruned architecture it was saved from "
                                  "(torchvision name or package.module:factory)")
    p.add_argument("--submodule", metavar="NAME", help="work on this submodule of the model only (e.g. backbone "
                                                        "of a detector); --input-shape is then its input")
    p.add_argument("--input-shape", type=parse_shape, metavar="N,C,H,W",
                   help="shape of the random example input (default 1,3,224,224; 1,3,299,299 for Inception; "
                        "1,3,8,112,112 for video models)")
    p.add_argument("--ignore", action="append", metavar="MODULE", default=[],
                   help="module whose output channels are never pruned (repeat it or separate names by commas)")
    p.add_argument("--freeze", action="append", metavar="MODULE", default=[],
                   help="module none of whose widths may change (inputs and outputs); repeatable")
    p.add_argument("--leaf", action="append", metavar="MODULE", default=[],
                   help="submodule to keep whole when tracing (not traced into); repeatable")
    p.add_argument("--attention", choices=("heads", "head_dim"), default="heads",
                   help="nn.MultiheadAttention granularity: remove whole heads (default) or the same dims "
                        "of every head")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and input (default 0)")
    p.add_argument("--threads", type=_positive_int, help="torch threads to use (default: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a line on stderr per slow stage (trace, build, score, plan, surgery, verify, count); "
                        "default: on when stderr is a terminal")


def _importance_choices() -> str:
    from . import importance as imp
    plain = [k for k in sorted(imp.NAMED) if not getattr(imp.NAMED[k](), "needs_gradients", False)]
    grad = [k for k in sorted(imp.NAMED) if k not in plain]
    return f"{', '.join(plain)}; with --calibration also {', '.join(grad)}"


def cmd_prune(args) -> int:
    import torch
    import depgraph_prune as dp
    from . import importance as imp
    _check_out_path("--out", args.out)
    _check_out_path("--plot", args.plot)
    key = args.importance.strip().lower()
    if key not in imp.NAMED:
        close = difflib.get_close_matches(key, sorted(imp.NAMED), n=2)
        raise CLIError(f"unknown importance {args.importance!r}",
                       (f"Did you mean {' or '.join(close)}? " if close else "") +
                       f"Use one of {_importance_choices()}.", EXIT_USAGE)
    needs_grad = getattr(imp.NAMED[key](), "needs_gradients", False)
    if needs_grad and args.calibration is None:
        raise CLIError(f"importance {key!r} needs gradients from calibration data",
                       "Add --calibration N (N random batches; see --help for what that measures) or "
                       "--calibration inputs.pt (your saved inputs).", EXIT_USAGE)
    if args.calibration is not None and not needs_grad:
        raise CLIError(f"--calibration is only read by the gradient criteria (taylor, hessian), not by {key!r}",
                       "Drop --calibration, or pick --importance taylor or hessian.", EXIT_USAGE)
    torch.manual_seed(args.seed)
    whole, inputs, name = load_model(args.model, args.base, args.submodule)
    whole.eval()
    model = _submodule(whole, args.submodule)
    if args.submodule:
        inputs, name = None, None  # the factory's example input is the whole model's
    x, shape = _example_inputs(args, inputs, name)
    if key != "random" and any(p.is_meta for p in model.parameters()):
        raise CLIError(f"the model's weights are on the meta device (they have no values), so --importance {key} "
                       "has nothing to rank", "Pass --importance random to plan the pruning of a meta model, "
                       "or build the model with real weights.", EXIT_USAGE)
    ignored = _split_names(args.ignore)
    _check_modules(model, ignored, "--ignore")
    leaves = _split_names(args.leaf)
    _check_modules(model, leaves, "--leaf")
    frozen = _split_names(args.freeze)
    _check_modules(model, frozen, "--freeze")
    ratios = None
    if args.ratios:
        try:
            ratios = parse_ratios(args.ratios, model)
        except ValueError as exc:
            raise CLIError(f"--ratios {args.ratios!r}: {exc}", "Write name patterns like '*layer*.conv1:0.5,fc:0' "
                           "(see --help).", EXIT_USAGE) from exc
    if args.ratio is None and ratios is None and args.target_speedup is None and args.target_macs is None \
            and args.target_params is None:
        args.ratio = 0.5
    calibration = _calibration(args.calibration, model, x, args.seed) if needs_grad else None
    lat_before = measure_latency(model, x, args.repeat) if args.latency else None
    targets = {k: v for k, v in (("target_speedup", args.target_speedup), ("target_macs", args.target_macs),
                                 ("target_params", args.target_params)) if v is not None}
    result = _traced(lambda: dp.prune(model, x, ratio=args.ratio, importance=key, ratios=ratios,
                      global_ranking=args.global_ranking, max_ratio=args.max_ratio, **targets,
                      round_to=args.round_to, min_channels=args.min_channels,
                      steps=args.steps, progress=_progress_on(args), ignored_layers=ignored,
                      leaf_modules=leaves, attention=args.attention, calibration=calibration, verify=args.verify,
                      **({"frozen": frozen} if frozen else {})))
    lat_after = measure_latency(model, x, args.repeat) if args.latency else None
    from .prune import OPTIMIZER_NOTE
    result.notes = [n for n in result.notes if n != OPTIMIZER_NOTE]  # no optimizer on the command line
    if args.plot:
        _plot(lambda: __import__("depgraph_prune.viz", fromlist=["plot_widths"]).plot_widths(
            result, args.plot, title=f"{args.model}: widths before and after pruning"), "--plot")
    if args.out:
        from . import io as dp_io
        try:
            dp_io.save(model, args.out, arch=args.base or args.model)
        except OSError as exc:
            raise CLIError(f"cannot write {args.out!r} ({exc})", "Check the path and the permissions.") from exc
    if args.json:
        out = {"model": args.model, "base": args.base, "input_shape": list(shape) if shape else None,
               "importance": key, "ratio": args.ratio, "ratios": ratios, "target_speedup": args.target_speedup,
               "target_macs": args.target_macs, "target_params": args.target_params,
               "global_ranking": args.global_ranking, "submodule": args.submodule,
               "calibration": args.calibration, "settings": result.settings,
               "before": {"macs": result.before.macs, "params": result.before.params},
               "after": {"macs": result.after.macs, "params": result.after.params},
               "speedup": result.speedup, "params_ratio": result.after.params / max(result.before.params, 1),
               "groups_pruned": len(result.widths),
               "widths": [{"name": n, "before": a, "after": b} for n, a, b in result.widths],
               "frozen": [{"name": n, "channels": c, "reason": r} for n, c, r in result.frozen],
               "notes": list(result.notes),
               "verification": [{"dtype": v.dtype, "tolerance": v.tolerance, "max_diff": v.max_diff,
                                 "exact_groups": v.exact, "structural_groups": len(v.structural),
                                 "frozen": {str(k): r for k, r in v.guilty.items()}, "skipped": v.skipped}
                                for v in result.verification],
               "latency_ms": None if lat_before is None else
               {"before": lat_before, "after": lat_after, "speedup": lat_before / max(lat_after, 1e-12),
                "threads": 1, "repeat": args.repeat},
               "out": args.out, "plot": args.plot}
        print(json.dumps(out, indent=2))
        return EXIT_OK
    shape_s = "x".join(map(str, shape)) if shape else "the factory's example input"
    what = f"{args.model}.{args.submodule}" if args.submodule else args.model
    print(f"{what} on {shape_s}, importance {key}")
    print(result)
    if lat_before is not None:
        print(f"CPU latency, 1 thread, median of {args.repeat}: {lat_before:.2f} ms -> {lat_after:.2f} ms "
              f"({lat_before / max(lat_after, 1e-12):.2f}x)")
    if args.plot:
        print(f"widths plot written to {args.plot}")
    if args.out:
        base = args.base or args.model
        sub = f" --submodule {args.submodule}" if args.submodule else ""
        into = f"<fresh {base} model>.{args.submodule}" if args.submodule else f"<fresh {base} model>"
        print(f"pruned model written to {args.out} (reload: depgraph-prune inspect --model {args.out} "
              f"--base {base}{sub}, or dp.load({args.out!r}, {into}))")
    return EXIT_OK


def _traced(fn):
    """Run ``fn``; a trace failure caused by the example input gets the command-line hint."""
    from .errors import TraceError
    try:
        return fn()
    except TraceError as exc:
        if "example_inputs" in str(exc):
            raise CLIError(str(exc).replace("Check that example_inputs has the shape and dtype the model expects.",
                                            "").strip(),
                           "Pass an --input-shape the model accepts (default 1,3,224,224).") from exc
        raise


def _plot(fn, option):
    try:
        fn()
    except ImportError as exc:
        raise CLIError(f"{option} needs matplotlib, which is not installed",
                       "Install it: pip install 'depgraph-prune[plot]'.") from exc
    except OSError as exc:
        raise CLIError(f"cannot write the picture for {option} ({exc})", "Check the path.") from exc


def _find_group(graph, model, spec: str):
    from .errors import PruningError
    if spec.lstrip("-").isdigit():
        i = int(spec)
        if not 0 <= i < len(graph.groups):
            raise CLIError(f"--group {i} is out of range: the graph has {len(graph.groups)} groups (0 to "
                           f"{len(graph.groups) - 1})", "Run inspect without --group to list them.", EXIT_USAGE)
        return graph.groups[i]
    names = [n for n, _ in model.named_modules() if n]
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=3)
        raise CLIError(f"--group {spec!r} is not a submodule of the model",
                       (f"Did you mean {' or '.join(close)}? " if close else "") +
                       "Give a module name (its output channels' group) or a group index.", EXIT_USAGE)
    try:
        return graph.group_of(spec)
    except PruningError as exc:
        raise CLIError(str(exc), "Pick a layer with output channels (a conv, linear or norm layer), or a "
                       "group index.", EXIT_USAGE) from exc


def _group_json(model, g) -> dict:
    from .viz import member_role
    return {"index": g.index, "size": g.size, "frozen": g.n_frozen, "prunable": g.prunable, "reason": g.reason,
            "frozen_reasons": dict(g.frozen_reasons),
            "members": [{"name": m.name, "dim": m.dim, "kind": m.kind, "positions": m.size,
                         "role": member_role(model, m)} for m in g.members]}


def cmd_inspect(args) -> int:
    import torch
    import depgraph_prune as dp
    from . import viz
    _check_out_path("--draw", args.draw)
    _check_out_path("--dot", args.dot)
    torch.manual_seed(args.seed)
    whole, inputs, name = load_model(args.model, args.base, args.submodule)
    whole.eval()
    model = _submodule(whole, args.submodule)
    if args.submodule:
        inputs, name = None, None
    x, shape = _example_inputs(args, inputs, name)
    ignored = _split_names(args.ignore)
    _check_modules(model, ignored, "--ignore")
    leaves = _split_names(args.leaf)
    _check_modules(model, leaves, "--leaf")
    frozen = _split_names(args.freeze)
    _check_modules(model, frozen, "--freeze")
    from . import progress
    with progress.reporting(_progress_on(args)):
        graph = _traced(lambda: dp.build_graph(model, x, ignored_layers=ignored, leaf_modules=leaves,
                                               attention=args.attention, **({"frozen": frozen} if frozen else {})))
        with progress.stage("count"):
            ops = dp.count_ops(model, x)
    group = _find_group(graph, model, args.group) if args.group is not None else None
    if args.draw:
        if group is not None:
            _plot(lambda: viz.draw_group(graph, group, args.draw), "--draw")
        else:
            _plot(lambda: viz.draw_graph(graph, args.draw), "--draw")
    if args.dot:
        try:
            viz.write_dot(graph, args.dot, group)
        except OSError as exc:
            raise CLIError(f"cannot write {args.dot!r} ({exc})", "Check the path and the permissions.") from exc
    if args.json:
        groups = [group] if group is not None else graph.groups
        out = {"model": args.model, "input_shape": list(shape) if shape else None, "macs": ops.macs,
               "params": ops.params, "n_groups": len(graph.groups), "n_prunable": len(graph.prunable_groups),
               "groups": [_group_json(model, g) for g in groups], "notes": list(graph.notes),
               "draw": args.draw, "dot": args.dot}
        print(json.dumps(out, indent=2))
        return EXIT_OK
    shape_s = "x".join(map(str, shape)) if shape else "the factory's example input"
    print(f"{args.model} on {shape_s}: {ops}")
    if group is not None:
        print(group)
    else:
        print(graph.summary(max_members=args.max_members))
        for note in graph.notes:
            print(f"note: {note}")
    if args.draw:
        print(f"picture written to {args.draw}")
    if args.dot:
        print(f"DOT written to {args.dot} (render: dot -Tpng {args.dot} -o graph.png)")
    return EXIT_OK


def cmd_zoo(args) -> int:
    import torch
    from . import zoo
    _check_out_path("--out", args.out)
    torch.set_num_threads(1)
    todo = zoo.models(args.kind, args.family)
    if not todo:
        raise CLIError(f"no {args.kind if args.kind != 'all' else ''} model name contains {args.family!r}".replace("  ", " "),
                       "Check --family (a substring of the torchvision names) and --kind.", EXIT_USAGE)
    rows, passed = zoo.sweep(todo, args.ratio, args.min_reduction, args.max_size, progress=not args.no_progress,
                             log=sys.stderr)
    text = zoo.markdown(rows, passed, len(todo), ratio=args.ratio, min_reduction=args.min_reduction,
                        command=zoo.command_line(f"{PROG} zoo", args.kind, args.ratio, args.family, args.max_size))
    if args.out:
        try:
            with open(args.out, "w") as f:
                f.write(text)
        except OSError as exc:
            raise CLIError(f"cannot write {args.out!r} ({exc})", "Check the path and the permissions.") from exc
        print(f"{passed}/{len(todo)} pass; table written to {args.out}")
    else:
        sys.stdout.write(text)
    return EXIT_OK if passed == len(todo) or not args.strict else EXIT_FAILURE


# ============================================================================ parser and main
def build_parser() -> argparse.ArgumentParser:
    verbose = _Parser(add_help=False)
    verbose.add_argument("--verbose", "-v", action="store_true", help="print the full traceback of an error")
    p = _Parser(prog=PROG, parents=[verbose], formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Structural channel pruning for PyTorch models (torch.fx dependency graphs).",
                epilog="Examples:\n"
                       "  depgraph-prune prune --model resnet50 --ratio 0.5 --out resnet50_pruned.dpz\n"
                       "  depgraph-prune prune --model resnet50 --target-speedup 2 --latency --json\n"
                       "  depgraph-prune inspect --model resnet18 --group layer1.0.conv1 --draw group.png\n"
                       "  depgraph-prune inspect --model resnet50_pruned.dpz --base resnet50\n"
                       "  depgraph-prune zoo --family mobilenet --kind classification --out zoo.md\n\n"
                       "Exit status: 0 ok, 1 the work failed, 2 the command line is wrong.")
    try:
        from . import __version__
    except ImportError:  # pragma: no cover
        __version__ = "?"
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{prune,inspect,zoo}")

    pr = sub.add_parser("prune", parents=[verbose], help="prune a model and print MACs / params before and after",
                        description="Prune a model in one call (dp.prune) and print the before/after table.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="--ratios formats: name patterns '*layer*.conv1:0.5,fc:0' (last match wins), "
                               "layer ranges '[0:0, 1-9:0.3]', ResNet stage lists '[0, .3, .3, .3, .14]'.")
    _common_model_args(pr)
    how = pr.add_mutually_exclusive_group()
    how.add_argument("--ratio", "-r", type=parse_ratio,
                     help="fraction of the channels of every prunable group to remove, in [0, 1) (default 0.5 "
                          "when neither --ratios nor --target-speedup is given)")
    how.add_argument("--target-speedup", type=_speedup, metavar="X",
                     help="search the ratio so that MACs fall by this factor (> 1)")
    how.add_argument("--target-macs", type=parse_count, metavar="N",
                     help="search the ratio so that the pruned model does N MACs (e.g. 1.5G)")
    how.add_argument("--target-params", type=parse_count, metavar="N",
                     help="search the ratio so that the pruned model has N parameters (e.g. 5M)")
    pr.add_argument("--ratios", metavar="SPEC", help="per-layer ratios (see below); other groups get --ratio, or 0")
    pr.add_argument("--importance", "-i", default="l1",
                    help="channel ranking: l1 (default), l2, fpgm, lamp, bn_scale, random; taylor and hessian "
                         "(gradient criteria) with --calibration")
    pr.add_argument("--calibration", metavar="N|FILE", help=CALIBRATION_HELP)
    pr.add_argument("--global-ranking", action="store_true", help="one threshold over all groups")
    pr.add_argument("--max-ratio", type=parse_ratio, default=0.9, help="with --global-ranking: most of any group "
                                                                       "that may go (default 0.9)")
    pr.add_argument("--round-to", type=_positive_int, help="kept channel counts are multiples of this")
    pr.add_argument("--min-channels", type=_positive_int, default=1, help="keep at least this many channels per group")
    pr.add_argument("--steps", type=_positive_int, default=1, help="reach the target in this many rounds")
    pr.add_argument("--no-verify", dest="verify", action="store_const", const=False, default=True,
                    help="skip the numerical check of the surgery (by default the pruned model is compared with "
                         "the original whose removed channels are zeroed; groups that fail are kept)")
    pr.add_argument("--verify-raise", dest="verify", action="store_const", const="raise",
                    help="fail instead of keeping the groups whose removal changes the output")
    pr.add_argument("--latency", action="store_true", help="also measure CPU latency before and after "
                                                           "(median, 1 thread)")
    pr.add_argument("--repeat", type=_positive_int, default=10, help="timed runs per latency measurement (default 10)")
    pr.add_argument("--plot", metavar="PNG", help="save a bar chart of the widths before and after")
    pr.add_argument("--out", "-o", metavar="FILE", help="save the pruned model (pruning record + weights), e.g. "
                                                         "pruned.dpz; reload with --model FILE --base ARCH or dp.load")
    pr.set_defaults(func=cmd_prune)

    ins = sub.add_parser("inspect", parents=[verbose], help="print the groups of coupled channels",
                         description="Build the dependency graph and print its groups (graph.summary()), one "
                                     "group, or draw them.")
    _common_model_args(ins)
    ins.add_argument("--group", "-g", metavar="MODULE|INDEX",
                     help="print only the group of this module's output channels (or group number INDEX)")
    ins.add_argument("--draw", metavar="PNG", help="draw the dependency graph (or, with --group, the group)")
    ins.add_argument("--dot", metavar="FILE", help="write the graph (or, with --group, the group) as Graphviz DOT")
    ins.add_argument("--max-members", type=_positive_int, default=4, help="members listed per group in the table")
    ins.set_defaults(func=cmd_inspect)

    z = sub.add_parser("zoo", parents=[verbose], help="coverage sweep over the torchvision zoo (markdown table)",
                       description="Prune every torchvision model of a kind / family in one call each and write a "
                                   "markdown table (the logic of bench/zoo.py).")
    from_kinds = ["classification", "segmentation", "detection", "video", "all"]
    z.add_argument("--kind", default="all", choices=from_kinds, help="model kind (default all)")
    z.add_argument("--family", default="", help="only models whose name contains this")
    z.add_argument("--ratio", type=parse_ratio, default=0.5, help="ratio for every model (default 0.5)")
    z.add_argument("--min-reduction", type=parse_ratio, default=0.25,
                   help="pass needs MACs down by at least this (default 0.25)")
    z.add_argument("--max-size", type=_positive_int, help="cap CNN input resolution (faster sweeps)")
    z.add_argument("--out", "-o", metavar="MD", help="write the table here (default: print it)")
    z.add_argument("--strict", action="store_true", help="exit with status 1 when a model fails")
    z.add_argument("--no-progress", action="store_true", help="no progress bar")
    z.set_defaults(func=cmd_zoo)
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or "-v" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise CLIError("no command given", f"Use one of: {PROG} prune, {PROG} inspect, {PROG} zoo.", EXIT_USAGE)
        if getattr(args, "threads", None):
            import torch
            torch.set_num_threads(args.threads)
        return args.func(args)
    except CLIError as exc:
        if verbose:
            traceback.print_exc()
        print(_format_error(exc.message, exc.hint), file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        from .errors import PruningError
        if isinstance(exc, PruningError):  # TraceError, SurgeryError, LoadError: clear messages already
            print(_format_error(str(exc), "" if verbose else "(Run with --verbose for the traceback.)"),
                  file=sys.stderr)
        else:
            print(_format_error(f"{type(exc).__name__}: {exc}",
                                "This looks like a bug; rerun with --verbose and report the traceback."),
                  file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
