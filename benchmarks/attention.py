"""Attention family through minigrad (mg.ops.attention_*) against PyTorch on the same card:
flash forward and forward+backward (f32; the backward re-runs the stats forward) against
scaled_dot_product_attention in f32, attention_tc (f16 in, f32 out) against PyTorch's f16
softmax(Q·Kᵀ·scale)·V of three ops; and our backward/forward ratio. Median of 20.

Flash runs the 3xTF32 tensor-core kernels (flash_attention_tf32.cu) for D <= 128 and the
FFMA ones (flash_attention.cu) above. The GPT training shape (64 x 6 heads, S = 256, D = 64,
causal, attention dropout 0.2) is timed as well; --compare-ffma also times the FFMA kernels
(ops_attention.TF32 = False) in the same process: at the GPT shape, and with --all-ffma at
every shape (benchmarks/attention_kernels_standalone.py --bench times both at every shape).

Usage (GPU machine): python benchmarks/attention.py [--no-tc] [--compare-ffma]
                     python benchmarks/attention.py --warm   # compile the modules in parallel
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from common import HAVE_TORCH, gpu_ms, report, torch, torch_ms

import minigrad as mg
from minigrad import Tensor

SHAPES = [(1, 4096, 64), (128, 2048, 64), (64, 4096, 128), (384, 256, 64)]
GPT = (64, 6, 256, 64, 0.2)         # batch, heads, S, D, attention dropout (causal)


def _compile(job):
    from minigrad.backend.cuda import compiler
    path, arch, defines = job
    compiler.compile_file(compiler.kernels_dir() / path, compiler.arch_for_file(
        (compiler.kernels_dir() / path).read_text(), arch), defines=defines)
    return job


def warm(workers=16):
    """Compile every attention module these benchmarks and tests/test_attention.py use into
    minigrad's cache (MINIGRAD_CACHE_DIR), in parallel processes (NVRTC only, no GPU)."""
    import multiprocessing as mp
    import time
    from concurrent.futures import ProcessPoolExecutor
    import pycuda.driver as drv
    drv.init()
    arch = "sm_%d%d" % drv.Device(0).compute_capability()
    jobs = [("flash_attention_tf32.cu", arch, {"FA3_ONLY_DP": dp, "FA3_DROPOUT": dr})
            for dp in (32, 64, 128) for dr in (0, 1)]
    jobs += [("flash_attention.cu", arch, {"FA_ONLY_DP": dp, "FA_DROPOUT": dr})
             for dp in (32, 64, 128, 256) for dr in (0, 1)]
    jobs += [("attention_tc.cu", arch, {"ATC_ONLY_DP": dp}) for dp in (32, 64, 128, 256)]
    t0 = time.time()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        for job in ex.map(_compile, jobs):
            pass
    print(f"[warm] {len(jobs)} attention modules for {arch} in {time.time() - t0:.1f} s", flush=True)


def flash_rows(rows, bh, s, d, causal, q32, k32, v32, do32, tag, impl_note):
    from minigrad.backend.cuda import ops_attention
    q, k, v, do = (Tensor(x, device="cuda").realize() for x in (q32, k32, v32, do32))
    flash = mg.ops.attention_flash_causal if causal else mg.ops.attention_flash
    fwd = gpu_ms(lambda: flash(q, k, v).realize())
    leaves = [Tensor(x, device="cuda", requires_grad=True).realize() for x in (q32, k32, v32)]

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
    kern = "tf32" if ops_attention._tf32(d) else "ffma"
    rows.append({"name": f"flash fwd [{kern}]{impl_note}", "shape": tag, "ours_ms": fwd,
                 "ref": "torch SDPA f32", "ref_ms": tf})
    rows.append({"name": f"flash fwd+bwd [{kern}]{impl_note}", "shape": tag, "ours_ms": both,
                 "ref": "torch SDPA f32 fwd+bwd", "ref_ms": tb, "bwd/fwd": (both - fwd) / fwd})
    return q, k, v


