"""Train a character-level GPT (nanoGPT's model) with minigrad.

    python examples/train_gpt.py --config tiny                 # ~1-2 minutes on 2 CPU cores
    python examples/train_gpt.py --data input.txt --max-iters 500
    python examples/train_gpt.py --config shakespeare_char --data tinyshakespeare.txt

Without --data it trains on the sources of a few Python standard-library modules, a
corpus every machine with Python has. The device is chosen by minigrad (CUDA when it
works, else the CPU; MINIGRAD_DEVICE or --device override it).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import sys
import time

# The tiny model's matrix products are small: one BLAS thread is as fast, and on a
# shared machine far faster than two threads spinning while they wait for each
# other (export OPENBLAS_NUM_THREADS yourself to override). Must precede `import numpy`.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minigrad as mg  # noqa: E402
from minigrad import Tensor  # noqa: E402

CONFIGS = {
    # CPU-sized: 2 layers, 64 wide; about 40 ms an iteration on one core
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, block_size=32, batch_size=32, dropout=0.0,
                 lr=3e-3, min_lr=3e-4, warmup_iters=50, max_iters=1500, eval_interval=250,
                 eval_iters=20, weight_decay=0.1),
    # nanoGPT's shakespeare_char (GPU-sized)
    "shakespeare_char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64,
                             dropout=0.2, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                             max_iters=5000, eval_interval=250, eval_iters=200,
                             weight_decay=0.1),
}
DEFAULT_CORPUS = ("textwrap", "string", "heapq", "bisect", "shlex", "fnmatch", "glob",
                  "colorsys", "keyword")


def default_text() -> str:
    """Sources of a few standard-library modules: text every Python install has."""
    parts = []
    for name in DEFAULT_CORPUS:
        try:
            parts.append(inspect.getsource(importlib.import_module(name)))
        except (ImportError, OSError, TypeError):
            pass
    if not parts:
        raise SystemExit("no standard-library sources found here; pass --data PATH")
    return "\n".join(parts)


class CharData:
    """The text as integer tokens (one per distinct character), split 90/10."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        data = np.array([self.stoi[c] for c in text], dtype=np.int64)
        n = int(0.9 * len(data))
        self.train, self.val = data[:n], data[n:]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def decode(self, tokens) -> str:
        return "".join(self.chars[int(t)] for t in tokens)

    def batch(self, split, batch_size, block_size, rng, device):
        data = self.train if split == "train" else self.val
        ix = rng.integers(0, len(data) - block_size - 1, batch_size)
        x = np.stack([data[i:i + block_size] for i in ix])
        y = np.stack([data[i + 1:i + block_size + 1] for i in ix])
        return Tensor(x, device=device), Tensor(y, device=device)


def lr_at(it, cfg) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr over max_iters (nanoGPT)."""
    if it < cfg["warmup_iters"]:
        return cfg["lr"] * (it + 1) / (cfg["warmup_iters"] + 1)
    ratio = min(1.0, (it - cfg["warmup_iters"]) / max(1, cfg["max_iters"] - cfg["warmup_iters"]))
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg["lr"] - cfg["min_lr"])


@mg.no_grad()
def estimate_loss(model, data, cfg, rng, device) -> dict:
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = [model(*data.batch(split, cfg["batch_size"], cfg["block_size"], rng,
                                    device))[1].item() for _ in range(cfg["eval_iters"])]
        out[split] = float(np.mean(losses))
    model.train()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--data", help="a text file (default: Python standard-library sources)")
    ap.add_argument("--max-iters", type=int)
    ap.add_argument("--eval-interval", type=int)
    ap.add_argument("--eval-iters", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--device", help="cpu or cuda (default: minigrad's default device)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--sample-len", type=int, default=300)
    ap.add_argument("--no-progress", action="store_true", help="plain log lines, no tqdm")
    args = ap.parse_args(argv)

    cfg = dict(CONFIGS[args.config])
    for key in ("max_iters", "eval_interval", "eval_iters", "batch_size", "lr"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["min_lr"] = min(cfg["min_lr"], cfg["lr"])
    device = mg.device.canonical(args.device) if args.device else mg.default_device()

    if args.data:
        with open(args.data, encoding="utf-8") as f:
            text = f.read()
        source = args.data
    else:
        text, source = default_text(), "Python standard-library sources"
    data = CharData(text)
    if len(data.val) <= cfg["block_size"] + 1:
        raise SystemExit(f"--data: the text is too short for block_size {cfg['block_size']}")

    mg.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = mg.nn.GPT(data.vocab_size, cfg["block_size"], cfg["n_layer"], cfg["n_head"],
                      cfg["n_embd"], dropout=cfg["dropout"]).to(device)
    # weight decay on matrices only (not biases, LayerNorms), as in nanoGPT
    params = model.parameters()
    opt = mg.optim.AdamW([
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ], lr=cfg["lr"], betas=(0.9, 0.99))
    print(f"data: {source}, {len(text):,} characters, vocab {data.vocab_size}; "
          f"model: {model.num_parameters():,} parameters; device: {device}; "
          f"config {args.config}, {cfg['max_iters']} iterations")

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    use_bar = tqdm is not None and not args.no_progress
    bar = tqdm(total=cfg["max_iters"], unit="it") if use_bar else None
    log = bar.write if bar else print

    train_time, timed_iters, best_val = 0.0, 0, float("inf")
    for it in range(cfg["max_iters"] + 1):
        if it % cfg["eval_interval"] == 0 or it == cfg["max_iters"]:
            losses = estimate_loss(model, data, cfg, rng, device)
            best_val = min(best_val, losses["val"])
            log(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if it == cfg["max_iters"]:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(it, cfg)
        t0 = time.perf_counter()
        x, y = data.batch("train", cfg["batch_size"], cfg["block_size"], rng, device)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss_value = loss.item()          # also waits for the GPU
        dt = time.perf_counter() - t0
        if it > 0:                        # the first iteration includes warm-up work
            train_time, timed_iters = train_time + dt, timed_iters + 1
        if bar:
            bar.set_postfix(loss=f"{loss_value:.4f}", ms_iter=f"{dt * 1e3:.1f}")
            bar.update(1)
        elif it % max(1, cfg["eval_interval"] // 5) == 0:
            print(f"iter {it}: loss {loss_value:.4f}, {dt * 1e3:.1f} ms")
    if bar:
        bar.close()
    ms = train_time / max(1, timed_iters) * 1e3
    print(f"done: {ms:.1f} ms/iter on {device}, best val loss {best_val:.4f}")

    model.eval()
    start = data.stoi.get("\n", 0)
    out = model.generate(Tensor([[start]], device=device), args.sample_len, temperature=0.8,
                         top_k=20)
    print("--- sample ---")
    print(data.decode(out.numpy()[0, 1:]))
    return {"best_val": best_val, "ms_per_iter": ms}


if __name__ == "__main__":
    main()
