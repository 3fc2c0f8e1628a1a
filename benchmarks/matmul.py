"""Tensor-core matmul family through minigrad (mg.ops.matmul_tc*) against torch on the same
card: forward C = A·B (16-bit in, f32 out) at the sizes of issue 4, and the backward
dA = dC·Bᵀ plus dB = Aᵀ·dC as minigrad's autograd runs it (the same kernels reading the
operands transposed) against PyTorch's two f16 products, once through the Python graph and
once replayed by `mg.jit` (what a jitted training step runs). Worst of 5 medians of 20.

Usage (GPU machine): python benchmarks/matmul.py [--transformer] [--bwd-only]
                                                 [--split-compare] [--sweep]
  --transformer    only the nn.Linear shapes at 16384 tokens (M=16384, (N,K) in
                   (1152,384), (384,384), (1536,384), (384,1536)); results go to
                   results/matmul_transformer.json instead of results/matmul.json
  --bwd-only       only the backward rows
  --split-compare  each backward row also timed with split-K off (ops_matmul.FORCE_SPLIT
                   = 1): the before/after of split-K in one process on one card
  --sweep          dB = Aᵀ·dC alone for FORCE_SPLIT in 1, 2, 4, 8, 12, 16 and the
                   heuristic's choice, against torch's A.T @ dC (_async ops)
  --kernel-times   instead of the table: the GPU-side time of one backward (CUDA events
                   around every launch, no sync between them, summed; median of 15),
                   split-K on and off, per kernel, against torch's backward. The
                   end-to-end rows include minigrad's host time per op (lazy graph,
                   launches), which at these sizes is larger than the kernels' time."""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from common import HAVE_TORCH, gpu_ms, report, torch, torch_ms

import minigrad as mg
from minigrad import Tensor

SIZES = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192),
         (16384, 1152, 384), (16384, 384, 384), (16384, 1536, 384), (16384, 384, 1536)]
TRANSFORMER = SIZES[4:]
OPS = [("matmul_tc", "f16"), ("matmul_tc_async", "f16"), ("matmul_tc_bf16", "bf16"),
       ("matmul_tc_bf16_async", "bf16")]
SWEEP = (1, 2, 4, 8, 12, 16)


def _sms():
    from minigrad.backend.cuda import runtime
    return runtime.multiprocessors


