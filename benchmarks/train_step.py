"""One GPT training step (forward, backward, AdamW) in minigrad against the same model
written in PyTorch, on the same card in the same run, and where minigrad's step spends
its time.

    python benchmarks/train_step.py                 # shakespeare_char shape (GPU)
    python benchmarks/train_step.py --iters 20 --batch-size 8 --device cpu

The model is nanoGPT's shakespeare_char: 6 layers, 6 heads, 384 wide, block 256,
batch 64, vocabulary 65, dropout 0.2, AdamW(betas 0.9/0.99, weight decay 0.1 on
matrices). ms/iter is wall time per step from the batch upload to `loss.item()`
(which waits for the device), the median over --iters steps after warm-up, as
nanoGPT's train.py reports it. PyTorch runs the same model eager in f32 and eager
under bf16 autocast, with its fused AdamW (what nanoGPT uses on CUDA).

minigrad's step is timed twice: as `examples/train_gpt.py` runs it on the GPU (captured by
`mg.jit` on its second call and replayed after that) and with the graph built in Python
at every step (`--no-jit` times only that one).

The profile then runs one more minigrad step (the Python-graph one) twice: once as usual, timing only the
host (Python) part up to the point where everything is queued, and once with a
device synchronize after every graph node, summing the time per kind of node.
"""
from __future__ import annotations

import argparse
import collections
import math
import statistics
import sys
import time

import numpy as np

from common import HAVE_TORCH, report, torch

import minigrad as mg
from minigrad import Tensor, lazy

CONFIG = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, vocab=65,
              dropout=0.2, lr=1e-3, weight_decay=0.1)


def batches(cfg, n, seed=0):
    """n (x, y) pairs of random tokens (never zeros), as NumPy arrays."""
    rng = np.random.default_rng(seed)
    shape = (cfg["batch_size"], cfg["block_size"] + 1)
    return [(d[:, :-1], d[:, 1:]) for d in (rng.integers(0, cfg["vocab"], shape) for _ in range(n))]


# ------------------------------------------------------------------------ minigrad --

def minigrad_setup(cfg, device, attention="auto", jit=True):
    mg.manual_seed(0)
    model = mg.nn.GPT(cfg["vocab"], cfg["block_size"], cfg["n_layer"], cfg["n_head"],
                      cfg["n_embd"], dropout=cfg["dropout"], impl=attention).to(device)
    params = model.parameters()
    opt = mg.optim.AdamW([
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ], lr=cfg["lr"], betas=(0.9, 0.99))

    def train_step(x, y):
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss
    run = mg.jit(train_step) if jit else train_step

    def step(x, y):
        return run(Tensor(x, device=device), Tensor(y, device=device)).item()
    return step


def minigrad_profile(step, x, y, device):
    """Host-only time of one step, and device time per kind of node (synchronizing
    after every node, so the kinds' sum exceeds a normal step's time)."""
    backend = mg.device.get_backend(device)
    run = lazy._run
    host = {}

    def run_host(lb):                   # note when the last node was queued
        out = run(lb)
        host["last"] = time.perf_counter()
        return out
    lazy._run = run_host
    try:
        backend.synchronize()
        t0 = time.perf_counter()
        step(x, y)
        host_ms = (host["last"] - t0) * 1e3
    finally:
        lazy._run = run

    per_kind, counts = collections.defaultdict(float), collections.Counter()

    def run_timed(lb):
        backend.synchronize()
        t = time.perf_counter()
        out = run(lb)
        backend.synchronize()
        kind = lb.describe()
        per_kind[kind] += time.perf_counter() - t
        counts[kind] += 1
        return out
    lazy._run = run_timed
    try:
        step(x, y)
    finally:
        lazy._run = run
    return host_ms, per_kind, counts


