"""Quantize a GPT trained by train_gpt.py to int8 and int4, and compare with float32.

    python examples/train_gpt.py --config tiny         # trains and writes out/
    python examples/quantize_generate.py               # reads out/
    python examples/quantize_generate.py --out-dir out --group-size 32 --batches 50

It loads the checkpoint, makes the int8 and int4 copies with `GPT.quantize`, measures
the three models' loss on the same validation batches, and samples text from each
with the same seed:

  float32   the trained model (nn.Linear computes in float32, on CUDA too)
  int8      W8A8: each Linear's weight is int8 with one scale per tensor, and its input
            is quantized the same way at every call; Q, K and V come from one fused
            int8 projection (W8A16)
  int4      W4A16: weights int4 with one float16 scale per `group_size` input features
            and output feature; activations stay float16

The token embedding (and the language-model head tied to it), the position embedding
and the LayerNorms stay float32. On CUDA the quantized layers run minigrad's int8/int4
tensor-core kernels; on the CPU the NumPy references of the same ops (same rounding).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minigrad as mg  # noqa: E402
from minigrad import Tensor  # noqa: E402
from train_gpt import CharData, build_model, default_text, load_checkpoint  # noqa: E402


def default_group_size(n_embd: int):
    """The largest int4 group size that divides the layers' input widths (n_embd and
    4 * n_embd), or None."""
    fits = [g for g in mg.ops.INT4_GROUP_SIZES if n_embd % g == 0]
    return max(fits) if fits else None


def weight_bytes(model) -> int:
    """Bytes of the model's tensors (parameters and buffers), a tied tensor counted once."""
    unique = {id(t): t for t in model.state_dict().values()}
    return sum(t.numel() * t.dtype.itemsize for t in unique.values())


@mg.no_grad()
def val_loss(model, batches) -> float:
    return float(np.mean([model(x, y)[1].item() for x, y in batches]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default="out", help="where train_gpt.py saved its checkpoint")
    ap.add_argument("--data", help="the text file it was trained on (default: the checkpoint's)")
    ap.add_argument("--group-size", type=int,
                    help=f"int4 group size, one of {mg.ops.INT4_GROUP_SIZES} dividing n_embd "
                         f"(default: the largest that does)")
    ap.add_argument("--batches", type=int, default=20, help="validation batches")
    ap.add_argument("--batch-size", type=int, help="default: the training batch size")
    ap.add_argument("--sample-len", type=int, default=200)
    ap.add_argument("--device", help="cpu or cuda (default: minigrad's default device)")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    device = mg.device.canonical(args.device) if args.device else mg.default_device()

    meta, state, _ = load_checkpoint(args.out_dir, device, with_optimizer=False)
    cfg = meta["config"]
    data_path = args.data or meta["data"]
    if data_path:
        with open(data_path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = default_text()
    data = CharData(text, meta["vocab"])

    mg.nn.Linear.default_compute = "float32"   # a float32 baseline on CUDA too (not bf16)
    model = build_model(cfg, data.vocab_size, device)
    model.load_state_dict(state)
    model.eval()
    print(f"checkpoint {args.out_dir}/: iteration {meta['iter']}, best val loss "
          f"{meta['best_val_loss']:.4f}; {model.num_parameters():,} parameters on {device}")

    group_size = args.group_size or default_group_size(cfg["n_embd"])
    models = {"float32": model, "int8": model.quantize(bits=8)}
    if group_size is None:
        print(f"int4 skipped: no group size of {mg.ops.INT4_GROUP_SIZES} divides "
              f"n_embd={cfg['n_embd']}")
    else:
        try:
            models[f"int4 g{group_size}"] = model.quantize(bits=4, group_size=group_size)
        except ValueError as e:
            raise SystemExit(f"--group-size: {e}")

    # the same validation batches for every model
    rng = np.random.default_rng(args.seed)
    batch_size = args.batch_size or cfg["batch_size"]
    batches = [data.batch("val", batch_size, cfg["block_size"], rng, device)
               for _ in range(args.batches)]
    results, samples = {}, {}
    for name, m in models.items():
        t0 = time.perf_counter()
        loss = val_loss(m, batches)
        ms = (time.perf_counter() - t0) / len(batches) * 1e3
        results[name] = {"val_loss": loss, "bytes": weight_bytes(m), "ms_per_batch": ms}
        mg.manual_seed(args.seed)                     # the same random draws for each
        start = Tensor([[data.stoi.get("\n", 0)]], device=device)
        out = m.generate(start, args.sample_len, temperature=0.8, top_k=20)
        samples[name] = data.decode(out.numpy()[0, 1:])

    base = results["float32"]["val_loss"]
    print(f"\nvalidation loss on {len(batches)} batches of {batch_size} x {cfg['block_size']} "
          f"tokens:")
    print(f"{'model':10s} {'val loss':>9s} {'vs f32':>8s} {'weights':>10s} {'ms/batch':>9s}")
    for name, r in results.items():
        delta = "" if name == "float32" else f"{r['val_loss'] - base:+.4f}"
        print(f"{name:10s} {r['val_loss']:9.4f} {delta:>8s} {r['bytes'] / 1024:7.1f} KiB "
              f"{r['ms_per_batch']:9.1f}")
    for name, text in samples.items():
        print(f"\n--- sample, {name} ---\n{text}")
    return results


if __name__ == "__main__":
    main()
