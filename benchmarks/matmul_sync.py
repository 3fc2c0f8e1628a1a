"""The sync ops (mg.ops.matmul_tc, matmul_tc_bf16) through the minigrad stack at the
issue-4 target sizes, A @ B and A @ Bᵀ (a transposed view: layout nt), against
torch.mm(out_dtype=f32) on the same card (without PyTorch: ours alone). Worst of 5
medians of 20 (benchmarks/common.py); the inputs are not rotated (both sides read warm
operands). Prints a markdown table.

Usage (GPU machine): python benchmarks/matmul_sync.py [--single-cta]
  --single-cta  the sync ops run the single-CTA kernels (n256c1 / n128c1) wherever the
                launcher would pick a 2-CTA cluster (n256c2, whose peer stores are st.async):
                the before/after of the clusters through the stack"""
import sys

import numpy as np

from common import HAVE_TORCH, gpu_ms, torch, torch_ms

import minigrad as mg
from minigrad import Tensor


def force_single_cta():
    from minigrad.backend.cuda import ops_matmul as om
    rule = om.ws_tile

    def single(m, n, batch, sms, sync=False):
        bn, cm = rule(m, n, batch, sms, sync)
        return (bn, 1) if sync else (bn, cm)
    om.ws_tile = single


def main():
    if "--single-cta" in sys.argv[1:]:
        force_single_cta()
    print(mg.device.get_backend("cuda").device_name)
    print("| op | size | layout | ours ms | torch ms | torch/ours | ours TFLOP/s |")
    print("|---|---|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for n in (4096, 8192):
        a32, b32 = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        for name, mdt, tdt in (("matmul_tc", mg.float16, "float16"),
                               ("matmul_tc_bf16", mg.bfloat16, "bfloat16")):
            a, b = (Tensor(x, device="cuda").cast(mdt).realize() for x in (a32, b32))
            op = getattr(mg.ops, name)
            if HAVE_TORCH:
                ta, tb = (torch.from_numpy(x).cuda().to(getattr(torch, tdt)) for x in (a32, b32))
            for lay in ("nn", "nt"):
                y = b.T if lay == "nt" else b
                ours = gpu_ms(lambda: op(a, y).realize(), medians=5)
                ref = ""
                if HAVE_TORCH:
                    ty = tb.T if lay == "nt" else tb
                    ms = torch_ms(lambda: torch.mm(ta, ty, out_dtype=torch.float32), medians=5)
                    ref = f"{ms:.4f} | {ms / ours:.2f}"
                print(f"| {name} | {n}³ | {lay} | {ours:.4f} | {ref or '- | -'} | "
                      f"{2 * n ** 3 / ours / 1e9:.0f} |", flush=True)


if __name__ == "__main__":
    main()
