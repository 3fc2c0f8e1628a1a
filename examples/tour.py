"""A tour of minigrad's scripting API on one page: run it, then read it top to bottom.

    python examples/tour.py                          # the default device (CUDA if it works)
    MINIGRAD_DEVICE=cpu python examples/tour.py

1. tensors and NumPy       4. a custom autograd Function
2. laziness and DEBUG      5. the twelve kernel ops of mg.ops
3. autograd                6. an nn module, and training it
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minigrad as mg  # noqa: E402
from minigrad import Tensor  # noqa: E402
from minigrad import lazy  # noqa: E402  (the graph and scheduler, for section 2)


argparse.ArgumentParser(description=__doc__,          # (no options: --help prints this)
                        formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()


def section(title):
    print(f"\n=== {title} " + "=" * (60 - len(title)))


# -------------------------------------------------------------------------------------
section("1. tensors and NumPy")
device = mg.default_device()               # "cuda" when it works, else "cpu"
print("default device:", device, "| CUDA available:", mg.cuda_available())
a = Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])            # from a nested list: float32
b = Tensor(np.arange(6).reshape(2, 3))                    # from NumPy: int64 stays int64
print(a.shape, a.dtype, a.device, "|", b.dtype, "|", b.float().dtype, b.to(mg.float16).dtype)
c = a * 10 + b                              # NumPy rules: int64 meets float32 -> float32
print(c)                                    # printing computes it
print(c.numpy().sum(axis=0), type(c.numpy()).__name__)   # .numpy() gives an ndarray
print(a[:, 1:].tolist(), a.T.shape, a.reshape(3, 2).sum(axis=0).tolist(), a.max().item())
mg.manual_seed(0)
print("randn:", Tensor.randn(4).numpy())    # reproducible after mg.manual_seed


# -------------------------------------------------------------------------------------
section("2. laziness: a graph first, numbers later")
x = Tensor([1.0, -2.0, 3.0])
y = (x * x + 1).relu().sum()                # builds graph nodes; computes nothing yet
print(repr(y))                              # "lazy": nothing has run


def show_graph(t, indent=0):
    """Print the lazy graph behind t (t.lazydata is its node; .srcs its inputs)."""
    node = t.lazydata if isinstance(t, Tensor) else t
    state = "realized" if node.realized is not None else "lazy"
    print(f"{'  ' * indent}{node.describe():12s} {node.shape} {node.dtype.name} ({state})")
    for src in node.srcs:
        show_graph(src, indent + 1)


show_graph(y)
# DEBUG=1..4 in the environment (read at import) prints what runs: 1 a line per
# schedule, 2 a line per op with its time, 3 also the schedule's nodes first.
# lazy.DEBUG changes the level in a running program:
lazy.DEBUG = 3
print("y =", y.item())                      # realizing runs the schedule, printed above
lazy.DEBUG = 0
print(repr(y))                              # now realized; its graph has been freed


# -------------------------------------------------------------------------------------
section("3. autograd")
w = Tensor([0.5, -1.0, 2.0], requires_grad=True)
loss = ((w * x).sum() - 1.0) ** 2           # d loss / d w = 2 * (w.x - 1) * x
loss.backward()                             # adds the backward graph, lazily
print("loss", loss.item(), "grad", w.grad.tolist(),
      "expected", (2 * (np.dot([0.5, -1, 2], [1, -2, 3]) - 1) * np.array([1, -2, 3])).tolist())
with mg.no_grad():                          # inference: no graph for backward
    print("under no_grad:", (w * 2).requires_grad)


# -------------------------------------------------------------------------------------
section("4. a custom autograd Function")


class Softplus(mg.autograd.Function):
    """log(1 + exp(x)), with its gradient written by hand: sigmoid(x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x.exp() + 1).log()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.sigmoid()


z = Tensor([-1.0, 0.0, 2.0], requires_grad=True)
Softplus.apply(z).sum().backward()
print("softplus'(z) =", z.grad.numpy(), "= sigmoid(z) =", 1 / (1 + np.exp(-z.numpy())))
# gradcheck compares backward() with finite differences, in float64 on the CPU
print("gradcheck:", mg.gradcheck(Softplus.apply, [Tensor(np.random.randn(5),
                                                          requires_grad=True)]))


# -------------------------------------------------------------------------------------
section(f"5. the twelve ops of mg.ops on {device}")
# Each takes and returns Tensors; on CUDA it is a hand-written kernel, on the CPU the
# NumPy reference that rounds the same way. Checked here against plain NumPy math.
rng = np.random.default_rng(0)
M, K, N = 8, 64, 16                          # K = 64: a multiple of the int4 group size
B, H, S, D = 1, 2, 8, 16                     # attention: batch, heads, sequence, head dim
f16 = lambda arr: Tensor(arr, dtype=mg.float16, device=device)
bf16 = lambda arr: Tensor(arr, dtype=mg.bfloat16, device=device)
f32 = lambda arr: Tensor(arr, dtype=mg.float32, device=device)


