"""minigrad.nn: Module discovery and state dicts, the layers against NumPy, modes,
GPT shapes and sampling, and gradchecks of small modules."""
import math

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor, nn


# -- helpers --------------------------------------------------------------------------

def _set_path(module, dotted, value):
    """Set the attribute at a dotted path ("h.0.attn.c_attn.weight")."""
    *path, last = dotted.split(".")
    obj = module
    for part in path:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    setattr(obj, last, value)


def module_gradcheck(module, inputs, call=None, **kw):
    """gradcheck a module's output with respect to its inputs and every parameter:
    the parameters are swapped for gradcheck's float64 copies while it runs (tied
    parameters under all of their names)."""
    params = module.parameters()
    names = {}
    for name, t in module._named_tensors():
        names.setdefault(id(t), []).append(name)
    call = call or (lambda m, *xs: m(*xs))

    def fn(*args):
        xs, ps = args[:len(inputs)], args[len(inputs):]
        for p, new in zip(params, ps):
            for name in names[id(p)]:
                _set_path(module, name, new)
        try:
            return call(module, *xs)
        finally:
            for p in params:
                for name in names[id(p)]:
                    _set_path(module, name, p)

    args = list(inputs) + [Tensor(p.numpy().astype(np.float64), requires_grad=True)
                           for p in params]
    return mg.gradcheck(fn, args, **kw)


class Net(nn.Module):
    def __init__(self):
        self.scale = Tensor.ones(3, requires_grad=True)
        self.body = nn.Linear(3, 3)
        self.layers = [nn.Linear(3, 2), nn.LayerNorm(2)]
        self.pair = (nn.Dropout(0.5), nn.Linear(2, 1, bias=False))
        self._cache = Tensor.zeros(5)       # private: not a parameter
        self.config = {"not": "discovered"}

    def forward(self, x):
        x = self.body(x * self.scale)
        for layer in self.layers:
            x = layer(x)
        return self.pair[1](self.pair[0](x))


# -- Module ---------------------------------------------------------------------------

def test_named_parameters_recursive_dotted_names():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale", "body.weight", "body.bias", "layers.0.weight", "layers.0.bias",
        "layers.1.weight", "layers.1.bias", "pair.1.weight"]
    assert all(p.requires_grad for p in net.parameters())
    assert net.num_parameters() == 3 + (9 + 3) + (6 + 2) + (2 + 2) + 2
    assert [n for n, _ in net.named_modules()] == ["", "body", "layers.0", "layers.1",
                                                   "pair.0", "pair.1"]


def test_call_runs_forward_and_shapes():
    assert Net()(Tensor.randn(4, 3)).shape == (4, 1)
    with pytest.raises(NotImplementedError):
        nn.Module()(1)


def test_state_dict_round_trip_through_a_file(tmp_path):
    mg.manual_seed(1)
    a = Net()
    mg.manual_seed(2)
    b = Net()
    x = Tensor.randn(4, 3)
    a.eval(), b.eval()
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    sd = a.state_dict()
    assert list(sd) == [n for n, _ in a.named_parameters()]
    assert all(isinstance(v, Tensor) and v.requires_grad is False for v in sd.values())
    mg.save(sd, tmp_path / "net.safetensors")
    params_before = b.parameters()
    result = b.load_state_dict(mg.load(tmp_path / "net.safetensors"))
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(p is q for p, q in zip(b.parameters(), params_before))   # same objects
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=n)
        assert q.requires_grad and q.lazydata.realized is not None


