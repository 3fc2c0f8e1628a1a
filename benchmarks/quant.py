"""Quantized family through minigrad (mg.ops on realized CUDA tensors, common.gpu_ms: worst
of 5 medians of 20, host time of the lazy graph included) against references on the same
card in the same run; a markdown table and benchmarks/results/quant.json (common.report).

  int8   matmul_int8 4096^3, 8192^3 vs torch._int_mm, fastest of its B layouts (row-major
         [K,N] or column-major = a transposed [N,K]). Ours also applies the scale and
         writes f32; _int_mm writes int32 with no scale (the `computes` column).  >= 1.0x
  int4   matmul_int4 (G=128) decode M in {1,16}, (N,K) in (4096,4096), (11008,4096),
         (4096,11008) vs torch f16 (fastest of torch.matmul(x, W[K,N]) and F.linear(x,
         W[N,K])) on the dequantized weight, >= 3x; with the GB/s of packed weights +
         scales against the device copy bandwidth measured in this run (torch copy_ of
         1 GiB, bytes read + written; minigrad x+1 without torch). Prefill M=2048 vs our
         own f16 mg.ops.matmul_tc (the op the issue names) and mg.ops.matmul_tc_async (our
         fastest), each the faster of W [K,N] and [N,K].T, >= 0.8x.
  qkv    qkv_project_int8 / _int4 (one launch) vs three separate calls of minigrad's
         corresponding single op, as the issue means, at M in {1,16,64,2048}, K=N=4096 and
         K=N=384: int4 -> 3 x mg.ops.matmul_int4 (f32 out); int8 -> 3 x mg.ops.matmul_int8,
         the only single int8 op, which is W8A8: x is quantized to int8 once, untimed.
         >= 2.5x at M <= 64, >= 1.0x at M = 2048.
Inputs are fresh random normals, weights quantized with mg.quant, all realized before
timing. Decode and QKV weights are cold: each timed call takes the next of enough copies
(~256 MB in all, > L2) for both sides (--warm-l2: one copy). ours_ms/ref_ms are per call
and include each side's host time (minigrad's lazy graph, checks, launch); kernel_ms is
the GPU time of the kernels one minigrad call launches (events around each launch, with a
384 MB read queued first so that the host's launch latency stays outside the events), for
ours and, where the reference is minigrad's, the reference. int8 rows are preceded by 0.3 s
of back-to-back calls (the GPU's clocks ramp up). Without PyTorch
(common.HAVE_TORCH) the torch columns stay empty.

Usage (GPU machine): python benchmarks/quant.py [--quick] [--rows int8,int4,qkv] [--warm-l2]
                    [--skip-prefill] [--qkv-m 1,16,64]
  --quick       first shape of each group only, fewer reps
  --device cpu  smoke test on tiny shapes through the NumPy references (times
                meaningless; writes results/quant_cpu.json)"""
from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time

import numpy as np

from common import HAVE_TORCH, gpu_ms, report, torch, torch_ms

import minigrad as mg
from minigrad import Tensor, quant

G = 128
FULL = {"int8": (4096, 8192), "int4": ((4096, 4096), (11008, 4096), (4096, 11008)),
        "decode_m": (1, 16), "prefill_m": 2048, "qkv_d": (4096, 384), "qkv_m": (1, 16, 64, 2048)}
TINY = {"int8": (64,), "int4": ((256, 256), (384, 128)), "decode_m": (1, 16), "prefill_m": 96,
        "qkv_d": (256,), "qkv_m": (1, 16, 80)}
ROWS = ("int8", "int4", "qkv")
ROTATE_BYTES, MAX_COPIES = 256 << 20, 64     # cold weights: copies cycled, > any L2
BUSY_FLOATS = 96 << 20       # kernel_ms: a 384 MB read queued ahead of each timed call
WARM_S = 0.3                 # int8 rows: seconds of back-to-back calls before timing


def host_ms(fn, reps, medians):
    """gpu_ms's protocol with a host clock (the CPU smoke mode)."""
    fn()
    worst = 0.0
    for _ in range(medians):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        worst = max(worst, statistics.median(times))
    return worst