def check(name, out, expected, tol=2e-2):
    got = out.float().numpy()
    err = float(np.abs(got - expected).max())
    ok = err <= tol * max(1.0, float(np.abs(expected).max()))
    print(f"  {name:24s} -> {str(out.shape):14s} {out.dtype.name:8s} max|err| {err:.1e}"
          f"  {'ok' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit(f"{name}: result differs from NumPy")


def attention_np(q, k, v, causal):
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], bool), 1), -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True) @ v


a_np = rng.standard_normal((M, K)).astype(np.float16)
b_np = rng.standard_normal((K, N)).astype(np.float16)
exact = a_np.astype(np.float32) @ b_np.astype(np.float32)
check("matmul_tc", mg.ops.matmul_tc(f16(a_np), f16(b_np)), exact)
check("matmul_tc_async", mg.ops.matmul_tc_async(f16(a_np), f16(b_np)), exact)
a_bf, b_bf = bf16(a_np), bf16(b_np)            # bfloat16 keeps 8 bits of mantissa
exact = a_bf.float().numpy() @ b_bf.float().numpy()
check("matmul_tc_bf16", mg.ops.matmul_tc_bf16(a_bf, b_bf), exact)
check("matmul_tc_bf16_async", mg.ops.matmul_tc_bf16_async(a_bf, b_bf), exact)

a8 = rng.integers(-127, 128, (M, K), dtype=np.int8)
b8 = rng.integers(-127, 128, (K, N), dtype=np.int8)
check("matmul_int8", mg.ops.matmul_int8(Tensor(a8, device=device), Tensor(b8, device=device),
                                        0.01), (a8.astype(np.int32) @ b8) * 0.01)

w = rng.standard_normal((K, N)).astype(np.float32)       # a float weight [K, N] ...
packed, scales = mg.quant.quantize_int4(w, group_size=32, device=device)   # ... as int4
w_int4 = mg.quant.dequantize_int4(packed, scales, group_size=32).numpy()   # what it holds
check("matmul_int4", mg.ops.matmul_int4(f16(a_np), packed, scales, group_size=32),
      a_np.astype(np.float32) @ w_int4)

ws = [rng.standard_normal((K, N)).astype(np.float32) for _ in range(3)]   # W_q, W_k, W_v
q8 = [mg.quant.quantize_int8(wi, device=device) for wi in ws]              # (int8, scale)
outs = mg.ops.qkv_project_int8(f16(a_np), *(q for q, _ in q8), *(s for _, s in q8))
for name, o, (q, s) in zip("qkv", outs, q8):
    check(f"qkv_project_int8 ({name})", o, a_np.astype(np.float32) @ (q.numpy() * s))
q4 = [mg.quant.quantize_int4(wi, group_size=32, device=device) for wi in ws]
outs = mg.ops.qkv_project_int4(f16(a_np), *(p for p, _ in q4), *(s for _, s in q4),
                               group_size=32)
for name, o, (p, s) in zip("qkv", outs, q4):
    check(f"qkv_project_int4 ({name})", o,
          a_np.astype(np.float32) @ mg.quant.dequantize_int4(p, s, group_size=32).numpy())

q, k, v = (rng.standard_normal((B, H, S, D)).astype(np.float16) for _ in range(3))
q32, k32, v32 = (t.astype(np.float32) for t in (q, k, v))
check("attention_tc", mg.ops.attention_tc(f16(q), f16(k), f16(v)),
      attention_np(q32, k32, v32, causal=False))
check("attention_tc_causal", mg.ops.attention_tc_causal(f16(q), f16(k), f16(v)),
      attention_np(q32, k32, v32, causal=True))
check("attention_flash", mg.ops.attention_flash(f32(q32), f32(k32), f32(v32)),
      attention_np(q32, k32, v32, causal=False), tol=1e-4)
check("attention_flash_causal", mg.ops.attention_flash_causal(f32(q32), f32(k32), f32(v32)),
      attention_np(q32, k32, v32, causal=True), tol=1e-4)


# -------------------------------------------------------------------------------------
section("6. an nn module in three lines, and training it")


class TwoLayer(mg.nn.Module):
    def __init__(self): self.fc1, self.fc2 = mg.nn.Linear(3, 32), mg.nn.Linear(32, 1)
    def forward(self, x): return self.fc2(self.fc1(x).gelu())


mg.manual_seed(0)
model = TwoLayer().to(device)
print(model)
print("parameters:", [f"{n} {tuple(p.shape)}" for n, p in model.named_parameters()])
inputs = Tensor(rng.uniform(-1, 1, (256, 3)), device=device)
targets = (inputs * inputs).sum(axis=1, keepdim=True)      # learn x0² + x1² + x2²
opt = mg.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
for step in range(201):
    loss = ((model(inputs) - targets) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()                               # forward, backward and update run here
    if step % 50 == 0:
        print(f"  step {step:3d}: loss {loss.item():.4f}")
print("\nThe end. Next: docs/tutorial.md, examples/train_gpt.py, examples/addition.py.")