def test_state_dict_accepts_numpy_arrays():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict({k: v.numpy() for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())


def test_state_dict_is_a_snapshot():
    lin = nn.Linear(2, 2)
    sd = lin.state_dict()
    before = sd["weight"].numpy()
    lin.weight.assign(lin.weight * 2).realize()
    np.testing.assert_array_equal(sd["weight"].numpy(), before)


def test_load_state_dict_errors_name_every_problem():
    net = Net()
    good = net.state_dict()
    before = net.body.weight.numpy()

    missing = dict(good)
    del missing["body.bias"]
    with pytest.raises(RuntimeError, match=r"missing keys: body\.bias"):
        net.load_state_dict(missing)

    extra = dict(good, **{"body.gamma": Tensor.ones(3)})
    with pytest.raises(RuntimeError, match=r"unexpected keys: body\.gamma"):
        net.load_state_dict(extra)

    shape = dict(good, **{"body.weight": Tensor.zeros(2, 3)})
    with pytest.raises(RuntimeError, match=r"body\.weight: shape \(2, 3\) in the state dict, "
                                           r"\(3, 3\) in the model"):
        net.load_state_dict(shape)

    dtype = dict(good, **{"body.weight": Tensor.zeros(3, 3, dtype=mg.float16)})
    with pytest.raises(RuntimeError, match=r"body\.weight: dtype float16 in the state dict, "
                                           r"float32 in the model"):
        net.load_state_dict(dtype)

    # several problems at once: all reported, nothing loaded
    bad = dict(shape, **{"zzz": Tensor.ones(1)})
    bad["body.weight"] = Tensor.zeros(3, 3) + 7
    del bad["scale"]
    with pytest.raises(RuntimeError) as e:
        net.load_state_dict(bad | {"layers.0.bias": Tensor.zeros(5)})
    msg = str(e.value)
    assert "missing keys: scale" in msg and "unexpected keys: zzz" in msg
    assert "layers.0.bias: shape (5,)" in msg
    np.testing.assert_array_equal(net.body.weight.numpy(), before)

    with pytest.raises(RuntimeError, match="expected a Tensor or NumPy array"):
        net.load_state_dict(dict(good, **{"scale": [1.0, 2.0, 3.0]}))


def test_load_state_dict_non_strict():
    net = Net()
    sd = {"body.weight": Tensor.zeros(3, 3), "other": Tensor.ones(2)}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert unexpected == ["other"] and "body.bias" in missing and "body.weight" not in missing
    assert not net.body.weight.numpy().any()
    with pytest.raises(RuntimeError, match="shape"):     # shapes are checked anyway
        net.load_state_dict({"body.weight": Tensor.zeros(1, 3)}, strict=False)


def test_train_eval_recursive_and_dropout():
    net = Net()
    assert net.training and all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    x = Tensor.ones(1000)
    drop = nn.Dropout(0.5)
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), np.ones(1000))
    drop.train()
    y = drop(x).numpy()
    assert set(np.unique(y)) == {0.0, 2.0}
    assert 350 < (y == 0).sum() < 650
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(1.5)


