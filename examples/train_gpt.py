"""Train a character-level GPT (nanoGPT's model) with minigrad.

    python examples/train_gpt.py --config tiny                 # ~1-2 minutes on 2 CPU cores
    python examples/train_gpt.py --data input.txt --max-iters 500
    python examples/train_gpt.py --config shakespeare_char --data tinyshakespeare.txt
    python examples/train_gpt.py --resume --max-iters 3000      # go on from out/
    python examples/train_gpt.py --plot                         # also out/loss.png

Without --data it trains on the sources of a few Python standard-library modules, a
corpus every machine with Python has. The device is chosen by minigrad (CUDA when it
works, else the CPU; MINIGRAD_DEVICE or --device override it).

Checkpoints (as nanoGPT): at every evaluation where the validation loss is the best so
far, --out-dir (default out/) gets
    ckpt.safetensors    the model's state_dict            (mg.save: safetensors, no pickle)
    optim.safetensors   AdamW's state_dict: step counts and moments
    ckpt.json           config, vocabulary, data file, seed, iteration, best val loss
and every evaluation rewrites losses.csv there (one row per iteration). --resume
restarts from the checkpoint: same weights, optimizer moments, iteration counter and
learning-rate schedule. The data RNG is reseeded from (seed, iteration) at every
evaluation, in a fresh run and a resumed one alike, so a resumed run draws the same
batches as a run that was never stopped. examples/quantize_generate.py reads the
checkpoint back.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
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
    """The text as integer tokens (one per distinct character), split 90/10. Pass the
    `chars` of a checkpoint to encode the text with the vocabulary it was trained on."""

    def __init__(self, text: str, chars=None):
        self.chars = sorted(set(text)) if chars is None else list(chars)
        unknown = set(text) - set(self.chars)
        if unknown:
            raise SystemExit(f"the text has {len(unknown)} characters the checkpoint's "
                             f"vocabulary lacks, e.g. {sorted(unknown)[:5]}")
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
    """Linear warm-up, then cosine decay from lr to min_lr until lr_decay_iters, then
    min_lr (nanoGPT)."""
    if it < cfg["warmup_iters"]:
        return cfg["lr"] * (it + 1) / (cfg["warmup_iters"] + 1)
    decay_iters = max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
    ratio = min(1.0, (it - cfg["warmup_iters"]) / decay_iters)
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


# ---------------------------------------------------------------- checkpoints --
MODEL_FILE, OPTIM_FILE, META_FILE, LOSS_FILE = ("ckpt.safetensors", "optim.safetensors",
                                                "ckpt.json", "losses.csv")


def build_model(cfg, vocab_size, device):
    return mg.nn.GPT(vocab_size, cfg["block_size"], cfg["n_layer"], cfg["n_head"],
                     cfg["n_embd"], dropout=cfg["dropout"]).to(device)


def save_checkpoint(out_dir, model, opt, meta):
    """The weights and the optimizer state as safetensors, the rest as JSON (written
    last). Both safetensors files carry the iteration in their metadata, so files from
    two different saves (a run killed mid-save) are caught by load_checkpoint."""
    os.makedirs(out_dir, exist_ok=True)
    tag = {"iter": str(meta["iter"])}
    mg.save(model.state_dict(), os.path.join(out_dir, MODEL_FILE), metadata=tag)
    mg.save(opt.state_dict(), os.path.join(out_dir, OPTIM_FILE), metadata=tag)
    path = os.path.join(out_dir, META_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(path + ".tmp", path)                  # atomic, as mg.save is


def load_checkpoint(out_dir, device=None, with_optimizer=True):
    """(meta, model state, optimizer state or None) from the files save_checkpoint wrote."""
    from minigrad.state import load_metadata
    path = os.path.join(out_dir, META_FILE)
    if not os.path.exists(path):
        raise SystemExit(f"no checkpoint in {out_dir}/ ({META_FILE} is missing); train "
                         f"first: python examples/train_gpt.py --out-dir {out_dir}")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    files = [MODEL_FILE] + ([OPTIM_FILE] if with_optimizer else [])
    for name in files:
        saved_at = load_metadata(os.path.join(out_dir, name)).get("iter")
        if saved_at != str(meta["iter"]):
            raise SystemExit(f"{out_dir}/{name} is from iteration {saved_at}, {META_FILE} "
                             f"from {meta['iter']}: a save was interrupted")
    model_state = mg.load(os.path.join(out_dir, MODEL_FILE), device=device)
    opt_state = mg.load(os.path.join(out_dir, OPTIM_FILE), device="cpu") \
        if with_optimizer else None
    return meta, model_state, opt_state


# --------------------------------------------------------------- loss curve --
# losses.csv has one row per iteration: the learning rate and loss of that training
# step, and at evaluations the estimated train and val losses (made before the step).
LOSS_COLUMNS = ("iter", "lr", "loss", "train_loss", "val_loss")


def write_losses(out_dir, history):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOSS_FILE)
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(LOSS_COLUMNS)
        for it in sorted(history):
            row = history[it]
            writer.writerow([it] + ["" if row.get(c) is None else f"{row[c]:.9g}"
                                    for c in LOSS_COLUMNS[1:]])
    os.replace(path + ".tmp", path)


def read_losses(out_dir, before_iter):
    """The rows of an earlier run's losses.csv up to (not including) `before_iter`."""
    history = {}
    path = os.path.join(out_dir, LOSS_FILE)
    if os.path.exists(path):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                it = int(row["iter"])
                if it < before_iter:
                    history[it] = {c: float(row[c]) for c in LOSS_COLUMNS[1:] if row.get(c)}
    return history


