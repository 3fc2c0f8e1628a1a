"""Per-op overhead and bandwidth of the CUDA backend, against PyTorch on the same card.

Rows:
  tiny op, eager   `x = (x * 1.0001).realize()` on 16 floats: build + schedule + launch,
                   per op (the GPU time of such a kernel is ~2 us, so this is the
                   Python cost); PyTorch: `x = x * 1.0001`
  tiny op, lazy    1,000 such ops built first, realized at once, per op
  tiny add         `(x + y).realize()` of two 16-float tensors; PyTorch `x + y`
  broadcast add,   `(w + x).realize()` (w [8, 16], x [16]) and `w.sum(1).realize()`: ops
  row sum          whose graph has a view or reshape node too; PyTorch the same
  add 2^28 f32     z = x + y, GB/s counts 12 bytes an element (read 2, write 1)
  sum 2^28 f32     x.sum(), GB/s counts 4 bytes an element

Prints a markdown table and writes benchmarks/results/overhead.json. Runs without
PyTorch too (then without its column). Usage: python benchmarks/overhead.py
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import minigrad as mg  # noqa: E402

from common import HAVE_TORCH, commit, gpu_ms, torch, torch_ms  # noqa: E402


def _median_us(fn, n, reps=7):
    """Median over `reps` of (wall time of fn(), which runs n ops and syncs) / n."""
    fn()                                                      # warm-up: compiles, caches
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def ours_tiny_eager(n=2000):
    x = mg.Tensor(np.random.default_rng(0).standard_normal(16).astype(np.float32), device="cuda")

    def run():
        y = x
        for _ in range(n):
            y = (y * 1.0001).realize()
        mg.synchronize()
    return _median_us(run, n)


def ours_tiny_lazy(n=1000):
    x = mg.Tensor(np.random.default_rng(0).standard_normal(16).astype(np.float32), device="cuda")

    def run():
        y = x
        for _ in range(n):
            y = y * 1.0001
        y.realize()
        mg.synchronize()
    return _median_us(run, n)


def ours_tiny_add(n=2000):
    rng = np.random.default_rng(0)
    x = mg.Tensor(rng.standard_normal(16).astype(np.float32), device="cuda")
    y = mg.Tensor(rng.standard_normal(16).astype(np.float32), device="cuda")

    def run():
        for _ in range(n):
            (x + y).realize()
        mg.synchronize()
    return _median_us(run, n)


def ours_small(expr, n=2000):
    """`expr(w, x).realize()` per op on w [8, 16] and x [16] (a broadcast add, a row sum)."""
    rng = np.random.default_rng(0)
    w = mg.Tensor(rng.standard_normal((8, 16)).astype(np.float32), device="cuda")
    x = mg.Tensor(rng.standard_normal(16).astype(np.float32), device="cuda")
    mg.realize(w, x)

    def run():
        for _ in range(n):
            expr(w, x).realize()
        mg.synchronize()
    return _median_us(run, n)


def torch_small(expr, n=2000):
    w, x = torch.randn(8, 16, device="cuda"), torch.randn(16, device="cuda")

    def run():
        for _ in range(n):
            expr(w, x)
        torch.cuda.synchronize()
    return _median_us(run, n)


def ours_backend_only(n=2000):
    """The CUDA backend's own cost: backend.binary on buffers, no Tensor/graph."""
    from minigrad.backend.cuda import get_backend
    b = get_backend()
    x = b.from_numpy(np.random.default_rng(0).standard_normal(16).astype(np.float32))
    c = b.full((16,), 1.0001, x.dtype)

    def run():
        y = x
        for _ in range(n):
            y = b.binary("mul", y, c)
        b.synchronize()
    return _median_us(run, n)


def torch_tiny(n=2000, add=False):
    x = torch.randn(16, device="cuda")
    y = torch.randn(16, device="cuda")

    def run():
        z = x
        for _ in range(n):
            z = x + y if add else z * 1.0001
        torch.cuda.synchronize()
    return _median_us(run, n)