def test_zero_grad_and_to():
    net = Net()
    net(Tensor.randn(2, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    params = net.parameters()
    assert net.to("cpu") is net and all(p is q for p, q in zip(params, net.parameters()))
    net.to(mg.float16)
    assert all(p.dtype == mg.float16 for p in net.parameters())
    assert all(p is q for p, q in zip(params, net.parameters()))
    with pytest.raises(ValueError, match="device"):
        net.to("tpu")


def test_module_to_keywords():
    """`module.to(device=...)`, `.to(dtype=...)` and both at once, as in PyTorch."""
    net = Net()
    params = net.parameters()
    assert net.to(device="cpu") is net and all(p.device == "cpu" for p in params)
    assert net.to(dtype=mg.float16) is net and all(p.dtype == mg.float16 for p in params)
    net.to(device="cpu", dtype=mg.float32)
    assert all(p.dtype == mg.float32 and p.device == "cpu" for p in params)
    assert all(p is q for p, q in zip(params, net.parameters()))
    with pytest.raises(TypeError, match="positionally and by keyword"):
        net.to(mg.float16, dtype=mg.float32)


# -- layers ---------------------------------------------------------------------------

def test_linear_matches_numpy_and_pytorch_layout():
    lin = nn.Linear(5, 3)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype(np.float32)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    np.testing.assert_allclose(lin(Tensor(x)).numpy(), x @ w.T + b, rtol=1e-5, atol=1e-6)
    nobias = nn.Linear(5, 3, bias=False)
    assert nobias.bias is None and len(nobias.parameters()) == 1
    np.testing.assert_allclose(nobias(Tensor(x)).numpy(), x @ nobias.weight.numpy().T,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="last dimension of 5"):
        lin(Tensor.ones(2, 4))


def test_bf16_linear_weight_gradient_is_not_rounded_to_bf16():
    # weight.cast(bf16).T feeds the tensor-core matmul, whose dB is f32: it reaches the
    # f32 weight unrounded (the cast's backward would only widen it again)
    import ml_dtypes
    rng = np.random.default_rng(0)
    lin = nn.Linear(24, 10, compute="bfloat16")
    x = Tensor(rng.standard_normal((5, 24)).astype(np.float32))
    lin(x).sum().backward()
    g = lin.weight.grad.numpy()
    assert lin.weight.grad.dtype == mg.float32
    xb = x.numpy().astype(ml_dtypes.bfloat16).astype(np.float32)
    ref = np.ones((10, 5), np.float32) @ xb            # dC = 1 is exact in bf16
    np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(g, g.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_linear_init_bounds_and_seed():
    mg.manual_seed(3)
    a = nn.Linear(100, 50)
    mg.manual_seed(3)
    b = nn.Linear(100, 50)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    w = a.weight.numpy()
    assert np.abs(w).max() <= 0.1 and np.abs(w).max() > 0.09        # U(-1/sqrt(100), ..)
    assert abs(w.mean()) < 0.01 and abs(w.std() - 0.1 / math.sqrt(3)) < 0.005
    assert np.abs(a.bias.numpy()).max() <= 0.1


def test_embedding_and_layernorm():
    emb = nn.Embedding(10, 4)
    idx = np.array([[1, 2], [9, 1]])
    np.testing.assert_array_equal(emb(Tensor(idx)).numpy(), emb.weight.numpy()[idx])
    assert abs(emb.weight.numpy().std() - 1) < 0.5
    ln = nn.LayerNorm(6, eps=1e-5)
    np.testing.assert_array_equal(ln.weight.numpy(), np.ones(6))
    np.testing.assert_array_equal(ln.bias.numpy(), np.zeros(6))
    ln.weight.assign(Tensor(np.arange(6, dtype=np.float32)))
    ln.bias.assign(Tensor(np.full(6, 0.5, dtype=np.float32)))
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln(Tensor(x)).numpy(), ref * np.arange(6) + 0.5, rtol=1e-5,
                               atol=1e-5)


def test_layernorm_takes_a_normalized_shape_like_pytorch():
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    ln1 = nn.LayerNorm((4,))                          # a 1-tuple: the last axis, as an int
    assert ln1.weight.shape == (4,)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln1(Tensor(x)).numpy(), ref, rtol=1e-5, atol=1e-5)
    ln2 = nn.LayerNorm([3, 4])                        # the last two axes together
    assert ln2.weight.shape == (3, 4) and ln2.bias.shape == (3, 4)
    m, v = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
    np.testing.assert_allclose(ln2(Tensor(x)).numpy(), (x - m) / np.sqrt(v + 1e-5),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"needs last dimensions \(3, 4\)"):
        ln2(Tensor(x[:, :2]))
    for bad in (0, (), (4, -1), 2.5):
        with pytest.raises(ValueError, match="LayerNorm: dim must be a positive int"):
            nn.LayerNorm(bad)


def test_integer_tensor_attributes_are_buffers_not_parameters():
    class WithTable(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(3, 2)
            self.pos = Tensor.arange(4)                # an index table: no gradient possible

        def forward(self, x):
            return self.proj(x)

    m = WithTable()
    assert [n for n, _ in m.named_parameters()] == ["proj.weight", "proj.bias"]
    assert [n for n, _ in m.named_buffers()] == ["pos"]
    assert set(m.state_dict()) == {"proj.weight", "proj.bias", "pos"}
    opt = mg.optim.AdamW(m.parameters(), lr=0.1)       # raised on the int tensor before
    m(Tensor(np.ones((1, 3), np.float32))).sum().backward()
    opt.step()
    m.to(mg.float16)                                   # buffers keep their dtype
    assert m.pos.dtype == mg.int64 and m.proj.weight.dtype == mg.float16


def test_module_to_an_integer_dtype_is_refused_and_zero_grad_set_to_none():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="Linear.to: only floating-point dtypes.*int32"):
        lin.to(mg.int32)
    assert lin.weight.dtype == mg.float32
    lin(Tensor(np.ones((1, 2), np.float32))).sum().backward()
    opt = mg.optim.SGD(lin.parameters(), lr=0.1)
    opt.zero_grad(set_to_none=False)                   # zeros, as PyTorch's option
    assert lin.weight.grad is not None and not lin.weight.grad.numpy().any()
    lin.zero_grad()
    assert lin.weight.grad is None


def test_module_shorthands_and_requires_grad_():
    lin = nn.Linear(3, 2)
    assert lin.half() is lin and lin.weight.dtype == mg.float16
    assert lin.bfloat16().weight.dtype == mg.bfloat16 and lin.float().weight.dtype == mg.float32
    assert lin.cpu().weight.device == "cpu"
    assert lin.requires_grad_(False) is lin and not any(p.requires_grad for p in lin.parameters())
    out = lin(Tensor(np.ones((1, 3), np.float32)))
    assert not out.requires_grad                       # frozen: no graph for backward
    lin.requires_grad_()
    assert all(p.requires_grad for p in lin.parameters())


def test_gradcheck_linear():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3)), dtype=mg.float64, requires_grad=True)
    assert module_gradcheck(nn.Linear(3, 4), [x])