class Bench:
    def __init__(self, args):
        self.dev = args.device
        self.torch = HAVE_TORCH and self.dev == "cuda"
        self.cold = self.dev == "cuda" and not args.warm_l2
        self.reps, self.medians = (10, 2) if args.quick else (20, 5)
        self.rng = np.random.default_rng(0)
        self.rows = []
        self.copy_bw = None
        self._busy = None
        self.skip_prefill = args.skip_prefill

    def warm(self, fn, secs=WARM_S):
        """Run fn back to back for `secs` (the GPU's clocks ramp up; the first int8 row of
        the 2026-11-27 run, timed right after a long compile, read 0.34 ms for a 0.15 ms
        kernel)."""
        if self.dev != "cuda":
            return
        from minigrad.backend.cuda import runtime
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < secs:
            fn()
            runtime.synchronize()

    def busy(self):
        """Queue a read-only reduction over 384 MB (~0.1 ms of GPU time, not recorded):
        the GPU is still busy with it while the host builds and launches the timed call,
        so the events around each launch time the kernel alone, not the host's launch
        latency (the 2026-11-27 kernel_ms column had it); it also leaves L2 full of clean
        lines, the cold-weights state of the standalone harness."""
        if self._busy is None:
            self._busy = Tensor.randn(BUSY_FLOATS, device=self.dev).realize()
        self._busy.sum().realize()

    def ours(self, fn):
        timer = gpu_ms if self.dev == "cuda" else host_ms
        return timer(fn, self.reps, self.medians)

    def kernel_ms(self, fn):
        """Median over reps of the summed GPU time of the kernels one fn() launches
        (events around each runtime.launch, with busy() queued first so that the host's
        time - graph, checks, launch - stays out; L2 holds clean lines, not fn's inputs)."""
        if self.dev != "cuda":
            return None
        import pycuda.driver as drv
        from minigrad.backend.cuda import runtime
        real, rec, per, on = runtime.launch, [], [], [False]

        def launch(*a, **kw):
            if not on[0]:
                return real(*a, **kw)
            e0, e1 = drv.Event(), drv.Event()
            e0.record(runtime.stream)
            real(*a, **kw)
            e1.record(runtime.stream)
            rec.append((e0, e1))
        runtime.launch = launch
        try:
            fn()
            for _ in range(self.reps):
                rec.clear()
                self.busy()
                on[0] = True
                fn()
                on[0] = False
                runtime.synchronize()
                per.append(sum(e0.time_till(e1) for e0, e1 in rec))
        finally:
            runtime.launch = real
        return statistics.median(per)

    def ring(self, make, nbytes):
        """A function returning, in turn, make() copies enough to overflow L2 (one copy
        with --warm-l2 or on the CPU)."""
        n = max(1, min(MAX_COPIES, -(-ROTATE_BYTES // nbytes))) if self.cold else 1
        return functools.partial(next, itertools.cycle([make() for _ in range(n)]))

    def fastest_ref(self, cands):
        """{label: fn} -> (label, ms) of the fastest torch candidate, or ('-', None)."""
        if not self.torch:
            return "-", None
        ms = {label: torch_ms(fn, self.reps, self.medians) for label, fn in cands.items()}
        best = min(ms, key=ms.get)
        return best, ms[best]

    def randn(self, *shape, scale=1.0):
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    def f16(self, arr):
        return Tensor(arr, device=self.dev).half().realize()

    def up(self, *ts):
        """Fresh device copies of minigrad tensors (through the host)."""
        return tuple(Tensor(t.numpy(), device=self.dev).realize() for t in ts)

    def add(self, target=None, **row):
        if target is not None and row.get("ref_ms"):
            sp = row["ref_ms"] / row["ours_ms"]
            row["target"], row["met"] = f">={target}x", "yes" if sp >= target else "no"
        self.rows.append(row)


def tt(t: Tensor):
    """A minigrad tensor as a torch CUDA tensor (same values)."""
    return torch.from_numpy(np.ascontiguousarray(t.numpy())).cuda()


def int8_rows(b, sizes):
    for s in sizes:
        a, sa = quant.quantize_int8(b.randn(s, s), device=b.dev)     # activations [M, K]
        w, sw = quant.quantize_int8(b.randn(s, s), device=b.dev)     # weight [N, K] (Linear)
        mg.realize(a, w)

        def fn():
            return mg.ops.matmul_int8(a, w.T, sa * sw).realize()
        b.warm(fn)
        ours = b.ours(fn)
        kern = b.kernel_ms(fn)
        lay, ref = "(no torch)", None
        if b.torch:
            ta, tw = tt(a), tt(w)
            tw_row = tw.t().contiguous()
            b.warm(lambda: torch._int_mm(ta, tw.t()))
            lay, ref = b.fastest_ref({"B row-major [K,N]": lambda: torch._int_mm(ta, tw_row),
                                      "B col-major ([N,K].t())": lambda: torch._int_mm(ta, tw.t())})
            torch.cuda.empty_cache()
        ops = 2 * s ** 3 / 1e9
        b.add(name="matmul_int8", shape=f"{s}^3", ours_ms=ours, ref=f"torch._int_mm, {lay}",
              ref_ms=ref, target=1.0, ours_kernel_ms=kern,
              computes="ours int8.int8->int32, *scale -> f32; ref int8.int8 -> int32, no scale",
              rate=f"{ops / ours:.4g}" + (f" / {ops / ref:.4g}" if ref else "") + " TOPS")


def copy_bandwidth(b):
    """Device copy GB/s (bytes read + written), measured in this run."""
    nbytes = 2 ** 30 if b.dev == "cuda" else 2 ** 24
    if b.torch:
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        how, ms = b.fastest_ref({"torch copy_": lambda: dst.copy_(src)})
    else:
        x = Tensor.randn(nbytes // 4, device=b.dev).realize()
        ms, how = b.ours(lambda: (x + 1).realize()), "minigrad x+1 f32"
    b.copy_bw = 2 * nbytes / ms / 1e6
    b.add(name="device copy (bandwidth reference)", shape=f"{nbytes >> 20} MiB", ours_ms=ms,
          ref="-", computes=f"{how}, bytes read + written", GBps=b.copy_bw)


def int4_rows(b, shapes, decode_m, prefill_m):
    copy_bandwidth(b)
    if b.torch:
        torch.cuda.empty_cache()
    for n, k in shapes:
        packed, scales = quant.quantize_int4(b.randn(k, n, scale=0.02), G, device=b.dev)
        mg.realize(packed, scales)
        wbytes = packed.numel() * 4 + scales.numel() * 2
        wdq = quant.dequantize_int4(packed, scales, G).half().realize()           # [K, N]
        w4 = b.ring(lambda: b.up(packed, scales), wbytes)
        if b.torch:
            tw = tt(wdq)
            tw_nk = tw.t().contiguous()
            w16 = b.ring(lambda: (tw.clone(), tw_nk.clone()), 2 * k * n)
        for m in decode_m:
            x = b.f16(b.randn(m, k))
            ours = b.ours(lambda: mg.ops.matmul_int4(x, *w4(), G).realize())
            kern = b.kernel_ms(lambda: mg.ops.matmul_int4(x, *w4(), G).realize())
            lay, ref = "torch f16 (no torch)", None
            if b.torch:
                tx = tt(x)
                lay, ref = b.fastest_ref({
                    "torch.matmul f16, W [K,N]": lambda: torch.matmul(tx, w16()[0]),
                    "F.linear f16, W [N,K]": lambda: torch.nn.functional.linear(tx, w16()[1])})
            gbps = wbytes / ours / 1e6
            b.add(name="matmul_int4 decode", shape=f"M={m} N={n} K={k}", ours_ms=ours, ref=lay,
                  ref_ms=ref, target=3.0, ours_kernel_ms=kern, GBps=gbps,
                  of_copy_bw=gbps / b.copy_bw,
                  computes="ours f16 x . int4 W (G=128) -> f32; ref f16 x . f16 W -> f16")
        w4 = w16 = None
        if b.torch:
            torch.cuda.empty_cache()
        if b.skip_prefill:
            continue
        x = b.f16(b.randn(prefill_m, k))
        ours = b.ours(lambda: mg.ops.matmul_int4(x, packed, scales, G).realize())
        ours_kern = b.kernel_ms(lambda: mg.ops.matmul_int4(x, packed, scales, G).realize())
        w_nk = wdq.T.contiguous().realize()
        fl = 2 * prefill_m * n * k / 1e9
        # the issue names matmul_tc (the sync op); matmul_tc_async, our fastest f16 matmul,
        # is reported beside it
        for op in (mg.ops.matmul_tc, mg.ops.matmul_tc_async):
            refs = {lbl: b.ours(lambda: op(x, w).realize())
                    for lbl, w in (("W [K,N]", wdq), ("W [N,K].T", w_nk.T))}
            lay = min(refs, key=refs.get)
            w = wdq if lay == "W [K,N]" else w_nk.T
            b.add(name="matmul_int4 prefill", shape=f"M={prefill_m} N={n} K={k}", ours_ms=ours,
                  ref=f"mg.ops.{op.__name__} f16, {lay}", ref_ms=refs[lay], target=0.8,
                  ours_kernel_ms=ours_kern,
                  ref_kernel_ms=b.kernel_ms(lambda: op(x, w).realize()),
                  computes="ours f16 x . int4 W -> f32; ref f16 x . f16 W -> f32",
                  rate=f"{fl / ours:.4g} / {fl / refs[lay]:.4g} TFLOP/s")


def qkv_rows(b, dims, ms):
    for d in dims:
        q8 = [quant.quantize_int8(b.randn(d, d, scale=0.02), device=b.dev) for _ in range(3)]
        q4 = [quant.quantize_int4(b.randn(d, d, scale=0.02), G, device=b.dev) for _ in range(3)]
        s8 = [s for _, s in q8]                  # int8 weights are kept [N, K], passed .T
        w8 = b.ring(lambda: [w.T for w in b.up(*(w for w, _ in q8))], 3 * d * d)
        w4 = b.ring(lambda: b.up(*(t for pair in q4 for t in pair)),
                    3 * (d * d // 2 + d // G * d * 2))
        for m in ms:
            x = b.f16(b.randn(m, d))
            xq, sx = quant.quantize_int8(x)      # the W8A8 input of the separate int8 calls
            xq.realize()

            def fused4():
                p = w4()                         # (packed, scales) x 3, interleaved
                mg.realize(*mg.ops.qkv_project_int4(x, *p[0::2], *p[1::2], G))

            def sep4():
                p = w4()
                mg.realize(*(mg.ops.matmul_int4(x, w, s, G) for w, s in zip(p[0::2], p[1::2])))
            cases = [
                ("qkv_project_int8", lambda: mg.realize(*mg.ops.qkv_project_int8(x, *w8(), *s8)),
                 lambda: mg.realize(*(mg.ops.matmul_int8(xq, w, sx * s)
                                      for w, s in zip(w8(), s8))),
                 "3 x mg.ops.matmul_int8 (W8A8, x pre-quantized untimed)",
                 "ours f16 x . int8 W -> 3 f16; ref int8 x . int8 W -> 3 f32"),
                ("qkv_project_int4", fused4, sep4, "3 x mg.ops.matmul_int4",
                 "ours f16 x . int4 W -> 3 f16; ref same -> 3 f32")]
            for name, fused, sep, ref_name, computes in cases:
                b.add(name=name, shape=f"M={m} K=N={d}", ours_ms=b.ours(fused), ref=ref_name,
                      ref_ms=b.ours(sep), target=2.5 if m <= 64 else 1.0,
                      ours_kernel_ms=b.kernel_ms(fused), ref_kernel_ms=b.kernel_ms(sep),
                      computes=computes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--quick", action="store_true", help="first shape of each group, fewer reps")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma list of int8,int4,qkv")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--warm-l2", action="store_true", help="one copy of each weight")
    ap.add_argument("--skip-prefill", action="store_true",
                    help="int4: decode rows only (the prefill reference compiles matmul_tc)")
    ap.add_argument("--qkv-m", default=None, help="comma list of M for the qkv rows")
    args = ap.parse_args()
    sel = [r.strip() for r in args.rows.split(",") if r.strip()]
    if bad := [r for r in sel if r not in ROWS]:
        ap.error(f"--rows: unknown {bad}; choose from {','.join(ROWS)}")
    if args.device == "cuda" and not mg.cuda_available():
        ap.error("no usable CUDA device (try --device cpu for the smoke test)")
    sh = dict(FULL if args.device == "cuda" else TINY)
    if args.quick:
        sh.update(int8=sh["int8"][:1], int4=sh["int4"][:1], qkv_d=sh["qkv_d"][:1])
    b = Bench(args)
    card = mg.device.get_backend("cuda").device_name if args.device == "cuda" else \
        "cpu (NumPy references; smoke test, times meaningless)"
    with mg.no_grad():
        if "int8" in sel:
            int8_rows(b, sh["int8"])
        if "int4" in sel:
            int4_rows(b, sh["int4"], sh["decode_m"], sh["prefill_m"])
        if "qkv" in sel:
            qkv_rows(b, sh["qkv_d"], tuple(int(m) for m in args.qkv_m.split(",")) if args.qkv_m
                     else sh["qkv_m"])
    report("quant" if args.device == "cuda" else "quant_cpu", card, b.rows,
           ("target", "met", "ours_kernel_ms", "ref_kernel_ms", "rate", "GBps", "of_copy_bw",
            "computes"))


if __name__ == "__main__":
    main()