def plot_losses(out_dir, history):
    """loss.png from the history, if matplotlib is installed (it is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")                       # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); the losses "
              f"are in {os.path.join(out_dir, LOSS_FILE)}")
        return
    its = sorted(history)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [it for it in its if "loss" in history[it]]
    ax.plot(steps, [history[it]["loss"] for it in steps], lw=0.7, alpha=0.5,
            label="training batch")
    for split in ("train", "val"):
        evals = [it for it in its if f"{split}_loss" in history[it]]
        ax.plot(evals, [history[it][f"{split}_loss"] for it in evals], "o-",
                label=f"{split} (estimated)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "loss.png")
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ---------------------------------------------------------------------- main --
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny",
                    help="model and training settings (with --resume: the checkpoint's)")
    ap.add_argument("--data", help="a text file (default: Python standard-library sources)")
    ap.add_argument("--max-iters", type=int)
    ap.add_argument("--lr-decay-iters", type=int,
                    help="where the cosine decay reaches min_lr (default: max-iters)")
    ap.add_argument("--eval-interval", type=int)
    ap.add_argument("--eval-iters", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--device", help="cpu or cuda (default: minigrad's default device)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out-dir", default="out", help="checkpoints and losses.csv (default out/)")
    ap.add_argument("--resume", action="store_true", help="go on from the checkpoint in --out-dir")
    ap.add_argument("--plot", action="store_true", help="also draw loss.png (needs matplotlib)")
    ap.add_argument("--sample-len", type=int, default=300)
    ap.add_argument("--no-progress", action="store_true", help="plain log lines, no tqdm")
    ap.add_argument("--no-jit", action="store_true",
                    help="build every step's graph in Python (by default a GPU step is "
                         "captured once by mg.jit and replayed)")
    args = ap.parse_args(argv)
    device = mg.device.canonical(args.device) if args.device else mg.default_device()

    if args.resume:     # the checkpoint fixes the model, vocabulary, data and seed
        meta, model_state, opt_state = load_checkpoint(args.out_dir, device)
        cfg, config_name = dict(meta["config"]), meta["config_name"]
        chars, seed = meta["vocab"], meta["seed"]
        data_path, start_iter, best_val = args.data or meta["data"], meta["iter"], \
            meta["best_val_loss"]
    else:
        cfg, config_name = dict(CONFIGS[args.config]), args.config
        chars, seed = None, args.seed
        data_path, start_iter, best_val = args.data, 0, float("inf")
    for key in ("max_iters", "lr_decay_iters", "eval_interval", "eval_iters", "batch_size",
                "lr"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg.setdefault("lr_decay_iters", cfg["max_iters"])
    cfg["min_lr"] = min(cfg["min_lr"], cfg["lr"])

    if data_path:
        with open(data_path, encoding="utf-8") as f:
            text = f.read()
        source = data_path
    else:
        text, source = default_text(), "Python standard-library sources"
    data = CharData(text, chars)
    if len(data.val) <= cfg["block_size"] + 1:
        raise SystemExit(f"--data: the text is too short for block_size {cfg['block_size']}")

    mg.manual_seed(seed)
    model = build_model(cfg, data.vocab_size, device)
    # weight decay on matrices only (not biases, LayerNorms), as in nanoGPT
    params = model.parameters()
    opt = mg.optim.AdamW([
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ], lr=cfg["lr"], betas=(0.9, 0.99))
    if args.resume:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    history = read_losses(args.out_dir, start_iter) if args.resume else {}
    print(f"data: {source}, {len(text):,} characters, vocab {data.vocab_size}; "
          f"model: {model.num_parameters():,} parameters; device: {device}; "
          f"config {config_name}, {cfg['max_iters']} iterations")
    if args.resume:
        print(f"resuming from {args.out_dir}/ at iteration {start_iter} "
              f"(best val loss {best_val:.4f})")

    def checkpoint_meta(it):
        return {"iter": it, "best_val_loss": best_val, "seed": seed,
                "vocab": "".join(data.chars), "config_name": config_name, "config": cfg,
                "data": os.path.abspath(data_path) if data_path else None}

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    use_bar = tqdm is not None and not args.no_progress
    bar = tqdm(initial=start_iter, total=cfg["max_iters"], unit="it") if use_bar else None
    log = bar.write if bar else print

    def train_step(x, y):
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss
    # on the GPU the step is replayed from a record after two calls (mg.jit: no Python
    # graph building per step); on the CPU mg.jit just calls it
    step = train_step if args.no_jit else mg.jit(train_step)

    train_time, timed_iters = 0.0, 0
    for it in range(start_iter, cfg["max_iters"] + 1):
        if it % cfg["eval_interval"] == 0 or it == cfg["max_iters"] or it == start_iter:
            # Reseed the data RNG (and minigrad's, for dropout) from the iteration, so a
            # run resumed here draws the same batches as one that never stopped.
            rng = np.random.default_rng([seed, it])
            mg.manual_seed(seed + it)
            losses = estimate_loss(model, data, cfg, rng, device)
            history[it] = {"train_loss": losses["train"], "val_loss": losses["val"]}
            log(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if losses["val"] < best_val:
                best_val = losses["val"]
                if it > 0:                             # (not the untrained model)
                    save_checkpoint(args.out_dir, model, opt, checkpoint_meta(it))
                    log(f"saved a checkpoint to {args.out_dir}/ (val loss {best_val:.4f})")
            write_losses(args.out_dir, history)
        if it == cfg["max_iters"]:
            break
        lr = lr_at(it, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        x, y = data.batch("train", cfg["batch_size"], cfg["block_size"], rng, device)
        loss_value = step(x, y).item()    # also waits for the GPU
        dt = time.perf_counter() - t0
        history.setdefault(it, {}).update(lr=lr, loss=loss_value)
        if it > start_iter:               # the first iteration includes warm-up work
            train_time, timed_iters = train_time + dt, timed_iters + 1
        if bar:
            bar.set_postfix(loss=f"{loss_value:.4f}", ms_iter=f"{dt * 1e3:.1f}")
            bar.update(1)
        elif it % max(1, cfg["eval_interval"] // 5) == 0:
            print(f"iter {it}: loss {loss_value:.4f}, {dt * 1e3:.1f} ms")
    if bar:
        bar.close()
    write_losses(args.out_dir, history)
    if args.plot:
        plot_losses(args.out_dir, history)
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