def test_gradcheck_layernorm():
    rng = np.random.default_rng(1)
    ln = nn.LayerNorm(5)
    ln.weight.assign(Tensor(rng.standard_normal(5).astype(np.float32)))
    ln.bias.assign(Tensor(rng.standard_normal(5).astype(np.float32)))
    x = Tensor(rng.standard_normal((2, 5)), dtype=mg.float64, requires_grad=True)
    assert module_gradcheck(ln, [x])


def test_gradcheck_causal_self_attention():
    mg.manual_seed(0)
    attn = nn.CausalSelfAttention(n_embd=4, n_head=2)
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 4)), dtype=mg.float64,
               requires_grad=True)
    assert module_gradcheck(attn, [x])


def test_attention_matches_numpy_and_is_causal():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for _ in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / 2.0
    s = np.where(np.triu(np.ones((5, 5), bool), 1), -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ v
    out = nn.attention(Tensor(q), Tensor(k), Tensor(v), causal=True)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    # the first position sees only itself
    np.testing.assert_allclose(out.numpy()[..., 0, :], v[..., 0, :], rtol=1e-6)
    with pytest.raises(ValueError, match="impl"):
        nn.attention(Tensor(q), Tensor(k), Tensor(v), impl="bogus")


def test_causal_self_attention_future_does_not_leak():
    mg.manual_seed(0)
    attn = nn.CausalSelfAttention(8, 2)
    x = np.random.default_rng(4).standard_normal((1, 6, 8)).astype(np.float32)
    y = x.copy()
    y[:, 4:] += 10.0                                  # change only the future
    a, b = attn(Tensor(x)).numpy(), attn(Tensor(y)).numpy()
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[:, 4:], b[:, 4:])
    with pytest.raises(ValueError, match="multiple of n_head"):
        nn.CausalSelfAttention(10, 3)
    with pytest.raises(ValueError, match="impl"):
        nn.CausalSelfAttention(8, 2, impl="fast")


# -- GPT ------------------------------------------------------------------------------