def main():
    n_big = 1 << 28
    rows = []
    card = mg.device.get_backend("cuda").device_name
    rows.append(("tiny op (x * c), eager realize", "16 f32", ours_tiny_eager(),
                 torch_tiny() if HAVE_TORCH else None, "us"))
    rows.append(("tiny op (x * c), 1000 lazy ops", "16 f32", ours_tiny_lazy(),
                 torch_tiny() if HAVE_TORCH else None, "us"))
    rows.append(("tiny add (x + y), eager realize", "16 f32", ours_tiny_add(),
                 torch_tiny(add=True) if HAVE_TORCH else None, "us"))
    rows.append(("tiny op, CUDA backend alone (no Tensor)", "16 f32", ours_backend_only(),
                 torch_tiny() if HAVE_TORCH else None, "us"))
    for name, expr in (("broadcast add (w + x), eager realize", lambda w, x: w + x),
                       ("row sum (w.sum(1)), eager realize", lambda w, x: w.sum(1))):
        rows.append((name, "[8, 16] f32", ours_small(expr),
                     torch_small(expr) if HAVE_TORCH else None, "us"))
    rng = np.random.default_rng(0)
    xh = rng.standard_normal(n_big, dtype=np.float32)
    yh = rng.standard_normal(n_big, dtype=np.float32)
    x, y = mg.Tensor(xh, device="cuda"), mg.Tensor(yh, device="cuda")
    mg.realize(x, y)
    add_ms = gpu_ms(lambda: (x + y).realize())
    sum_ms = gpu_ms(lambda: x.sum().realize())
    tadd = tsum = None
    if HAVE_TORCH:
        tx, ty = torch.from_numpy(xh).cuda(), torch.from_numpy(yh).cuda()
        tadd, tsum = torch_ms(lambda: tx + ty), torch_ms(lambda: tx.sum())
    rows.append(("add 2^28 f32", "268435456", add_ms, tadd, "ms"))
    rows.append(("sum 2^28 f32", "268435456", sum_ms, tsum, "ms"))
    gbs = {"add 2^28 f32": 12 * n_big, "sum 2^28 f32": 4 * n_big}
    result = {"card": card, "date": datetime.date.today().isoformat(), "commit": commit(),
              "rows": []}
    print(f"card: {card}  date: {result['date']}  torch: "
          f"{torch.__version__ if HAVE_TORCH else 'absent'}\n")
    print("| name | shape | ours | torch | speedup (torch/ours) | ours GB/s | torch GB/s |")
    print("|---|---|---|---|---|---|---|")
    for name, shape, ours, ref, unit in rows:
        ours_ms = ours / 1e3 if unit == "us" else ours
        ref_ms = None if ref is None else (ref / 1e3 if unit == "us" else ref)
        row = {"name": name, "shape": shape, "ours_ms": ours_ms, "ref": "torch eager",
               "ref_ms": ref_ms, "speedup": (ref_ms / ours_ms) if ref_ms else None}
        g_ours = gbs[name] / (ours_ms * 1e6) if name in gbs else None
        g_ref = gbs[name] / (ref_ms * 1e6) if name in gbs and ref_ms else None
        row.update({"ours_GBps": g_ours, "ref_GBps": g_ref})
        result["rows"].append(row)
        fmt = (lambda v: f"{v * 1e3:.2f} us") if unit == "us" else (lambda v: f"{v:.3f} ms")
        print(f"| {name} | {shape} | {fmt(ours_ms)} | {fmt(ref_ms) if ref_ms else '-'} | "
              f"{row['speedup']:.2f} | " if ref_ms else
              f"| {name} | {shape} | {fmt(ours_ms)} | - | - | ", end="")
        print(f"{g_ours:.0f} | {g_ref:.0f} |" if g_ours and g_ref else
              (f"{g_ours:.0f} | - |" if g_ours else "- | - |"))
    out = Path(__file__).parent / "results" / "overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "overhead.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
