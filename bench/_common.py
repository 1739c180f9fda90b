"""Shared helpers of the ``bench/`` scripts: single-threaded setup, the model list, medians,
tables, machine info, and a subprocess *worker* that runs timed tasks with a per-task timeout.

The machine these numbers come from is shared and noisy: every script runs with one thread,
alternates the contenders run by run, takes medians and reports *ratios* measured side by side.

Worker protocol: the parent starts ``python <script> --worker`` and sends one JSON request per
line on its stdin (``{"task": name, ...}``); the worker answers one JSON line per request on its
*original* stdout (its own ``sys.stdout`` is redirected to stderr, so library prints cannot break
the protocol). A request that does not answer within its timeout gets the worker killed and
restarted; the caller records "did not finish in T s".
"""
from __future__ import annotations

import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable

import torch

# --------------------------------------------------------------------------- setup / machine

def single_thread() -> None:
    """One intra-op and one inter-op thread (the machine is shared; see the module docstring)."""
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (can only be set once per process)
        pass


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions() -> dict[str, str]:
    import torchvision
    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        from importlib.metadata import version
        out["torch-pruning"] = version("torch-pruning")
    except Exception:
        out["torch-pruning"] = "not installed"
    try:
        import depgraph_prune
        out["depgraph_prune"] = os.path.dirname(os.path.abspath(depgraph_prune.__file__))
    except Exception:
        out["depgraph_prune"] = "not importable"
    return out


def machine_line() -> str:
    v = versions()
    load = ""
    try:
        load = " · load avg at start " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    return (f"{time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} CPUs ({cpu_model()}) · 1 thread{load} · "
            f"python {v['python']} · torch {v['torch']} · torchvision {v['torchvision']} · "
            f"torch-pruning {v['torch-pruning']} · depgraph_prune from {v['depgraph_prune']}")


# --------------------------------------------------------------------------- models

#: name → (input resolution, qualified name of the classifier Linear)
MODELS: dict[str, tuple[int, str]] = {
    "resnet50": (224, "fc"),
    "densenet121": (224, "classifier"),
    "densenet201": (224, "classifier"),
    "efficientnet_b0": (224, "classifier.1"),
    "regnet_y_16gf": (224, "fc"),
    "convnext_tiny": (224, "classifier.2"),
    "vit_b_16": (224, "heads.head"),
    "swin_t": (224, "head"),
    "mobilenet_v2": (224, "classifier.1"),
}


def make_model(name: str, size: int | None = None):
    """A fresh torchvision model (random weights, eval mode) and an example input 1×3×S×S."""
    import torchvision
    res, cls = MODELS.get(name, (224, ""))
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    return model, torch.randn(1, 3, size or res, size or res), cls


# --------------------------------------------------------------------------- statistics / tables

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_s(x, nd=2) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    return f"{x:.{nd}f}"


def fmt_ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def short_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg[:160]}"


# --------------------------------------------------------------------------- worker

def serve(tasks: dict[str, Callable[..., dict]], warmup: Callable[[], None] | None = None) -> None:
    """Worker main loop: read JSON requests on stdin, answer JSON lines on the original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to stderr
    sys.stdout = sys.stderr
    single_thread()
    import warnings
    warnings.filterwarnings("ignore")
    if warmup is not None:
        try:
            warmup()
        except Exception:
            traceback.print_exc()
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        name = req.pop("task")
        try:
            res = tasks[name](**req)
            res.setdefault("ok", True)
        except Exception as exc:
            traceback.print_exc()
            res = {"ok": False, "error": short_error(exc)}
        out.write(json.dumps(res) + "\n")


class Worker:
    """A ``python script --worker`` subprocess; ``call`` returns the task's dict, or
    ``{"ok": False, "timeout": True, ...}`` when it did not answer in time (the worker is then
    killed and restarted on the next call)."""

    def __init__(self, script: str, log_path: str | None = None, start_timeout: float = 300.0):
        self.script = script
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc = None
        self.q: queue.Queue = queue.Queue()

    def _start(self):
        log = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, self.script, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.q = queue.Queue()
        proc, q = self.proc, self.q

        def pump():
            for line in proc.stdout:
                q.put(line)
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
        first = self._read(self.start_timeout)
        if not (isinstance(first, dict) and first.get("ready")):
            self.close()
            raise RuntimeError(f"worker {self.script} did not start: {first}")

    def _read(self, timeout):
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            return "timeout"
        if line is None:
            return "died"
        return json.loads(line)

    def call(self, task: str, timeout: float, **kw) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps({"task": task, **kw}) + "\n")
        self.proc.stdin.flush()
        res = self._read(timeout)
        if res == "timeout":
            self.close()
            return {"ok": False, "timeout": True, "error": f"did not finish in {timeout:.0f} s"}
        if res == "died":
            code = self.proc.poll()
            self.close()
            return {"ok": False, "error": f"worker died (exit code {code})"}
        return res

    def close(self):
        if self.proc is not None:
            try:
                self.proc.kill()  # our own child, by its handle
                self.proc.wait(timeout=30)
            except Exception:
                pass
            self.proc = None


def run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