def minigrad_kernel_time(step, data):
    """GPU kernel time per step, by kernel, from PyTorch's profiler (CUPTI records every
    kernel of the process, ours included): (ms per step, [(name, ms per step, calls)])."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for x, y in data:
            step(x, y)
    per = collections.defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type.name == "CUDA":
            per[ev.name][0] += ev.device_time / 1e3 / len(data)
            per[ev.name][1] += 1
    rows = sorted(((k, v[0], v[1] // len(data)) for k, v in per.items()), key=lambda r: -r[1])
    return sum(r[1] for r in rows), rows


def minigrad_cprofile(step, data, top=30):
    import cProfile
    import io
    import pstats
    pr = cProfile.Profile()
    pr.enable()
    for x, y in data:
        step(x, y)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


# ------------------------------------------------------------------------- PyTorch --

def torch_setup(cfg, autocast: bool):
    nn, F = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(cfg["n_embd"], 3 * cfg["n_embd"])
            self.c_proj = nn.Linear(cfg["n_embd"], cfg["n_embd"])
            self.drop = nn.Dropout(cfg["dropout"])

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, cfg["n_head"], -1).transpose(1, 2)
                       for t in self.c_attn(x).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=cfg["dropout"] if self.training else 0)
            return self.drop(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(cfg["n_embd"]), Attention()
            self.ln_2 = nn.LayerNorm(cfg["n_embd"])
            self.mlp = nn.Sequential(nn.Linear(cfg["n_embd"], 4 * cfg["n_embd"]),
                                     nn.GELU(approximate="tanh"),
                                     nn.Linear(4 * cfg["n_embd"], cfg["n_embd"]),
                                     nn.Dropout(cfg["dropout"]))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg["vocab"], cfg["n_embd"])
            self.wpe = nn.Embedding(cfg["block_size"], cfg["n_embd"])
            self.drop = nn.Dropout(cfg["dropout"])
            self.h = nn.ModuleList(Block() for _ in range(cfg["n_layer"]))
            self.ln_f = nn.LayerNorm(cfg["n_embd"])
            self.lm_head = nn.Linear(cfg["n_embd"], cfg["vocab"], bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx, targets):
            x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    torch.manual_seed(0)
    model = GPT().cuda()
    for name, p in model.named_parameters():      # GPT-2's initialisation, as minigrad's GPT
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * cfg["n_layer"]) if name.endswith("c_proj.weight") or \
                name.endswith("mlp.2.weight") else 0.02
            torch.nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
    params = list(model.parameters())
    opt = torch.optim.AdamW([
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ], lr=cfg["lr"], betas=(0.9, 0.99), fused=True)

    def step(x, y):
        x = torch.from_numpy(x).cuda(non_blocking=True)
        y = torch.from_numpy(y).cuda(non_blocking=True)
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


# ---------------------------------------------------------------------------- main --

def time_steps(step, data, warmup):
    losses, times = [], []
    for i, (x, y) in enumerate(data):
        t0 = time.perf_counter()
        losses.append(step(x, y))
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    if not all(math.isfinite(v) for v in losses):
        raise SystemExit(f"non-finite loss: {losses}")
    return statistics.median(times), losses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--device", default=None)
    ap.add_argument("--attention", default="auto", choices=mg.nn.transformer.ATTENTION_IMPLS,
                    help="minigrad's attention implementation (auto: flash on CUDA)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-jit", action="store_true", help="time only the Python-graph step")
    ap.add_argument("--kernel-time", action="store_true",
                    help="GPU kernel time per step by kernel (needs PyTorch's profiler)")
    ap.add_argument("--cprofile", action="store_true",
                    help="Python profile of 3 steps, top functions by own time")
    args = ap.parse_args(argv)
    cfg = dict(CONFIG)
    if args.batch_size:
        cfg["batch_size"] = args.batch_size
    device = mg.device.canonical(args.device) if args.device else mg.default_device()
    data = batches(cfg, args.warmup + args.iters)
    shape = (f"{cfg['n_layer']}L {cfg['n_head']}H {cfg['n_embd']}C T{cfg['block_size']} "
             f"B{cfg['batch_size']}")

    shape += f" attention={args.attention}"
    ours = {}                           # variant -> (ms/iter, step)
    for variant, jit in (("Python graph", False),) if args.no_jit else \
            (("mg.jit", True), ("Python graph", False)):
        if device == "cuda":
            from minigrad.backend.cuda import runtime
            runtime.reset_peak()
            before = runtime.memory_stats()["active_bytes"]
        step = minigrad_setup(cfg, device, args.attention, jit)
        ms, losses = time_steps(step, data, args.warmup)
        ours[variant] = ms, step
        peak = (f"; peak pool memory {(runtime.memory_stats()['peak_active_bytes'] - before) / 2**20:.0f}"
                " MiB" if device == "cuda" else "")
        print(f"minigrad ({device}, {variant}, attention {args.attention}): {ms:.2f} ms/iter; "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f}{peak}")

    rows = []
    card = device
    refs = [(None, None)]
    if HAVE_TORCH and device == "cuda" and not args.no_torch:
        card, refs = torch.cuda.get_device_name(), []
        for name, autocast in (("torch eager f32", False), ("torch eager bf16 autocast", True)):
            ref_ms, ref_losses = time_steps(torch_setup(cfg, autocast), data, args.warmup)
            print(f"{name}: {ref_ms:.2f} ms/iter; loss {ref_losses[0]:.3f} -> {ref_losses[-1]:.3f}")
            refs.append((name, ref_ms))
    for variant, (ms, _) in ours.items():
        rows += [dict(name=f"GPT training step ({variant})", shape=shape, ours_ms=ms, ref=name,
                      ref_ms=ref_ms) for name, ref_ms in refs]
    step = ours["Python graph"][1]      # the profile hooks the graph's nodes
    if not args.no_profile:
        x, y = data[-1]
        host_ms, per_kind, counts = minigrad_profile(step, x, y, device)
        total = sum(per_kind.values()) * 1e3
        print(f"\nprofile of one step: {sum(counts.values())} nodes; host (Python) time until "
              f"the last node is queued {host_ms:.1f} ms; per-node synchronized total "
              f"{total:.1f} ms\n")
        print("| node kind | count | ms (synchronized) | share |\n|---|---|---|---|")
        for kind, secs in sorted(per_kind.items(), key=lambda kv: -kv[1])[:25]:
            print(f"| {kind} | {counts[kind]} | {secs * 1e3:.2f} | {secs * 1e3 / total:.1%} |")
        rows[0]["profile"] = {"nodes": sum(counts.values()), "host_ms": host_ms,
                              "synchronized_ms": total,
                              "per_kind_ms": {k: v * 1e3 for k, v in per_kind.items()},
                              "counts": dict(counts)}
    if args.kernel_time and HAVE_TORCH and device == "cuda":
        variant = next(iter(ours))
        kms, krows = minigrad_kernel_time(ours[variant][1], data[-3:])
        print(f"\nGPU kernel time per step ({variant}): {kms:.2f} ms (step wall "
              f"{ours[variant][0]:.2f} ms)\n")
        print("| kernel | ms/step | launches/step |\n|---|---:|---:|")
        for name, ms, calls in krows[:25]:
            print(f"| {name[:70]} | {ms:.3f} | {calls} |")
        rows[0]["kernel_ms_per_step"] = kms
    if args.cprofile:
        print(minigrad_cprofile(step, data[-3:]))
    report("train_step", card, rows)


if __name__ == "__main__":
    sys.exit(main())
