"""Attention family through minigrad (mg.ops.attention_*) against PyTorch on the same card:
flash forward and forward+backward (f32; the backward re-runs the stats forward) against
scaled_dot_product_attention in f32, attention_tc (f16 in, f32 out) against PyTorch's f16
softmax(Q·Kᵀ·scale)·V of three ops; and our backward/forward ratio. Median of 20.
Usage (GPU machine): python benchmarks/attention.py"""
from __future__ import annotations

import math

import numpy as np

from common import HAVE_TORCH, gpu_ms, report, torch, torch_ms

import minigrad as mg
from minigrad import Tensor

SHAPES = [(1, 4096, 64), (128, 2048, 64), (64, 4096, 128), (384, 256, 64)]


def main():
    rng = np.random.default_rng(0)
    card = mg.device.get_backend("cuda").device_name
    rows = []
    for bh, s, d in SHAPES:
        q32, k32, v32, do32 = (rng.standard_normal((bh, s, d), dtype=np.float32)
                               for _ in range(4))
        for causal in (False, True):
            tag = f"{bh}x{s}x{d}" + (" causal" if causal else "")
            q, k, v, do = (Tensor(x, device="cuda").realize() for x in (q32, k32, v32, do32))
            flash = mg.ops.attention_flash_causal if causal else mg.ops.attention_flash
            fwd = gpu_ms(lambda: flash(q, k, v).realize())
            leaves = [Tensor(x, device="cuda", requires_grad=True).realize()
                      for x in (q32, k32, v32)]

            def fwd_bwd():
                for t in leaves:
                    t.grad = None
                flash(*leaves).backward(do)
                mg.realize(*(t.grad for t in leaves))
            both = gpu_ms(fwd_bwd)
            tf = tb = None
            if HAVE_TORCH:
                sdpa = torch.nn.functional.scaled_dot_product_attention
                # 4-D [1, bh, S, D]: with 3-D inputs SDPA skips its fused f32 kernels
                tq, tk, tv, tdo = (torch.from_numpy(x).cuda().view(1, bh, s, d)
                                   for x in (q32, k32, v32, do32))
                tf = torch_ms(lambda: sdpa(tq, tk, tv, is_causal=causal))
                lq, lk, lv = (t.clone().requires_grad_(True) for t in (tq, tk, tv))

                def t_fwd_bwd():
                    for t in (lq, lk, lv):
                        t.grad = None
                    sdpa(lq, lk, lv, is_causal=causal).backward(tdo)
                tb = torch_ms(t_fwd_bwd)
            rows.append({"name": "flash fwd", "shape": tag, "ours_ms": fwd,
                         "ref": "torch SDPA f32", "ref_ms": tf})
            rows.append({"name": "flash fwd+bwd", "shape": tag, "ours_ms": both,
                         "ref": "torch SDPA f32 fwd+bwd", "ref_ms": tb,
                         "bwd/fwd": (both - fwd) / fwd})
            qh, kh, vh = (t.half().realize() for t in (q, k, v))
            tc = mg.ops.attention_tc_causal if causal else mg.ops.attention_tc
            ours = gpu_ms(lambda: tc(qh, kh, vh).realize())
            ref = None
            if HAVE_TORCH:
                hq, hk, hv = (t.half() for t in (tq, tk, tv))
                mask = torch.triu(torch.ones(s, s, dtype=torch.bool, device="cuda"), 1)

                def three_ops():
                    sc = (hq @ hk.transpose(-1, -2)) * (1 / math.sqrt(d))
                    if causal:
                        sc = sc.masked_fill(mask, float("-inf"))
                    return sc.softmax(-1) @ hv
                ref = torch_ms(three_ops)
            rows.append({"name": "attention_tc fwd", "shape": tag, "ours_ms": ours,
                         "ref": "torch f16 softmax(QK^T*s)@V (3 ops)", "ref_ms": ref})
    report("attention", card, rows, ("bwd/fwd",))


if __name__ == "__main__":
    main()
