"""The attention family: flash forward, its log-sum-exp statistics and its backward
against float64 references; attention_tc (f16, P rounded to f16) and its backward;
multi-head leading dims in one launch; CausalSelfAttention's kernel paths; bad input;
flash attention dropout (mask: reference.dropout_keep, the kernels' Philox-4x32-7).
On CUDA every new buffer is poisoned before a kernel writes it."""
import math

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor
from minigrad.backend import reference
from cuda_stand_ins import run_stubbed     # tests/cuda_stand_ins.py


def ref_attention64(q, k, v, causal):
    """float64 softmax attention and its logsumexp, [..., S, D]."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], bool), 1), -np.inf, s)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    lse = (m + np.log(e.sum(-1, keepdims=True)))[..., 0]
    p = e / e.sum(-1, keepdims=True)
    return p @ v, lse, p


def ref_grads64(q, k, v, do, causal):
    """Analytic float64 gradients of sum(out * do)."""
    out, _, p = ref_attention64(q, k, v, causal)
    q, k, v, do = (x.astype(np.float64) for x in (q, k, v, do))
    scale = 1 / math.sqrt(q.shape[-1])
    dv = np.swapaxes(p, -1, -2) @ do
    dp = do @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, dv


def close(got, ref, rel=1e-4, abs_=1e-5):
    assert not np.isnan(got).any(), "NaN in output (an element was not written?)"
    err = np.abs(got - ref)
    assert (err <= abs_ + rel * np.abs(ref)).mean() > 0.999 and \
        np.linalg.norm(got - ref) <= rel * max(np.linalg.norm(ref), 1e-12) + abs_ * math.sqrt(ref.size), \
        f"max abs err {err.max():.3g}"


FLASH_CASES = [(s, d) for s in (1, 2, 17, 64, 255) for d in (16, 32, 64, 100, 128, 256)] + \
    [(1024, 64), (1024, 100), (1024, 256), (4097, 64), (4097, 128)]


def _lead(s):
    return (2, 3) if s <= 255 else (1,)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("s,d", FLASH_CASES, ids=lambda v: str(v))
def test_flash_forward_stats_and_backward(s, d, causal, poisoned_device, rng):
    if poisoned_device == "cpu" and s > 1024:
        pytest.skip("a float64 reference of S=4097 on the CPU path is the same NumPy code")
    shape = _lead(s) + (s, d)
    q, k, v, do = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    ref_out, ref_lse, _ = ref_attention64(q, k, v, causal)
    qt, kt, vt = (Tensor(x, device=poisoned_device, requires_grad=True) for x in (q, k, v))
    op = mg.ops.attention_flash_causal if causal else mg.ops.attention_flash
    out = op(qt, kt, vt)
    out_s, lse = mg.ops.attention_flash_with_stats(qt.detach(), kt.detach(), vt.detach(),
                                                   causal)
    close(out.numpy(), ref_out)
    assert np.array_equal(out.numpy(), out_s.numpy()), "stats forward must give the same out"
    assert np.abs(lse.numpy() - ref_lse).max() < 1e-5
    # P rebuilt from L sums to 1 in every row
    sc = q.astype(np.float64) @ np.swapaxes(k, -1, -2).astype(np.float64) / math.sqrt(d)
    if causal:
        sc = np.where(np.triu(np.ones((s, s), bool), 1), -np.inf, sc)
    assert np.abs(np.exp(sc - lse.numpy()[..., None].astype(np.float64)).sum(-1) - 1).max() < 1e-4
    (out * Tensor(do, device=poisoned_device)).sum().backward()
    for got, ref in zip((qt.grad, kt.grad, vt.grad), ref_grads64(q, k, v, do, causal)):
        close(got.numpy(), ref, rel=1e-3, abs_=1e-4)


@pytest.mark.parametrize("d", [32, 64, 128, 200])
def test_flash_causal_many_slices(d, poisoned_device, rng):
    """15 slices of 8 or more query/key tiles each: the causal kernels issue their blocks
    heaviest first across groups of 8 slices (a full group and a short one here), and
    every slice must still get its own tiles, forward, stats and backward (3xTF32 kernels
    for d <= 128, FFMA for d = 200)."""
    if poisoned_device == "cpu":
        pytest.skip("the block order is the CUDA kernels' (the CPU path is the reference)")
    shape = (3, 5, 1000 if d <= 128 else 600, d)
    q, k, v, do = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    ref_out, ref_lse, _ = ref_attention64(q, k, v, True)
    qt, kt, vt = (Tensor(x, device=poisoned_device, requires_grad=True) for x in (q, k, v))
    out = mg.ops.attention_flash_causal(qt, kt, vt)
    _, lse = mg.ops.attention_flash_with_stats(qt.detach(), kt.detach(), vt.detach(), True)
    close(out.numpy(), ref_out)
    assert np.abs(lse.numpy() - ref_lse).max() < 1e-5
    (out * Tensor(do, device=poisoned_device)).sum().backward()
    for got, ref in zip((qt.grad, kt.grad, vt.grad), ref_grads64(q, k, v, do, True)):
        close(got.numpy(), ref, rel=1e-3, abs_=1e-4)


TF32_BLOCK_CASES = [(17, 16, 0.0), (255, 64, 0.0), (300, 32, 0.2), (130, 64, 0.5), (1024, 64, 0.2),
                    (129, 100, 0.0), (200, 128, 0.3)]


@pytest.mark.cuda
@pytest.mark.parametrize("nw", [4, 8])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("s,d,p", TF32_BLOCK_CASES, ids=lambda v: str(v))
def test_flash_tf32_block_sizes(nw, s, d, p, causal, rng, monkeypatch):
    """Both block sizes of the 3xTF32 kernels (flash_attention_tf32.cu: 4 or 8 warps; the host
    picks 8 only for grids of at least two waves, which the shapes above never reach, and always
    for D > 64), forward, stats and backward, with and without dropout, poisoned outputs."""
    from minigrad.backend.cuda import backend as bm
    from minigrad.backend.cuda import ops_attention
    monkeypatch.setattr(ops_attention, "FORCE_NW", nw)
    monkeypatch.setattr(bm, "POISON", True)
    shape = (2, s, d)
    q, k, v, do = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    seed = 4242 + s
    if p:
        keep = reference.dropout_keep(seed, shape[:-2], s, p)
        ref_out, ref_lse, *ref_grads = ref_dropout64(q, k, v, do, causal, keep, p)
    else:
        ref_out, ref_lse, _ = ref_attention64(q, k, v, causal)
        ref_grads = ref_grads64(q, k, v, do, causal)
    qt, kt, vt = (Tensor(x, device="cuda", requires_grad=True) for x in (q, k, v))
    op = mg.ops.attention_flash_causal if causal else mg.ops.attention_flash
    out = op(qt, kt, vt, dropout_p=p, seed=seed)
    out_s, lse = mg.ops.attention_flash_with_stats(qt.detach(), kt.detach(), vt.detach(), causal,
                                                   dropout_p=p, seed=seed)
    close(out.numpy(), ref_out)
    assert np.array_equal(out.numpy(), out_s.numpy())
    assert np.abs(lse.numpy() - ref_lse).max() < 1e-5
    (out * Tensor(do, device="cuda")).sum().backward()
    for got, ref in zip((qt.grad, kt.grad, vt.grad), ref_grads):
        close(got.numpy(), ref, rel=1e-3, abs_=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("s,d,p,causal", [(1000, 128, 0.0, False), (700, 64, 0.3, True),
                                          (300, 200, 0.0, True), (1, 32, 0.0, False)],
                         ids=lambda v: str(v))
def test_flash_backward_dq_beside_dkdv(s, d, p, causal, rng, monkeypatch):
    """The backward runs its dQ pass on the runtime's side stream, beside the dK/dV pass: the
    gradients are bit-identical to those of the passes run one after the other (the kernels
    are deterministic and share no output), with poisoned outputs, at the 3xTF32 (d <= 128),
    FFMA (d = 200) and dropout kernels."""
    from minigrad.backend.cuda import backend as bm
    from minigrad.backend.cuda import ops_attention
    monkeypatch.setattr(bm, "POISON", True)
    q, k, v, do = (rng.standard_normal((3, s, d)).astype(np.float32) for _ in range(4))
    op = mg.ops.attention_flash_causal if causal else mg.ops.attention_flash
    grads = {}
    for concurrent in (True, False, True):
        monkeypatch.setattr(ops_attention, "CONCURRENT_DQ", concurrent)
        qt, kt, vt = (Tensor(x, device="cuda", requires_grad=True) for x in (q, k, v))
        op(qt, kt, vt, dropout_p=p, seed=99).backward(Tensor(do, device="cuda"))
        got = [g.numpy() for g in (qt.grad, kt.grad, vt.grad)]
        if concurrent in grads:
            for a, b in zip(grads[concurrent], got):
                assert np.array_equal(a, b)
        grads[concurrent] = got
    for a, b in zip(grads[True], grads[False]):
        assert np.array_equal(a, b)
    assert not any(np.isnan(g).any() for g in grads[True])


# (lead, S, D, dropout p, first split tile, parts): the split forced, as the host's rule would
# pick it on a large grid; uneven key ranges, a last key tile part-masked, every tile split
TAIL_SPLITS = [((3,), 1000, 128, 0.0, 19, 3), ((2, 3), 255, 64, 0.0, 0, 4),
               ((1,), 4097, 100, 0.0, 25, 8), ((2,), 700, 32, 0.0, 21, 2),
               ((2, 2), 300, 64, 0.3, 9, 2), ((3,), 200, 128, 0.1, 3, 3)]


@pytest.mark.cuda
@pytest.mark.parametrize("lead,s,d,p,first,parts", TAIL_SPLITS, ids=lambda v: str(v))
def test_flash_forward_tail_split(lead, s, d, p, first, parts, rng, monkeypatch):
    """The non-causal 3xTF32 forward and dQ pass with their tiles from `first` on run as key
    ranges and merged (flash_tf32_merge) give the float64 reference and, within f32 rounding,
    the unsplit kernels' output, L and gradients; every buffer (the parts' too) poisoned."""
    from minigrad.backend.cuda import backend as bm
    from minigrad.backend.cuda import ops_attention
    monkeypatch.setattr(bm, "POISON", True)
    launched = []
    launch = ops_attention.runtime.launch
    monkeypatch.setattr(ops_attention.runtime, "launch", lambda fn, *a, **k: (
        launched.append(fn.mg_name), launch(fn, *a, **k))[1])
    q, k, v, do = (rng.standard_normal(lead + (s, d)).astype(np.float32) for _ in range(4))
    runs = {}
    for split in (True, False):
        monkeypatch.setattr(ops_attention, "_tail_split", lambda tiles, slots, key_tiles: (
            (first, parts) if split else (tiles, 1)))
        del launched[:]
        qt, kt, vt = (Tensor(x, device="cuda", requires_grad=True) for x in (q, k, v))
        out, lse = mg.ops.attention_flash_with_stats(qt, kt, vt, dropout_p=p, seed=7)
        out2 = mg.ops.attention_flash(qt, kt, vt, dropout_p=p, seed=7)
        (out2 * Tensor(do, device="cuda")).sum().backward()
        runs[split] = [out.numpy(), lse.numpy(), out2.numpy()] + \
            [g.numpy() for g in (qt.grad, kt.grad, vt.grad)]
        # merges: the two forwards, the backward's stats forward and the dQ pass
        assert launched.count("flash_tf32_merge") == 4 * split, launched
    got, plain = runs[True], runs[False]
    assert np.array_equal(got[0], got[2])           # _with_stats' out is the plain forward's
    for a, b in zip(got, plain):
        assert not np.isnan(a).any()
        assert np.abs(a - b).max() <= 2e-6 * max(1.0, np.abs(b).max()), np.abs(a - b).max()
    ref_out, ref_lse, _ = ref_attention64(q, k, v, False)
    assert np.abs(got[1] - ref_lse).max() < 1e-5
    if not p:
        close(got[0], ref_out)
        for g, r in zip(got[3:], ref_grads64(q, k, v, do, False)):
            assert np.linalg.norm(g - r) <= 1e-5 * np.linalg.norm(r)


def test_flash_tail_split_rule_and_launches():
    """(CPU, PyCUDA stubbed in a subprocess) The host's rule: 64 x 4096 x 128 on 132 SMs
    (2048 tiles, one block per SM) runs 1980 whole tiles and the last 68 in 5 key ranges,
    then one merge (forward; the dQ pass likewise, on the side stream); no split when the
    tiles fill whole waves, fit one wave, leave a wide last wave or have few key tiles, nor
    for causal or D > 128."""
    out = run_stubbed("""
        from minigrad.backend.cuda import ops_attention as oa
        assert oa._tail_split(2048, 132, 64) == (1980, 5)
        assert oa._tail_split(4096, 264, 32) == (3960, 5)
        for tiles, slots, key_tiles in ((264, 132, 64), (100, 132, 64), (256, 132, 64),
                                        (1536, 264, 4)):
            assert oa._tail_split(tiles, slots, key_tiles) == (tiles, 1)
        runtime.multiprocessors = 10     # [3, 1000, 128]: 24 tiles of 128 rows, 10 slots
        x = mg.Tensor(np.zeros((3, 1000, 128), np.float32), device="cuda")
        for op in (mg.ops.attention_flash, mg.ops.attention_flash_causal):
            del log[:]
            mg.realize(op(x, x, x))
            print(op.__name__, [(k[0], k[1][0], k[3]) for k in log])
        xg = mg.Tensor(np.zeros((3, 1000, 128), np.float32), device="cuda", requires_grad=True)
        out = mg.ops.attention_flash(xg, xg, xg).realize()
        del log[:]
        out.backward(x)
        mg.realize(xg.grad)
        print("dq", [(k[0], k[1][0], k[3], k[4]) for k in log
                     if k[0] != "wait" and k[-1] == "side"])
        x = mg.Tensor(np.zeros((3, 1000, 200), np.float32), device="cuda")
        del log[:]
        mg.realize(mg.ops.attention_flash(x, x, x))
        print("d200", [k[0] for k in log])
    """)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    # 20 whole tiles, the last 4 in 2 key ranges (ceil(8/10) rounds of 1/2 + 2/16 < 0.85)
    assert eval(lines["attention_flash"]) == [
        ("flash_tf32_fwd_d128_w8", 28, (3, 1000, 128, float(np.float32(128 ** -0.5)), 20, 2)),
        ("flash_tf32_merge", 64, (1000, 128, 128, 20, 4, 2))]
    # the dQ pass on the side stream (32 key tiles of 32: 5 ranges, 2 rounds of 1/5 + 2/32)
    assert eval(lines["dq"]) == [
        ("flash_tf32_bwd_dq_d128_w8", 40, (3, 1000, 128, float(np.float32(128 ** -0.5)), 20, 5),
         "side"),
        ("flash_tf32_merge", 64, (1000, 128, 128, 20, 4, 5), "side")]
    (name, grid, _), = eval(lines["attention_flash_causal"])
    assert name == "flash_tf32_fwd_causal_d128_w8" and grid == 24
    assert eval(lines["d200"]) == ["flash_attention_fwd_d256"]


A100_SMEM, SM89_SMEM = 166912, 101376     # bytes of shared memory one block may ask for


def test_flash_kernels_fit_the_cards_shared_memory():
    """(CPU, PyCUDA stubbed) The flash ops take kernels that fit the card's shared memory per
    block: on an H100/H200 the 3xTF32 ones; on an A100 (163 KB) the FFMA ones at d = 128 (the
    3xTF32 ones need 198 KB), and D = 200's backward (its dQ pass needs 168 KB) is refused with
    an error naming the op, the need and the card's limit; on an sm_89 card (99 KB) d = 32
    runs on 3xTF32 and d = 64's backward (103 KB either way) is refused; where 8 warps do
    not fit and 4 do, the backward takes 4."""
    out = run_stubbed("""
        def kernels(limit, d, causal=False):
            runtime.max_shared_per_block = limit
            x = mg.Tensor(np.zeros((2, 300, d), np.float32), device="cuda",
                          requires_grad=True)
            op = mg.ops.attention_flash_causal if causal else mg.ops.attention_flash
            del log[:]
            try:
                out = op(x, x, x)
                out.backward(mg.Tensor(np.zeros((2, 300, d), np.float32), device="cuda"))
                mg.realize(x.grad)
            except RuntimeError as e:
                return str(e)
            return sorted({k[0] for k in log if k[0].startswith("flash")})
        for case in ((232448, 128), (166912, 128), (166912, 64, True), (166912, 200),
                     (101376, 32), (101376, 64), (101376, 128)):
            print(repr(case), "=", repr(kernels(*case)))
        from minigrad.backend.cuda import ops_attention
        ops_attention.FORCE_NW = 8       # 8 warps asked for: 136 KB backward, 4 warps fit
        print(repr((120000, 64, True)), "=", repr(kernels(120000, 64, True)))
    """)
    got = {eval(a): eval(b) for a, b in (line.split(" = ") for line in out.splitlines())}
    tf32, ffma = "flash_tf32", "flash_attention"
    assert got[232448, 128] == [f"{tf32}_bwd_dkdv_d128_w8", f"{tf32}_bwd_dq_d128_w8",
                                f"{tf32}_bwd_preprocess", f"{tf32}_fwd_d128_w8"]
    assert got[A100_SMEM, 128] == [f"{ffma}_bwd_dkdv_d128", f"{ffma}_bwd_dq_d128",
                                   f"{ffma}_bwd_preprocess", f"{ffma}_fwd_d128"]
    assert all(k.startswith(tf32) for k in got[A100_SMEM, 64, True]), got[A100_SMEM, 64, True]
    for case, what, need in (((A100_SMEM, 200), "dK/dV or dQ pass", 171520),
                             ((SM89_SMEM, 64), "dK/dV or dQ pass", 104448),
                             ((SM89_SMEM, 128), "dK/dV or dQ pass", 110592)):
        msg = got[case]
        assert isinstance(msg, str) and msg.startswith("attention_flash backward: ") and \
            f"D={case[1]}" in msg and what in msg and f"needs {need} bytes" in msg and \
            f"allows {case[0]}" in msg, msg
    assert all(k.startswith(tf32) for k in got[SM89_SMEM, 32]), got[SM89_SMEM, 32]
    assert got[120000, 64, True] == [
        f"{tf32}_bwd_dkdv_causal_d64_w4", f"{tf32}_bwd_dq_causal_d64_w4",
        f"{tf32}_bwd_preprocess", f"{tf32}_fwd_causal_d64_w8"]


def test_self_attention_auto_avoids_flash_where_it_does_not_fit():
    """(CPU, PyCUDA stubbed) CausalSelfAttention's impl="auto" takes the flash kernels on the
    GPU where they fit the card (H200: head size 64; sm_89: 32) and composes ops where the
    flash backward would be refused (sm_89: head size 64), so training still runs."""
    out = run_stubbed("""
        x = mg.Tensor(np.zeros((2, 16, 64), np.float32), device="cuda", requires_grad=True)
        for limit, n_head in ((232448, 1), (101376, 1), (101376, 2)):
            runtime.max_shared_per_block = limit
            attn = mg.nn.CausalSelfAttention(64, n_head).to("cuda")
            del log[:]
            attn(x).sum().backward()
            mg.realize(x.grad)
            print(limit, 64 // n_head, any(k[0].startswith("flash") for k in log))
    """)
    assert out.split() == ["232448", "64", "True", "101376", "64", "False",
                           "101376", "32", "True"]


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_on_a_card_with_less_shared_memory(causal, rng, monkeypatch):
    """With the card's limit set to an A100's, d = 128 runs forward and backward on the FFMA
    kernels and still matches float64 (poisoned outputs)."""
    from minigrad.backend.cuda import backend as bm
    from minigrad.backend.cuda import ops_attention
    monkeypatch.setattr(bm, "POISON", True)
    monkeypatch.setattr(ops_attention.runtime, "max_shared_per_block", A100_SMEM)
    launched = []
    launch = ops_attention.runtime.launch
    monkeypatch.setattr(ops_attention.runtime, "launch", lambda fn, *a, **k: (
        launched.append(fn.mg_name), launch(fn, *a, **k))[1])
    q, k, v, do = (rng.standard_normal((3, 300, 128)).astype(np.float32) for _ in range(4))
    qt, kt, vt = (Tensor(x, device="cuda", requires_grad=True) for x in (q, k, v))
    out = (mg.ops.attention_flash_causal if causal else mg.ops.attention_flash)(qt, kt, vt)
    (out * Tensor(do, device="cuda")).sum().backward()
    mg.realize(out, qt.grad, kt.grad, vt.grad)
    flash = [n for n in launched if n.startswith("flash")]
    assert len(flash) >= 5 and all(n.startswith("flash_attention_") for n in flash), launched
    ref_out, _, _ = ref_attention64(q, k, v, causal)
    close(out.numpy(), ref_out)
    for g, r in zip((qt.grad, kt.grad, vt.grad), ref_grads64(q, k, v, do, causal)):
        assert np.linalg.norm(g.numpy() - r) <= 1e-5 * np.linalg.norm(r)


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_tf32_accuracy_long_rows(causal, rng):
    """3xTF32 keeps f32-level accuracy at long rows: the tensor core's own f32 accumulation
    truncates, so its chains are kept short and the sums over key / query tiles are f32 adds
    (without that, the error grew with S: ~3e-5 relative at S = 4097)."""
    shape = (2, 2048, 64)
    q, k, v, do = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    ref_out, ref_lse, _ = ref_attention64(q, k, v, causal)
    qt, kt, vt = (Tensor(x, device="cuda", requires_grad=True) for x in (q, k, v))
    out = (mg.ops.attention_flash_causal if causal else mg.ops.attention_flash)(qt, kt, vt)
    (out * Tensor(do, device="cuda")).sum().backward()
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)            # noqa: E731
    errs = [rel(out.numpy(), ref_out)] + [rel(g.numpy(), r) for g, r in zip(
        (qt.grad, kt.grad, vt.grad), ref_grads64(q, k, v, do, causal))]
    assert max(errs) < 5e-6, errs


def test_flash_s1_closed_form(device, rng):
    q, k, v, do = (rng.standard_normal((2, 3, 1, 40)).astype(np.float32) for _ in range(4))
    qt, kt, vt = (Tensor(x, device=device, requires_grad=True) for x in (q, k, v))
    out = mg.ops.attention_flash_causal(qt, kt, vt)
    np.testing.assert_allclose(out.numpy(), v, rtol=1e-6)
    (out * Tensor(do, device=device)).sum().backward()
    np.testing.assert_allclose(vt.grad.numpy(), do, rtol=1e-5)
    assert np.abs(qt.grad.numpy()).max() < 1e-5 and np.abs(kt.grad.numpy()).max() < 1e-5


TC_CASES = [(1, 1, 16, 16), (17, 17, 64, 64), (64, 200, 32, 48), (130, 77, 100, 72),
            (255, 255, 128, 128), (33, 4100, 64, 64), (1000, 1000, 256, 256)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sq,sk,dk,dv", TC_CASES, ids=lambda v: str(v))
def test_attention_tc(sq, sk, dk, dv, causal, poisoned_device, rng):
    lead = (2, 3) if sq * sk <= 70000 else (1,)
    q = rng.standard_normal(lead + (sq, dk)).astype(np.float16)
    k = rng.standard_normal(lead + (sk, dk)).astype(np.float16)
    v = rng.standard_normal(lead + (sk, dv)).astype(np.float16)
    qt, kt, vt = (Tensor(x, device=poisoned_device, requires_grad=True) for x in (q, k, v))
    op = mg.ops.attention_tc_causal if causal else mg.ops.attention_tc
    out = op(qt, kt, vt)
    assert out.dtype == mg.float32 and out.shape == lead + (sq, dv)
    got = out.numpy()
    ref_cast = reference.attention_tc(q, k, v, causal)       # P rounded to f16
    assert not np.isnan(got).any()
    assert np.abs(got - ref_cast).max() <= 2e-3 * max(1.0, np.abs(ref_cast).max())
    ref64 = ref_attention64(q, k, v, causal)[0]                          # KAIO's rule
    err = np.abs(got - ref64)
    assert ((err < 5e-3) | (err < 2e-2 * np.abs(ref64))).all()
    if sq * sk <= 70000:
        do = rng.standard_normal(out.shape).astype(np.float32)
        (out * Tensor(do, device=poisoned_device)).sum().backward()
        for got_g, ref_g in zip((qt.grad, kt.grad, vt.grad), ref_grads64(q, k, v, do, causal)):
            g = got_g.numpy().astype(np.float64)
            assert np.linalg.norm(g - ref_g) <= 2e-2 * np.linalg.norm(ref_g) + 1e-6


@pytest.mark.cuda
@pytest.mark.parametrize("split", [False, True], ids=["64-row", "32-row"])
def test_attention_tc_causal_many_slices(split, rng, monkeypatch):
    """attention_tc_causal over 15 slices of >= 8 query tiles (blocks heaviest first across
    groups of 8 slices: a full group and a short one), both block sizes (the host picks the
    32-row split kernel for grids under two waves), poisoned output."""
    from minigrad.backend.cuda import backend as bm
    from minigrad.backend.cuda import ops_attention
    monkeypatch.setattr(bm, "POISON", True)
    monkeypatch.setattr(ops_attention.runtime, "multiprocessors", 1 if not split else 10**6)
    shape = (3, 5, 700, 64)
    q, k, v = (rng.standard_normal(shape).astype(np.float16) for _ in range(3))
    got = mg.ops.attention_tc_causal(*(Tensor(x, device="cuda") for x in (q, k, v))).numpy()
    ref = reference.attention_tc(q, k, v, True)
    assert np.abs(got - ref).max() <= 2e-3 * max(1.0, np.abs(ref).max())


def test_self_attention_step_matches_cpu(rng):
    """One training step of CausalSelfAttention on the GPU (flash kernels) gives the CPU
    gradients (composed ops)."""
    if not mg.cuda_available():
        pytest.skip("needs CUDA")
    x = rng.standard_normal((2, 37, 48)).astype(np.float32)
    grads = {}
    for dev, impl in (("cpu", "naive"), ("cuda", "flash")):
        mg.manual_seed(3)
        attn = mg.nn.CausalSelfAttention(48, 4, impl=impl).to(dev)
        for lin in (attn.c_attn, attn.c_proj):
            lin.compute = "float32"
        xt = Tensor(x, device=dev, requires_grad=True)
        (attn(xt) ** 2).mean().backward()
        grads[dev] = [xt.grad.numpy()] + [p.grad.numpy() for p in attn.parameters()]
    for a, b in zip(grads["cpu"], grads["cuda"]):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a) + 1e-7


test_self_attention_step_matches_cpu = pytest.mark.cuda(test_self_attention_step_matches_cpu)


def test_bad_input(device):
    f = lambda *s: Tensor.randn(*s, device=device)                      # noqa: E731
    with pytest.raises(ValueError, match=r"attention_flash: q, k, v must have the same shape"):
        mg.ops.attention_flash(f(2, 8, 16), f(2, 9, 16), f(2, 9, 16))
    with pytest.raises(ValueError, match=r"head dim D=300 is larger than 256"):
        mg.ops.attention_flash_causal(f(4, 300), f(4, 300), f(4, 300))
    with pytest.raises(TypeError, match=r"attention_flash: q must be float32, got float16"):
        mg.ops.attention_flash(f(4, 8).half(), f(4, 8), f(4, 8))
    with pytest.raises(ValueError, match=r"attention_tc: q and k need the same Dk"):
        mg.ops.attention_tc(f(4, 8).half(), f(5, 16).half(), f(5, 8).half())
    with pytest.raises(ValueError, match=r"attention_tc_causal: k and v need the same Sk"):
        mg.ops.attention_tc_causal(f(4, 8).half(), f(5, 8).half(), f(6, 8).half())
    with pytest.raises(TypeError, match=r"attention_tc: v must be float16, got float32"):
        mg.ops.attention_tc(f(4, 8).half(), f(5, 8).half(), f(5, 8))
    # empty inputs: a clear error, not a NumPy reduction error (CPU) or an unwritten output
    for op, h in ((mg.ops.attention_tc, True), (mg.ops.attention_flash_causal, False)):
        for shapes in (((4, 8), (0, 8), (0, 8)), ((4, 0), (4, 0), (4, 0)),
                       ((0, 4, 8), (0, 4, 8), (0, 4, 8))):
            if not h and len({s for s in shapes}) > 1:
                continue
            x = [f(*s).half() if h else f(*s) for s in shapes]
            with pytest.raises(ValueError, match=r"q, k, v need every dim >= 1"):
                op(*x)


# ------------------------------------------------------------- attention dropout --
def ref_dropout64(q, k, v, do, causal, keep, p):
    """float64 attention with probability dropout (mask `keep`) and the analytic
    gradients of sum(out * do): (out, lse, dq, dk, dv)."""
    _, lse, prob = ref_attention64(q, k, v, causal)
    q, k, v, do = (x.astype(np.float64) for x in (q, k, v, do))
    pm = np.where(keep, prob / (1 - p), 0.0)
    out = pm @ v
    scale = 1 / math.sqrt(q.shape[-1])
    dv = np.swapaxes(pm, -1, -2) @ do
    dp = np.where(keep, (do @ np.swapaxes(v, -1, -2)) / (1 - p), 0.0)
    ds = prob * (dp - (do * out).sum(-1, keepdims=True))
    return out, lse, ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, dv


def _philox7_scalar(c0, c1, c2, seed):
    """Philox-4x32-7 in plain Python integers: an independent check of the vectorised one."""
    c3, k0, k1, m = 0, seed & 0xFFFFFFFF, seed >> 32, 0xFFFFFFFF
    for _ in range(7):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & m, (p0 >> 32) ^ c3 ^ k1, p0 & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c0, c1, c2, c3


def test_dropout_mask_definition():
    """Element (b, i, j) from the Philox call of counter (j & ~24, i & ~16, b): word
    2*bit4(i) + bit4(j), 16-bit half bit3(j); kept iff u16 >= ceil(65536 p)."""
    seed, p, s = 0x0123456789ABCDEF, 0.3, 70
    keep = reference.dropout_keep(seed, (2, 3), s, p)
    assert keep.shape == (2, 3, s, s) and keep.dtype == bool
    flat = keep.reshape(6, s, s)
    thr = math.ceil(p * 65536)
    for b, i, j in [(0, 0, 0), (5, 69, 69), (3, 17, 9), (1, 16, 24), (2, 40, 63), (4, 33, 8)]:
        words = _philox7_scalar(j & ~24, i & ~16, b, seed)
        u = (words[2 * ((i >> 4) & 1) + ((j >> 4) & 1)] >> (16 * ((j >> 3) & 1))) & 0xFFFF
        assert flat[b, i, j] == (u >= thr), (b, i, j)
    # a pure function of (seed, b, i, j): the same on a smaller S, other seeds differ
    np.testing.assert_array_equal(reference.dropout_keep(seed, (2, 3), 33, p),
                                  keep[..., :33, :33])
    assert (reference.dropout_keep(seed + 1, (2, 3), s, p) != keep).mean() > 0.3
    assert (flat[0] != flat[1]).mean() > 0.3


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_dropout_keep_fraction(p):
    keep = reference.dropout_keep(12345, (4,), 700, p)
    assert abs(keep.mean() - (1 - p)) < 3e-3
    # no structure along rows, columns or the 8-element groups of one Philox call
    for axis in (-1, -2):
        assert np.abs(keep.mean(axis) - (1 - p)).max() < 0.1
    assert abs(keep[:, ::16, ::8].mean() - (1 - p)) < 1e-2


DROP_CASES = [(s, d) for s in (1, 17, 255) for d in (16, 64, 100, 128)] + \
    [(64, 256), (255, 256)] + [(1024, d) for d in (16, 64, 100, 128, 256)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("s,d", DROP_CASES, ids=lambda v: str(v))
def test_flash_dropout_forward_stats_and_backward(s, d, causal, poisoned_device, rng):
    if poisoned_device == "cpu" and s > 255:
        pytest.skip("the CPU path is the NumPy reference; S = 1024 adds nothing there")
    p, seed = 0.2 if s % 2 else 0.5, 987654321 + s + d
    shape = ((2, 3) if s <= 255 else (2,)) + (s, d)
    q, k, v, do = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    keep = reference.dropout_keep(seed, shape[:-2], s, p)
    ref_out, ref_lse, *ref_grads = ref_dropout64(q, k, v, do, causal, keep, p)
    qt, kt, vt = (Tensor(x, device=poisoned_device, requires_grad=True) for x in (q, k, v))
    op = mg.ops.attention_flash_causal if causal else mg.ops.attention_flash
    out = op(qt, kt, vt, dropout_p=p, seed=seed)
    out_s, lse = mg.ops.attention_flash_with_stats(qt.detach(), kt.detach(), vt.detach(),
                                                   causal, dropout_p=p, seed=seed)
    close(out.numpy(), ref_out)
    assert np.array_equal(out.numpy(), out_s.numpy()), "stats forward must give the same out"
    assert np.abs(lse.numpy() - ref_lse).max() < 1e-5
    _, lse0 = mg.ops.attention_flash_with_stats(qt.detach(), kt.detach(), vt.detach(), causal)
    assert np.array_equal(lse.numpy(), lse0.numpy()), "L does not depend on dropout"
    (out * Tensor(do, device=poisoned_device)).sum().backward()
    for got, ref in zip((qt.grad, kt.grad, vt.grad), ref_grads):
        close(got.numpy(), ref, rel=1e-3, abs_=1e-4)


def test_flash_dropout_gradcheck():
    """Finite differences of the dropout forward (fixed seed) against its backward, on
    the CPU path (float64 in, the f32 op inside: eps and tolerances sized for f32)."""
    rng = np.random.default_rng(7)
    q, k, v = (Tensor(rng.standard_normal((2, 19, 6)), dtype=mg.float64, requires_grad=True)
               for _ in range(3))
    for op in (mg.ops.attention_flash, mg.ops.attention_flash_causal):
        fn = lambda q, k, v: op(q.float(), k.float(), v.float(), dropout_p=0.3, seed=42)  # noqa
        assert mg.gradcheck(fn, [q, k, v], eps=1e-3, atol=2e-3, rtol=2e-2)


def test_flash_dropout_p0_is_identical(rng):
    q, k, v, do = (rng.standard_normal((2, 3, 33, 16)).astype(np.float32) for _ in range(4))
    res = []
    for kw in ({}, {"dropout_p": 0.0, "seed": 5}, {"dropout_p": 0}):
        qt, kt, vt = (Tensor(x, requires_grad=True) for x in (q, k, v))
        out = mg.ops.attention_flash_causal(qt, kt, vt, **kw)
        (out * Tensor(do)).sum().backward()
        res.append([out.numpy(), qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy()])
    for other in res[1:]:
        for a, b in zip(res[0], other):
            assert np.array_equal(a, b)


def test_flash_dropout_seed_from_generator(rng):
    q, k, v = (Tensor(rng.standard_normal((2, 40, 8)).astype(np.float32)) for _ in range(3))
    outs = []
    for seed in (1, 1, 2):
        mg.manual_seed(seed)
        outs.append([mg.ops.attention_flash(q, k, v, dropout_p=0.25).numpy() for _ in range(2)])
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][0], outs[0][1]), "each call draws a new seed"
    assert not np.array_equal(outs[0][0], outs[2][0])
    plain = mg.ops.attention_flash(q, k, v).numpy()
    # E[out] = out without dropout: the mean over many masks approaches it
    mean = np.mean([mg.ops.attention_flash(q, k, v, dropout_p=0.25).numpy()
                    for _ in range(200)], axis=0)
    assert np.abs(mean - plain).mean() < 0.05 * np.abs(plain).mean() + 0.02


def test_flash_dropout_bad_args():
    f = lambda: Tensor.randn(2, 8, 16)                                   # noqa: E731
    with pytest.raises(ValueError, match=r"attention_flash: dropout_p must be a number in"):
        mg.ops.attention_flash(f(), f(), f(), dropout_p=1.0)
    with pytest.raises(ValueError, match=r"attention_flash_causal: dropout_p must be"):
        mg.ops.attention_flash_causal(f(), f(), f(), dropout_p=-0.1)
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        mg.ops.attention_flash(f(), f(), f(), dropout_p=0.1, seed=-1)


def test_attention_dropout_impls():
    """attention(): "flash" takes dropout on any device, "tc" refuses it, eval mode and
    p = 0 are the plain op; "auto" on the CPU composes."""
    from minigrad.nn.transformer import attention
    rng = np.random.default_rng(3)
    q, k, v = (Tensor(rng.standard_normal((2, 2, 9, 8)).astype(np.float32)) for _ in range(3))
    plain = attention(q, k, v, impl="flash").numpy()
    assert np.array_equal(attention(q, k, v, dropout_p=0.2, training=False, impl="flash")
                          .numpy(), plain)
    mg.manual_seed(4)
    a = attention(q, k, v, dropout_p=0.2, training=True, impl="flash").numpy()
    mg.manual_seed(4)
    b = mg.ops.attention_flash_causal(q, k, v, dropout_p=0.2).numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, plain)
    with pytest.raises(ValueError, match="impl='tc' has no attention dropout"):
        attention(q, k, v, dropout_p=0.2, training=True, impl="tc")


def _attn_grads(dev, impl, dropout, x):
    mg.manual_seed(3)
    attn = mg.nn.CausalSelfAttention(48, 4, dropout=dropout, impl=impl).to(dev)
    attn.resid_dropout.p = 0.0         # Tensor.dropout draws device-specific masks
    for lin in (attn.c_attn, attn.c_proj):
        lin.compute = "float32"
    xt = Tensor(x, device=dev, requires_grad=True)
    y = attn(xt)
    (y ** 2).mean().backward()
    return [y.numpy(), xt.grad.numpy()] + [p.grad.numpy() for p in attn.parameters()]


@pytest.mark.cuda
def test_self_attention_dropout_step_matches_cpu(rng):
    """A training step of CausalSelfAttention with attention dropout on the GPU ("auto":
    the flash kernels) gives the CPU's (flash reference, the same mask)."""
    x = rng.standard_normal((2, 37, 48)).astype(np.float32)
    cpu = _attn_grads("cpu", "flash", 0.2, x)
    gpu = _attn_grads("cuda", "auto", 0.2, x)
    for a, b in zip(cpu, gpu):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a) + 1e-7
    nodrop = _attn_grads("cpu", "flash", 0.0, x)
    assert np.linalg.norm(cpu[0] - nodrop[0]) > 1e-2 * np.linalg.norm(nodrop[0])
