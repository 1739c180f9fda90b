"""``RegularizedPruner`` under ``DistributedDataParallel``: two CPU processes (gloo backend) train
with a different data shard each; after every method's schedule the chosen channels, penalties,
schedule state and weights agree bit for bit across ranks, and so do the pruned models.

The processes are started with ``torch.multiprocessing`` (spawn) on a free localhost port, with a
process-group timeout and a hard deadline in the parent, so a stuck collective fails the test
instead of hanging CI.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

WORLD = 2
DEADLINE_S = 150  # hard limit for the whole spawn (normally ~10-20 s)
PG_TIMEOUT_S = 60  # a collective waiting longer than this raises in the worker

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available"),
              pytest.mark.usefixtures("one_thread")]


def _methods():
    from depgraph_prune.regularize import TPP, GReg1, GReg2, GrowingReg
    # small schedules: every method reaches "done" (or, GrowingReg, runs a while) in ~20-40 steps
    return {
        "greg1": (lambda: GReg1(delta=0.1, interval=2, stabilize=6, targets="group"), None),
        "greg2": (lambda: GReg2(delta=0.1, interval=2, stabilize=6, pick_delta=2e-3, pick_ceiling=1e-2), None),
        "tpp": (lambda: TPP(delta=0.1, interval=2, stabilize=12, stage_interval=3), None),
        "growing_reg": (lambda: GrowingReg(delta=0.05, interval=2), 20),
    }


def _batch(step: int, rank: int, shape, n: int = 16):
    g = torch.Generator().manual_seed(10_000 * rank + step)  # a different shard on every rank
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                         nn.Linear(24, 10))


def _run(model_fn, method, steps, rank, ddp_on: bool, world: int = WORLD, shards=None):
    """Train with the pruner (through DDP when ``ddp_on``), prune; return what the ranks compare.
    ``shards``: without DDP, the ranks whose batches are concatenated into one (the reference)."""
    from depgraph_prune.regularize import RegularizedPruner
    torch.manual_seed(1000 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = model_fn()
    net = nn.parallel.DistributedDataParallel(model) if ddp_on else model
    x1 = torch.zeros(1, 1, 8, 8)
    pruner = RegularizedPruner(net, x1, method, ratio=0.5)  # a DDP wrapper is unwrapped
    assert pruner.model is model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    t = 0
    while not pruner.done and (steps is None or t < steps):
        if shards is None:
            x, y = _batch(t, rank, (1, 8, 8))
        else:
            parts = [_batch(t, r, (1, 8, 8)) for r in shards]
            x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        loss = F.cross_entropy(net(x), y) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        pruner.regularize()
        opt.step()
        pruner.step()
        t += 1
        assert t < 200, "schedule did not finish"
    out = {"t": pruner.t, "phase": pruner.phase, "pruned_channels": pruner.pruned_channels,
           "lambdas": pruner.lambdas, "digest": pruner.state_digest(),
           "weights_before_prune": {k: v.detach().clone() for k, v in model.named_parameters()}}
    if ddp_on:
        out["synced_state"] = pruner.is_synchronized()
        out["synced_weights"] = pruner.is_synchronized(include_weights=True)
        # BN running statistics are per rank until broadcast (DDP syncs them before a forward)
        out["synced_buffers_before"] = pruner.is_synchronized(include_buffers=True)
        pruner.broadcast_buffers()
        out["synced_buffers_after"] = pruner.is_synchronized(include_weights=True, include_buffers=True)
    result = pruner.prune()
    out["digest_weights"] = pruner.state_digest(include_weights=True, include_buffers=True)
    out["pruned_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out["macs_after"] = result.after.macs
    with torch.no_grad():
        out["logits"] = model.eval()(_batch(999, 0, (1, 8, 8))[0])
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    try:
        from depgraph_prune.models import digits_cnn
        results = {}
        for name, (make, steps) in _methods().items():
            results[name] = _run(lambda: digits_cnn(width=8), make(), steps, rank, ddp_on=True)
        # a BN-free model: DDP over 2 shards == one process on the concatenated batch
        results["mlp_greg1"] = _run(_mlp, _methods()["greg1"][0](), None, rank, ddp_on=True)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out_dir: str) -> None:
    ctx = mp.spawn(_worker, args=(WORLD, _free_port(), out_dir), nprocs=WORLD, join=False)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"DDP workers did not finish within {DEADLINE_S} s")
    except Exception as exc:
        errs = [open(os.path.join(out_dir, f)).read() for f in sorted(os.listdir(out_dir)) if f.endswith(".err")]
        raise AssertionError(f"DDP workers failed: {exc}\n" + "\n".join(errs)) from exc
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _spawn(str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _equal_dicts(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["greg1", "greg2", "tpp", "growing_reg"])
def test_ranks_agree(ddp_results, name):
    r0, r1 = ddp_results[0][name], ddp_results[1][name]
    for r in (r0, r1):
        assert r["synced_state"] and r["synced_weights"] and r["synced_buffers_after"]
        assert not r["synced_buffers_before"]  # digits_cnn has BN: its running stats are per rank
    assert r0["t"] == r1["t"] and r0["phase"] == r1["phase"]
    if name != "growing_reg":
        assert r0["phase"] == "done"
    # chosen channels (masks), penalties, schedule state
    assert r0["pruned_channels"] == r1["pruned_channels"]
    assert all(v is not None and len(v) > 0 for v in r0["pruned_channels"].values()) or name == "growing_reg"
    assert _equal_dicts(r0["lambdas"], r1["lambdas"])
    assert max(float(v.max()) for v in r0["lambdas"].values()) > 0
    assert r0["digest"] == r1["digest"]
    # weights after the last step, then the pruned models (parameters and BN buffers)
    assert _equal_dicts(r0["weights_before_prune"], r1["weights_before_prune"])
    assert _equal_dicts(r0["pruned_state"], r1["pruned_state"])
    assert r0["digest_weights"] == r1["digest_weights"]
    assert r0["macs_after"] == r1["macs_after"]
    assert torch.equal(r0["logits"], r1["logits"])


def test_ddp_matches_single_process_on_the_full_batch(ddp_results):
    """Averaged gradients of 2 shards == gradient of the mean loss on their concatenation (no BN):
    the regularized DDP run equals a single-process run, so the penalty is applied exactly once."""
    ref = _run(_mlp, _methods()["greg1"][0](), None, rank=0, ddp_on=False, shards=list(range(WORLD)))
    got = ddp_results[0]["mlp_greg1"]
    assert got["t"] == ref["t"] and got["pruned_channels"] == ref["pruned_channels"]
    for k, v in ref["weights_before_prune"].items():
        assert torch.allclose(got["weights_before_prune"][k], v, rtol=1e-4, atol=1e-6), k
    for k, v in ref["pruned_state"].items():
        assert got["pruned_state"][k].shape == v.shape and torch.allclose(got["pruned_state"][k], v, rtol=1e-4, atol=1e-6), k


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
