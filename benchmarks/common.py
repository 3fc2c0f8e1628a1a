"""Shared pieces of the benchmark scripts: CUDA-event timers for minigrad (on its own
stream) and PyTorch, and the results file (benchmarks/results/<script>.json, the format of
DESIGN.md: card, date, commit, rows of name/shape/ours_ms/ref/ref_ms/speedup)."""
from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    import torch
    HAVE_TORCH = torch.cuda.is_available()
except ImportError:
    torch, HAVE_TORCH = None, False


def gpu_ms(fn, reps=20, medians=1):
    """Worst of `medians` medians of `reps` timings of fn() with CUDA events on
    minigrad's stream (one warm-up call first: compiles and caches stay out)."""
    import pycuda.driver as drv
    from minigrad.backend.cuda import runtime
    fn()
    runtime.synchronize()
    worst = 0.0
    for _ in range(medians):
        times = []
        for _ in range(reps):
            a, b = drv.Event(), drv.Event()
            a.record(runtime.stream)
            fn()
            b.record(runtime.stream)
            b.synchronize()
            times.append(b.time_since(a))
        worst = max(worst, statistics.median(times))
    return worst


def torch_ms(fn, reps=20, medians=1):
    """The same for PyTorch on its current stream."""
    fn()
    torch.cuda.synchronize()
    worst = 0.0
    for _ in range(medians):
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        worst = max(worst, statistics.median(times))
    return worst


def commit() -> str | None:
    try:
        # "-dirty" when the tree differs from HEAD (a copied tree whose .git is older
        # than its files reads so: the commit is then the last one, plus changes)
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"],
                              capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        return None


def report(script: str, card: str, rows: list, extra_cols=()):
    """Print a markdown table of rows (dicts with name, shape, ours_ms, ref, ref_ms and the
    `extra_cols`) and write benchmarks/results/<script>.json (and $OUT/ when set)."""
    for r in rows:
        r["speedup"] = r["ref_ms"] / r["ours_ms"] if r.get("ref_ms") else None
    result = {"card": card, "date": datetime.date.today().isoformat(), "commit": commit(),
              "torch": torch.__version__ if torch is not None else None, "rows": rows}
    cols = ["name", "shape", "ours_ms", "ref", "ref_ms", "speedup", *extra_cols]
    print(f"card: {card}  date: {result['date']}  torch: {result['torch']}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                 for c in cols]
        print("| " + " | ".join(cells) + " |")
    text = json.dumps(result, indent=2) + "\n"
    out = Path(__file__).parent / "results" / f"{script}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"{script}.json").write_text(text)