def kernel_times():
    """GPU-side time of dA + dB at the transformer shapes (see --kernel-times)."""
    import pycuda.driver as drv
    from minigrad.backend.cuda import ops_matmul as om
    from minigrad.backend.cuda import runtime
    real, rec = runtime.launch, []

    def launch(fn, *a, **kw):
        e0, e1 = drv.Event(), drv.Event()
        e0.record(runtime.stream)
        real(fn, *a, **kw)
        e1.record(runtime.stream)
        rec.append((fn.mg_name, e0, e1))
    runtime.launch = launch
    print(f"card: {mg.device.get_backend('cuda').device_name}\n")
    print("| MxNxK | dtype | split-K | GPU ms (dA+dB) | dB ms | torch bwd ms | ratio | kernels |")
    print("|---|---|---|---|---|---|---|---|")
    for m, n, k in TRANSFORMER:
        rng = np.random.default_rng(0)
        x = [rng.standard_normal(s, dtype=np.float32) for s in [(m, k), (k, n), (m, n)]]
        for name, dt in OPS:
            if not name.endswith("_async"):
                continue
            mdt, tdt = (mg.float16, torch.float16) if dt == "f16" else \
                (mg.bfloat16, torch.bfloat16)
            a, b, g = (Tensor(v, device="cuda").cast(mdt).realize() for v in x)
            ta, tb, tg = (torch.from_numpy(v).cuda().to(tdt) for v in x)
            ref = torch_ms(lambda: (tg @ tb.T, ta.T @ tg), medians=3)
            op = getattr(mg.ops, name)
            for force in (None, 1):
                om.FORCE_SPLIT = force
                tot, dbt = [], []
                for it in range(17):
                    rec.clear()
                    mg.realize(op(g, b.T))
                    n_da = len(rec)
                    mg.realize(op(a.T, g))
                    runtime.synchronize()
                    ts = [e0.time_till(e1) for _, e0, e1 in rec]
                    if it >= 2:
                        tot.append(sum(ts))
                        dbt.append(sum(ts[n_da:]))
                per = " ".join(f"{nm.replace('matmul_tc_', '')}:{t * 1000:.0f}us"
                               for (nm, _, _), t in zip(rec, ts))
                s, d = statistics.median(tot), statistics.median(dbt)
                print(f"| {m}x{n}x{k} | {dt} | {'auto' if force is None else 'off'} | "
                      f"{s:.4f} | {d:.4f} | {ref:.4f} | {ref / s:.2f} | {per} |", flush=True)
            om.FORCE_SPLIT = None
    runtime.launch = real


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transformer", action="store_true")
    ap.add_argument("--bwd-only", action="store_true")
    ap.add_argument("--split-compare", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--kernel-times", action="store_true")
    args = ap.parse_args()
    if args.kernel_times:
        return kernel_times()
    from minigrad.backend.cuda import ops_matmul as om
    rng = np.random.default_rng(0)
    card = mg.device.get_backend("cuda").device_name
    rows = []
    for m, n, k in TRANSFORMER if args.transformer else SIZES:
        flop = 2 * m * n * k
        a32 = rng.standard_normal((m, k), dtype=np.float32)
        b32 = rng.standard_normal((k, n), dtype=np.float32)
        g32 = rng.standard_normal((m, n), dtype=np.float32)
        for name, dt in OPS:
            if args.bwd_only and not name.endswith("_async"):
                continue
            mdt = mg.float16 if dt == "f16" else mg.bfloat16
            a, b, g = (Tensor(x, device="cuda").cast(mdt).realize() for x in (a32, b32, g32))
            op = getattr(mg.ops, name)
            if HAVE_TORCH:
                tdt = torch.float16 if dt == "f16" else torch.bfloat16
                ta, tb, tg = (torch.from_numpy(x).cuda().to(tdt) for x in (a32, b32, g32))
            if not args.bwd_only:
                ours = gpu_ms(lambda: op(a, b).realize(), medians=5)
                ref = torch_ms(lambda: torch.mm(ta, tb, out_dtype=torch.float32),
                               medians=5) if HAVE_TORCH else None
                rows.append({"name": f"{name} fwd", "shape": f"{m}x{n}x{k}", "ours_ms": ours,
                             "ref": f"torch.mm {dt}, out_dtype=f32", "ref_ms": ref,
                             "ours_TFLOPs": flop / ours / 1e9,
                             "ref_TFLOPs": flop / ref / 1e9 if ref else None})
            if name.endswith("_async") and (m, n, k) != (1024, 1024, 1024):
                def ours_bwd():
                    mg.realize(op(g, b.T), op(a.T, g))
                ref = torch_ms(lambda: (tg @ tb.T, ta.T @ tg), medians=5) if HAVE_TORCH \
                    else None
                variants = [("", None)] + ([(", split-K off", 1)] if args.split_compare else [])
                for label, force in variants:
                    om.FORCE_SPLIT = force
                    ours = gpu_ms(ours_bwd, medians=5)
                    rows.append({"name": f"{name} bwd (dA+dB){label}", "shape": f"{m}x{n}x{k}",
                                 "ours_ms": ours, "ref": f"torch {dt} dC@B.T + A.T@dC",
                                 "ref_ms": ref, "ours_TFLOPs": 2 * flop / ours / 1e9,
                                 "ref_TFLOPs": 2 * flop / ref / 1e9 if ref else None})
                om.FORCE_SPLIT = None
                # the same two products captured once and replayed (mg.jit): no graph is
                # built in Python, so this is the backward a jitted training step runs
                jitted = mg.jit(ours_bwd)
                jitted()                # call 1 runs it, call 2 captures it
                jitted()
                ours = gpu_ms(jitted, medians=5)
                rows.append({"name": f"{name} bwd (dA+dB), mg.jit", "shape": f"{m}x{n}x{k}",
                             "ours_ms": ours, "ref": f"torch {dt} dC@B.T + A.T@dC",
                             "ref_ms": ref, "ours_TFLOPs": 2 * flop / ours / 1e9,
                             "ref_TFLOPs": 2 * flop / ref / 1e9 if ref else None})
                if args.sweep:
                    ref = torch_ms(lambda: ta.T @ tg, medians=5) if HAVE_TORCH else None
                    be = mg.device.get_backend("cuda")
                    kind = ("tma" if om.USE_TMA else "wgmma") if be.arch.startswith("sm_90") \
                        else "mma"
                    auto = om.plan(k, n, m, 1, _sms(), kind)
                    for force in SWEEP + (None,):
                        om.FORCE_SPLIT = force
                        ours = gpu_ms(lambda: op(a.T, g).realize(), medians=5)
                        label = force or f"auto (tile {auto[0]}, S={auto[1]}, Kc={auto[2]})"
                        rows.append({"name": f"{name} dB=A.T@dC S={label}",
                                     "shape": f"{k}x{n}x{m}", "ours_ms": ours,
                                     "ref": f"torch {dt} A.T@dC", "ref_ms": ref,
                                     "ours_TFLOPs": flop / ours / 1e9,
                                     "ref_TFLOPs": flop / ref / 1e9 if ref else None})
                    om.FORCE_SPLIT = None
    report("matmul_transformer" if args.transformer else "matmul", card, rows,
           ("ours_TFLOPs", "ref_TFLOPs"))


if __name__ == "__main__":
    main()
