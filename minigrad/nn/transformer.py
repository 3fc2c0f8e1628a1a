"""A GPT in nanoGPT's shape: attention, MLP, pre-LayerNorm blocks and the model.

Parameter names follow nanoGPT (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`,
..., `lm_head.weight`) and Linear weights use PyTorch's (out, in) layout, so the weights of
a nanoGPT model of the same configuration (`bias=` as there) load with `load_state_dict`
once converted to NumPy arrays (without the `attn.bias` mask buffers older PyTorch saves).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..autograd import no_grad
from ..dtype import int64
from ..tensor import Tensor, realize
from .layers import Dropout, Embedding, LayerNorm, Linear
from .module import Module, ModuleDict


# ------------------------------------------------------------------ attention --
# Every attention in minigrad.nn goes through `attention()`: the one place where the
# implementation is chosen. "naive" composes Tensor ops (scores, mask, softmax,
# dropout, weighted sum) and runs anywhere; "flash" and "tc" call the fused kernels of
# minigrad.ops (FlashAttention in f32; tensor-core attention in f16 with f32 output).

@functools.lru_cache(maxsize=32)
def causal_mask(t_q: int, t_k: int, dtype, device) -> Tensor:
    """Additive mask: 0 where key j <= query i, -inf where j > i (top-left aligned)."""
    mask = np.triu(np.full((t_q, t_k), -np.inf, dtype=np.float32), k=1)
    return Tensor(mask, dtype=dtype, device=device).realize()


def naive_attention(q, k, v, causal=True, dropout_p=0.0, training=False) -> Tensor:
    """softmax(q @ k^T / sqrt(d) + mask) @ v over the last two axes, [..., T, d]."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        att = att + causal_mask(q.shape[-2], k.shape[-2], att.dtype, att.device)
    att = att.softmax(-1).dropout(dropout_p, training=training)
    return att @ v


def _kernel_attention(q, k, v, causal, impl, dropout_p=0.0):
    from .. import ops
    if impl == "flash":
        fn = ops.attention_flash_causal if causal else ops.attention_flash
        # dense copies made once in the graph: the heads are strided views of the qkv
        # projection, and the op's backward (which re-runs the forward) would otherwise
        # copy them again (on CUDA, 36 fewer copies of [B, H, T, D] per GPT step)
        dtype = q.dtype
        q, k, v = (t.float().contiguous() for t in (q, k, v))
        return fn(q, k, v, dropout_p=dropout_p).cast(dtype)
    fn = ops.attention_tc_causal if causal else ops.attention_tc
    return fn(q.half(), k.half(), v.half()).cast(q.dtype)


ATTENTION_IMPLS = ("auto", "naive", "flash", "tc")


def _flash_fits(head_dim):
    from ..device import get_backend
    return get_backend("cuda").flash_attention_fits(head_dim)


def attention(q, k, v, causal=True, dropout_p=0.0, training=False, impl="auto") -> Tensor:
    """Scaled dot-product attention of q, k, v shaped [..., T, head_size], with dropout
    of the attention probabilities (probability dropout_p) while `training`.

    impl="auto" is the flash kernel on CUDA (also while training with dropout: the flash
    ops take dropout_p, their mask drawn from minigrad's generator, mg.manual_seed) where
    its kernels fit the card's shared memory (every head size on an H100 / H200; on smaller
    cards the flash ops raise for some head sizes, so "auto" composes ops there), and
    the composed ops on the CPU; "flash" runs the flash ops on any device (the CPU runs
    their NumPy reference); "tc" (f16 tensor-core attention) has no dropout and raises
    while training with dropout_p > 0. Flash dropout and the composed ops' dropout keep
    each probability with the same chance 1-p, but they draw different masks."""
    drop = dropout_p if training else 0.0
    if impl == "auto":
        impl = "flash" if q.device == "cuda" and drop < 1 and _flash_fits(q.shape[-1]) \
            else "naive"
    if impl == "naive":
        return naive_attention(q, k, v, causal, dropout_p, training)
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention: impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl == "tc" and drop > 0:
        raise ValueError("attention: impl='tc' has no attention dropout; use dropout=0.0 or "
                         "impl='flash' or 'naive'")
    return _kernel_attention(q, k, v, causal, impl, drop)


