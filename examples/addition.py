"""Teach a small transformer to add n-digit numbers, and test it on sums it never saw.

    python examples/addition.py                    # 2 digits: >= 99% exact, ~1 min on a CPU
    python examples/addition.py --digits 3 --max-iters 6000   # 100% too, ~4 min of CPU
    python examples/addition.py --max-iters 300    # a quick look

Every problem is one short token sequence, for example 47 + 85 = 132 with --digits 2:

    4 7 + 8 5 = 2 3 1          (the sum has digits+1 digits and is written reversed)

Writing the sum least-significant digit first lets the model produce digits in the
order a person adds them, carry included; written the usual way, it would have to
know the carry before it has worked it out. The model is minigrad's GPT; it reads
the problem and is trained only on the answer tokens: every other target is
`ignore_index` (-100), which cross_entropy skips. A set of (a, b) pairs is held out
from the start and never trained on; accuracy is exact match on those, answered
greedily (the most likely digit at each step).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

# Small matrix products: one BLAS thread is as fast and kinder to a shared machine.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minigrad as mg  # noqa: E402
from minigrad import Tensor  # noqa: E402

VOCAB = "0123456789+="
PLUS, EQUALS = VOCAB.index("+"), VOCAB.index("=")
IGNORE = -100                          # cross_entropy's default ignore_index


def digits_of(x: np.ndarray, n: int) -> np.ndarray:
    """The n decimal digits of each number in x, most significant first: [len(x), n]."""
    powers = 10 ** np.arange(n - 1, -1, -1, dtype=np.int64)
    return (x[:, None] // powers) % 10


def encode(a: np.ndarray, b: np.ndarray, digits: int) -> np.ndarray:
    """Token sequences `a + b = reversed(a + b)`, one row per pair: [len(a), 3*digits + 3]."""
    n = len(a)
    answer = digits_of(a + b, digits + 1)[:, ::-1]            # least significant first
    return np.concatenate([digits_of(a, digits), np.full((n, 1), PLUS),
                           digits_of(b, digits), np.full((n, 1), EQUALS), answer], axis=1)


def decode(row) -> str:
    return "".join(VOCAB[int(t)] for t in row)


class AdditionData:
    """All pairs (a, b) with 0 <= a, b < 10**digits, numbered p = a * 10**digits + b;
    `test_size` of them, chosen at random, are held out for testing."""

    def __init__(self, digits: int, test_size: int, rng):
        self.digits, self.base = digits, 10 ** digits
        self.total = self.base ** 2
        test_size = min(test_size, self.total // 5)
        self.test = np.sort(rng.choice(self.total, size=test_size, replace=False))

    def pairs(self, p):
        return p // self.base, p % self.base

    def train_batch(self, batch_size: int, rng, device):
        """(inputs, targets) for a batch of training problems; targets are -100 except
        where the next token is a digit of the answer."""
        p = np.empty(0, dtype=np.int64)
        while len(p) < batch_size:
            draw = rng.integers(0, self.total, size=2 * batch_size)
            p = np.concatenate([p, draw[~np.isin(draw, self.test)]])  # never a held-out pair
        seq = encode(*self.pairs(p[:batch_size]), self.digits)
        x, y = seq[:, :-1], seq[:, 1:].copy()
        y[:, :2 * self.digits + 1] = IGNORE                    # only the answer is scored
        return Tensor(x, device=device), Tensor(y, device=device)


@mg.no_grad()
def evaluate(model, data: AdditionData, device, batch_size=1000):
    """Answer every held-out problem greedily (the most likely digit at each step).
    Returns (exact-match accuracy, fraction of answer digits right, problems, answers)."""
    model.eval()
    d = data.digits
    seq = encode(*data.pairs(data.test), d)
    prompt_len = 2 * d + 2                                     # "a+b="
    answers = np.concatenate([
        model.generate(Tensor(seq[i:i + batch_size, :prompt_len], device=device), d + 1,
                       temperature=0).numpy()[:, prompt_len:]
        for i in range(0, len(seq), batch_size)])
    model.train()
    ok = answers == seq[:, prompt_len:]
    return float(ok.all(axis=1).mean()), float(ok.mean()), seq, answers


def lr_at(it, args) -> float:
    """Linear warm-up, then cosine decay to lr/10."""
    if it < args.warmup_iters:
        return args.lr * (it + 1) / args.warmup_iters
    ratio = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, ratio))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--digits", type=int, default=2, help="digits of each operand")
    ap.add_argument("--max-iters", type=int, default=2000)
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup-iters", type=int, default=100)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--test-size", type=int, default=1000, help="held-out pairs")
    ap.add_argument("--device", help="cpu or cuda (default: minigrad's default device)")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    if args.digits < 1:
        ap.error("--digits must be at least 1")
    device = mg.device.canonical(args.device) if args.device else mg.default_device()

    rng = np.random.default_rng(args.seed)
    mg.manual_seed(args.seed)
    data = AdditionData(args.digits, args.test_size, rng)
    seq_len = 3 * args.digits + 3
    model = mg.nn.GPT(len(VOCAB), seq_len - 1, args.n_layer, args.n_head, args.n_embd).to(device)
    params = model.parameters()
    opt = mg.optim.AdamW([
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ], lr=args.lr, betas=(0.9, 0.98))
    print(f"{args.digits}-digit addition: {data.total - len(data.test):,} training pairs, "
          f"{len(data.test):,} held out; model {model.num_parameters():,} parameters on "
          f"{device}; e.g. {decode(encode(*data.pairs(data.test[-1:]), args.digits)[0])}")

    t_start = time.perf_counter()
    acc = digit_acc = 0.0
    for it in range(args.max_iters + 1):
        if it % args.eval_interval == 0 or it == args.max_iters:
            acc, digit_acc, seq, answers = evaluate(model, data, device)
            print(f"iter {it:5d}: held-out exact match {acc:7.2%}, digits {digit_acc:7.2%}"
                  f"  ({time.perf_counter() - t_start:.0f} s)")
        if it == args.max_iters:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(it, args)
        x, y = data.train_batch(args.batch_size, rng, device)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if it % (args.eval_interval // 5 or 1) == 0:
            print(f"iter {it:5d}: loss {loss.item():.4f}")

    seconds = time.perf_counter() - t_start
    print("some held-out problems and the model's answers (reversed back):")
    d = args.digits
    for i in np.linspace(0, len(seq) - 1, 5).astype(int):
        got, want = decode(answers[i][::-1]), decode(seq[i, 2 * d + 2:][::-1])
        print(f"  {decode(seq[i, :2 * d + 2])}{got}  " +
              ("ok" if got == want else f"wrong, the sum is {want}"))
    print(f"done in {seconds:.0f} s: held-out exact match {acc:.2%} "
          f"({len(data.test)} problems), answer digits {digit_acc:.2%}")
    return {"accuracy": acc, "digit_accuracy": digit_acc, "seconds": seconds}


if __name__ == "__main__":
    main()