def gpt_rows(rows, rng):
    """The GPT training shape: causal, attention dropout p, [B, H, S, D] leading dims."""
    b, h, s, d, p = GPT
    q32, k32, v32, do32 = (rng.standard_normal((b, h, s, d), dtype=np.float32) for _ in range(4))
    tag = f"{b}x{h}x{s}x{d} causal dropout {p}"
    q, k, v, do = (Tensor(x, device="cuda").realize() for x in (q32, k32, v32, do32))
    fwd = gpu_ms(lambda: mg.ops.attention_flash_causal(q, k, v, dropout_p=p).realize())
    leaves = [Tensor(x, device="cuda", requires_grad=True).realize() for x in (q32, k32, v32)]

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        mg.ops.attention_flash_causal(*leaves, dropout_p=p).backward(do)
        mg.realize(*(t.grad for t in leaves))
    both = gpu_ms(fwd_bwd)
    tf = tb = None
    if HAVE_TORCH:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tq, tk, tv, tdo = (torch.from_numpy(x).cuda() for x in (q32, k32, v32, do32))
        tf = torch_ms(lambda: sdpa(tq, tk, tv, dropout_p=p, is_causal=True))
        lq, lk, lv = (t.clone().requires_grad_(True) for t in (tq, tk, tv))

        def t_fwd_bwd():
            for t in (lq, lk, lv):
                t.grad = None
            sdpa(lq, lk, lv, dropout_p=p, is_causal=True).backward(tdo)
        tb = torch_ms(t_fwd_bwd)
    rows.append({"name": "flash fwd (GPT, dropout)", "shape": tag, "ours_ms": fwd,
                 "ref": "torch SDPA f32 dropout", "ref_ms": tf})
    rows.append({"name": "flash fwd+bwd (GPT, dropout)", "shape": tag, "ours_ms": both,
                 "ref": "torch SDPA f32 dropout fwd+bwd", "ref_ms": tb,
                 "bwd/fwd": (both - fwd) / fwd})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", action="store_true", help="only compile the modules")
    ap.add_argument("--no-tc", action="store_true", help="skip attention_tc")
    ap.add_argument("--compare-ffma", action="store_true",
                    help="also time the FFMA flash kernels (ops_attention.TF32 = False), GPT shape")
    ap.add_argument("--all-ffma", action="store_true", help="with --compare-ffma: every shape")
    a = ap.parse_args(argv)
    if a.warm:
        warm()
        return
    from minigrad.backend.cuda import ops_attention
    rng = np.random.default_rng(0)
    card = mg.device.get_backend("cuda").device_name
    rows = []
    for bh, s, d in SHAPES:
        q32, k32, v32, do32 = (rng.standard_normal((bh, s, d), dtype=np.float32)
                               for _ in range(4))
        for causal in (False, True):
            tag = f"{bh}x{s}x{d}" + (" causal" if causal else "")
            q, k, v = flash_rows(rows, bh, s, d, causal, q32, k32, v32, do32, tag, "")
            if a.compare_ffma and a.all_ffma and d <= 128:
                ops_attention.TF32 = False
                try:
                    flash_rows(rows, bh, s, d, causal, q32, k32, v32, do32, tag, " (before)")
                finally:
                    ops_attention.TF32 = True
            if a.no_tc:
                continue
            qh, kh, vh = (t.half().realize() for t in (q, k, v))
            tc = mg.ops.attention_tc_causal if causal else mg.ops.attention_tc
            ours = gpu_ms(lambda: tc(qh, kh, vh).realize())
            ref = None
            if HAVE_TORCH:
                hq, hk, hv = (torch.from_numpy(x).cuda().view(1, bh, s, d).half()
                              for x in (q32, k32, v32))
                mask = torch.triu(torch.ones(s, s, dtype=torch.bool, device="cuda"), 1)

                def three_ops():
                    sc = (hq @ hk.transpose(-1, -2)) * (1 / math.sqrt(d))
                    if causal:
                        sc = sc.masked_fill(mask, float("-inf"))
                    return sc.softmax(-1) @ hv
                ref = torch_ms(three_ops)
            rows.append({"name": "attention_tc fwd", "shape": tag, "ours_ms": ours,
                         "ref": "torch f16 softmax(QK^T*s)@V (3 ops)", "ref_ms": ref})
    gpt_rows(rows, rng)
    if a.compare_ffma:
        ops_attention.TF32 = False
        try:
            n = len(rows)
            gpt_rows(rows, rng)
            for r in rows[n:]:
                r["name"] += " (before)"
        finally:
            ops_attention.TF32 = True
    report("attention", card, rows, ("bwd/fwd",))


if __name__ == "__main__":
    sys.exit(main())
