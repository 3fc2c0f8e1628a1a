"""Tensor-core matmul family through minigrad (mg.ops.matmul_tc*) against torch on the same
card: forward C = A·B (16-bit in, f32 out) at the sizes of issue 4, and the backward
dA = dC·Bᵀ plus dB = Aᵀ·dC as minigrad's autograd runs it (the same kernels reading the
operands transposed) against PyTorch's two f16 products. Worst of 5 medians of 20.
Usage (GPU machine): python benchmarks/matmul.py"""
from __future__ import annotations

import numpy as np

from common import HAVE_TORCH, gpu_ms, report, torch, torch_ms

import minigrad as mg
from minigrad import Tensor

SIZES = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192),
         (16384, 1152, 384), (16384, 384, 384), (16384, 1536, 384), (16384, 384, 1536)]
OPS = [("matmul_tc", "f16"), ("matmul_tc_async", "f16"), ("matmul_tc_bf16", "bf16"),
       ("matmul_tc_bf16_async", "bf16")]


def main():
    rng = np.random.default_rng(0)
    card = mg.device.get_backend("cuda").device_name
    rows = []
    for m, n, k in SIZES:
        flop = 2 * m * n * k
        a32 = rng.standard_normal((m, k), dtype=np.float32)
        b32 = rng.standard_normal((k, n), dtype=np.float32)
        g32 = rng.standard_normal((m, n), dtype=np.float32)
        for name, dt in OPS:
            mdt = mg.float16 if dt == "f16" else mg.bfloat16
            a, b, g = (Tensor(x, device="cuda").cast(mdt).realize() for x in (a32, b32, g32))
            op = getattr(mg.ops, name)
            ours = gpu_ms(lambda: op(a, b).realize(), medians=5)
            ref = None
            if HAVE_TORCH:
                tdt = torch.float16 if dt == "f16" else torch.bfloat16
                ta, tb, tg = (torch.from_numpy(x).cuda().to(tdt) for x in (a32, b32, g32))
                ref = torch_ms(lambda: torch.mm(ta, tb, out_dtype=torch.float32), medians=5)
            rows.append({"name": f"{name} fwd", "shape": f"{m}x{n}x{k}", "ours_ms": ours,
                         "ref": f"torch.mm {dt}, out_dtype=f32", "ref_ms": ref,
                         "ours_TFLOPs": flop / ours / 1e9,
                         "ref_TFLOPs": flop / ref / 1e9 if ref else None})
            if name.endswith("_async") and (m, n, k) != (1024, 1024, 1024):
                def ours_bwd():
                    mg.realize(op(g, b.T), op(a.T, g))
                ours = gpu_ms(ours_bwd, medians=5)
                ref = torch_ms(lambda: (tg @ tb.T, ta.T @ tg), medians=5) if HAVE_TORCH \
                    else None
                rows.append({"name": f"{name} bwd (dA+dB)", "shape": f"{m}x{n}x{k}",
                             "ours_ms": ours, "ref": f"torch {dt} dC@B.T + A.T@dC",
                             "ref_ms": ref, "ours_TFLOPs": 2 * flop / ours / 1e9,
                             "ref_TFLOPs": 2 * flop / ref / 1e9 if ref else None})
    report("matmul", card, rows, ("ours_TFLOPs", "ref_TFLOPs"))


if __name__ == "__main__":
    main()