def _multi_head_attention(q, k, v, n_head, dropout_p, training, impl) -> Tensor:
    """Causal attention of q, k, v (batch, time, C) with n_head heads of C // n_head
    channels each, merged back to (batch, time, C). CausalSelfAttention and
    nn.QuantCausalSelfAttention both use it: they differ only in how q, k, v are made."""
    B, T, C = q.shape
    heads = lambda t: t.reshape(B, T, n_head, C // n_head).transpose(1, 2)
    y = attention(heads(q), heads(k), heads(v), causal=True, dropout_p=dropout_p,
                  training=training, impl=impl)               # (B, n_head, T, head_size)
    return y.transpose(1, 2).reshape(B, T, C)


class CausalSelfAttention(Module):
    """Multi-head causal self-attention: one Linear `c_attn` makes q, k and v, `c_proj`
    mixes the heads' outputs. `impl` picks the attention implementation (see attention())."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 impl: str = "auto"):
        if n_head <= 0 or n_embd <= 0 or n_embd % n_head:
            raise ValueError(f"CausalSelfAttention: n_embd ({n_embd}) must be a positive "
                             f"multiple of n_head ({n_head})")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"CausalSelfAttention: impl must be one of {ATTENTION_IMPLS}, "
                             f"got {impl!r}")
        self.n_embd, self.n_head, self.dropout, self.impl = n_embd, n_head, dropout, impl
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[2] != self.n_embd:
            raise ValueError(f"CausalSelfAttention: input must be (batch, time, "
                             f"{self.n_embd}), got {x.shape}")
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        y = _multi_head_attention(q, k, v, self.n_head, self.dropout, self.training, self.impl)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self):
        return f"n_embd={self.n_embd}, n_head={self.n_head}, impl={self.impl!r}"


class MLP(Module):
    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True):
        self.c_fc = Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.c_fc(x).gelu()))


class Block(Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 impl: str = "auto"):
        self.ln_1 = LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, impl)
        self.ln_2 = LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------- GPT --

class GPT(Module):
    """nanoGPT's model: token + position embeddings, `n_layer` pre-LN blocks (MLP 4x wide,
    GELU), a final LayerNorm and a language-model head.

    The head is tied to the token embedding, as in nanoGPT and GPT-2: `lm_head.weight`
    *is* `transformer.wte.weight` (one Tensor, listed once by `parameters()`, under both
    names in `state_dict()`). Initialisation as GPT-2: weights N(0, 0.02), biases zero,
    LayerNorms ones/zeros, and the residual projections (`*.c_proj.weight`) N(0,
    0.02/sqrt(2 * n_layer))."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int,
                 n_embd: int, dropout: float = 0.0, bias: bool = True, impl: str = "auto"):
        for name, value in (("vocab_size", vocab_size), ("block_size", block_size),
                            ("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPT: {name} must be a positive integer, got {value!r}")
        if n_embd % n_head:
            raise ValueError(f"GPT: n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        if not 0 <= dropout < 1:
            raise ValueError(f"GPT: dropout must be in [0, 1), got {dropout}")
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.transformer = ModuleDict(
            wte=Embedding(vocab_size, n_embd),
            wpe=Embedding(block_size, n_embd),
            drop=Dropout(dropout),
            h=[Block(n_embd, n_head, dropout, bias, impl) for _ in range(n_layer)],
            ln_f=LayerNorm(n_embd, bias=bias))
        self.lm_head = Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight        # weight tying
        self._init_weights()

    def _init_weights(self):
        normal = lambda p, std: p.assign(Tensor.randn(*p.shape, device=p.device) * std)
        with no_grad():
            for m in self.modules():
                if isinstance(m, (Linear, Embedding)):
                    normal(m.weight, 0.02)
                if isinstance(m, Linear) and m.bias is not None:
                    m.bias.assign(Tensor.zeros(*m.bias.shape, device=m.bias.device))
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):          # residual projections
                    normal(p, 0.02 / math.sqrt(2 * self.n_layer))
            realize(*self.parameters())

    def _hidden(self, idx: Tensor) -> Tensor:
        """The final LayerNorm's output, (B, T, n_embd)."""
        t = self.transformer
        x = t.drop(t.wte(idx) + t.wpe.weight[:idx.shape[1]])
        for block in t.h:
            x = block(x)
        return t.ln_f(x)

    def _as_idx(self, idx, name) -> Tensor:
        if not isinstance(idx, Tensor):
            idx = Tensor(np.asarray(idx), dtype=int64, device=self.lm_head.weight.device)
        if idx.dtype.is_float or idx.ndim != 2:
            raise ValueError(f"GPT.{name}: idx must be an integer tensor (batch, time), got "
                             f"shape {idx.shape} of dtype {idx.dtype.name}")
        if idx.shape[1] == 0:
            raise ValueError(f"GPT.{name}: idx has no tokens (shape {idx.shape})")
        return idx

    def forward(self, idx, targets=None):
        """idx (B, T) integer tokens, T <= block_size -> (logits (B, T, vocab), loss);
        loss is the mean cross-entropy against `targets` (B, T), or None without them."""
        idx = self._as_idx(idx, "forward")
        if idx.shape[1] > self.block_size:
            raise ValueError(f"GPT.forward: sequence length {idx.shape[1]} is longer than "
                             f"block_size {self.block_size}")
        logits = self.lm_head(self._hidden(idx))
        loss = None if targets is None else logits.cross_entropy(targets)
        return logits, loss

    @no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None):
        """Append `max_new_tokens` sampled tokens to idx (B, T) and return (B, T + new).

        Each step feeds the last block_size tokens, divides the last position's logits by
        `temperature` (0 means greedy: always the most likely token), keeps the `top_k`
        most likely tokens if given, and samples (Gumbel-max trick with `Tensor.rand`, so
        `mg.manual_seed` makes it reproducible). Runs without autograd; dropout follows
        the model's mode, so call `.eval()` first as in PyTorch."""
        idx = self._as_idx(idx, "generate")
        if temperature < 0:
            raise ValueError(f"GPT.generate: temperature must be >= 0, got {temperature}")
        if top_k is not None and (int(top_k) != top_k or top_k < 1):
            raise ValueError(f"GPT.generate: top_k must be a positive integer, got {top_k}")
        tokens, device = idx.numpy().astype(np.int64), idx.device
        for _ in range(max_new_tokens):
            x = self._hidden(Tensor(tokens[:, -self.block_size:], device=device))
            logits = self.lm_head(x[:, -1, :]).float().numpy().astype(np.float64)
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = np.partition(logits, -int(top_k), axis=-1)[:, -int(top_k)]
                    logits[logits < kth[:, None]] = -np.inf
                u = Tensor.rand(*logits.shape, device=device).numpy().astype(np.float64)
                with np.errstate(divide="ignore"):
                    gumbel = -np.log(-np.log(u))
                nxt = (logits + gumbel).argmax(-1)
            tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        return Tensor(tokens, dtype=idx.dtype, device=device)

    def quantize(self, bits: int = 8, group_size: int = 128) -> "GPT":
        """A quantized copy for inference (mg.nn.quantize): attention Q/K/V fused and
        quantized, every other Linear a QuantLinear (bits=8: W8A8; bits=4: W4A16 with
        `group_size`); embeddings, LayerNorms and the tied lm_head stay float32. This
        model is unchanged."""
        from .quant import quantize
        return quantize(self, bits, group_size)

    def extra_repr(self):
        return (f"vocab_size={self.vocab_size}, block_size={self.block_size}, "
                f"n_layer={self.n_layer}, n_head={self.n_head}, n_embd={self.n_embd}")