def small_gpt(**kw):
    mg.manual_seed(0)
    args = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    args.update(kw)
    return nn.GPT(**args)


def test_gpt_parameters_tying_and_init():
    V, B, L, C = 11, 8, 2, 16
    gpt = small_gpt()
    per_block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + \
        (4 * C * C + C)
    assert gpt.num_parameters() == V * C + B * C + L * per_block + 2 * C
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    names = [n for n, _ in gpt.named_parameters()]
    assert "lm_head.weight" not in names and names[0] == "transformer.wte.weight"
    assert "transformer.h.1.attn.c_attn.weight" in names
    sd = gpt.state_dict()
    assert "lm_head.weight" in sd and len(sd) == len(names) + 1
    big = nn.GPT(vocab_size=50, block_size=16, n_layer=4, n_head=2, n_embd=64)
    w = big.transformer.h[0].mlp.c_fc.weight.numpy()
    assert abs(w.std() - 0.02) < 0.002
    proj = big.transformer.h[0].mlp.c_proj.weight.numpy()
    assert abs(proj.std() - 0.02 / math.sqrt(8)) < 0.001
    assert not big.transformer.h[0].attn.c_attn.bias.numpy().any()


def test_gpt_forward_shapes_and_loss():
    gpt = small_gpt()
    idx = np.random.default_rng(0).integers(0, 11, (3, 8))
    logits, loss = gpt(Tensor(idx))
    assert logits.shape == (3, 8, 11) and loss is None
    logits, loss = gpt(Tensor(idx[:, :5]), Tensor(idx[:, 1:6]))
    assert logits.shape == (3, 5, 11) and loss.shape == ()
    assert abs(loss.item() - math.log(11)) < 0.2             # small init: near uniform
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in gpt.parameters())


def test_gpt_argument_errors():
    with pytest.raises(ValueError, match="multiple of n_head"):
        nn.GPT(10, 8, 1, 3, 16)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        nn.GPT(10, 0, 1, 2, 16)
    with pytest.raises(ValueError, match="dropout"):
        nn.GPT(10, 8, 1, 2, 16, dropout=1.0)
    gpt = small_gpt()
    with pytest.raises(ValueError, match="longer than block_size 8"):
        gpt(Tensor(np.zeros((1, 9), dtype=np.int64)))
    with pytest.raises(ValueError, match="integer tensor"):
        gpt(Tensor(np.zeros((1, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="integer tensor"):
        gpt(Tensor(np.zeros(4, dtype=np.int64)))


def test_gpt_eval_is_deterministic_and_dropout_trains():
    gpt = small_gpt(dropout=0.5)
    idx = Tensor(np.random.default_rng(0).integers(0, 11, (2, 8)))
    gpt.eval()
    np.testing.assert_array_equal(gpt(idx)[0].numpy(), gpt(idx)[0].numpy())
    gpt.train()
    assert not np.allclose(gpt(idx)[0].numpy(), gpt(idx)[0].numpy())


def test_generate_length_seed_and_top_k():
    gpt = small_gpt().eval()
    start = Tensor(np.array([[1, 2, 3], [4, 5, 6]]))
    out = gpt.generate(start, 12)                  # longer than block_size: crops
    assert out.shape == (2, 15) and out.dtype == start.dtype
    arr = out.numpy()
    np.testing.assert_array_equal(arr[:, :3], start.numpy())
    assert arr.min() >= 0 and arr.max() < 11
    mg.manual_seed(5)
    a = gpt.generate(start, 6).numpy()
    mg.manual_seed(5)
    b = gpt.generate(start, 6).numpy()
    np.testing.assert_array_equal(a, b)
    greedy = gpt.generate(start, 6, temperature=0).numpy()
    np.testing.assert_array_equal(gpt.generate(start, 6, top_k=1).numpy(), greedy)
    # greedy picks the argmax of the logits at the last position
    logits, _ = gpt(start)
    np.testing.assert_array_equal(greedy[:, 3], logits.numpy()[:, -1].argmax(-1))
    # with top_k=3 every sampled token is among the 3 most likely
    mg.manual_seed(0)
    for _ in range(5):
        nxt = gpt.generate(start, 1, temperature=2.0, top_k=3).numpy()[:, -1]
        top3 = np.argsort(logits.numpy()[:, -1], -1)[:, -3:]
        assert all(t in row for t, row in zip(nxt, top3))
    assert out._ctx is None and not out.requires_grad
    with pytest.raises(ValueError, match="top_k"):
        gpt.generate(start, 1, top_k=0)


def test_gpt_state_dict_round_trip(tmp_path):
    a = small_gpt()
    b = small_gpt(vocab_size=11)
    mg.manual_seed(9)
    b._init_weights()
    idx = Tensor(np.random.default_rng(0).integers(0, 11, (2, 8)))
    assert not np.allclose(a(idx)[0].numpy(), b(idx)[0].numpy())
    mg.save(a.state_dict(), tmp_path / "gpt.safetensors")
    b.load_state_dict(mg.load(tmp_path / "gpt.safetensors"))
    assert b.lm_head.weight is b.transformer.wte.weight       # still tied
    np.testing.assert_array_equal(a(idx)[0].numpy(), b(idx)[0].numpy())


def test_gradcheck_gpt_loss():
    mg.manual_seed(0)
    gpt = nn.GPT(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4)
    # larger weights than the 0.02 init, so every path carries a visible gradient
    for p in gpt.parameters():
        p.assign(Tensor.randn(*p.shape) * 0.5)
    rng = np.random.default_rng(0)
    idx, tgt = Tensor(rng.integers(0, 5, (2, 3))), Tensor(rng.integers(0, 5, (2, 3)))
    assert module_gradcheck(gpt, [], call=lambda m: m(idx, tgt)[1])


@pytest.mark.parametrize("impl,tol", [("flash", 1e-5), ("tc", 2e-3)])
def test_attention_kernel_impls_match_naive(impl, tol):
    pytest.importorskip("minigrad.ops")
    mg.manual_seed(0)
    naive = nn.CausalSelfAttention(16, 2)
    fused = nn.CausalSelfAttention(16, 2, impl=impl)
    fused.load_state_dict(naive.state_dict())
    x = np.random.default_rng(5).standard_normal((2, 7, 16)).astype(np.float32)
    outs, grads = [], []
    for m in (naive, fused):
        xt = Tensor(x, requires_grad=True)
        y = m(xt)
        (y * y).sum().backward()
        outs.append(y.numpy())
        grads.append([xt.grad.numpy()] + [p.grad.numpy() for p in m.parameters()])
    np.testing.assert_allclose(outs[1], outs[0], rtol=tol, atol=tol)
    for a, b in zip(grads[0], grads[1]):
        np.testing.assert_allclose(b, a, rtol=10 * tol, atol=10 * tol)
    if impl == "tc":                    # flash has attention dropout (tests/test_attention.py)
        with pytest.raises(ValueError, match="no attention dropout"):
            nn.CausalSelfAttention(16, 2, dropout=0.1, impl=impl)(Tensor(x))


@pytest.mark.parametrize("impl", ["naive", "flash", "tc"])
def test_attention_keeps_the_input_dtype(impl):
    # the kernel impls compute in f32 (flash) or f16 (tc) and cast back
    rng = np.random.default_rng(3)
    q, k, v = (Tensor(rng.standard_normal((1, 2, 5, 8)).astype(np.float32)).cast(mg.bfloat16)
               for _ in range(3))
    out = nn.transformer.attention(q, k, v, causal=True, impl=impl)
    assert out.dtype is mg.bfloat16 and out.shape == (1, 2, 5, 8)
    ref = nn.transformer.attention(*(t.float() for t in (q, k, v)), causal=True, impl="naive")
    np.testing.assert_allclose(out.float().numpy(), ref.numpy(), rtol=3e-2, atol=3e-2)
