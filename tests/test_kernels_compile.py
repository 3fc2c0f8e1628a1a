"""Every CUDA kernel source compiles to a cubin with NVRTC — no GPU needed (runs in CI).

* each `kernels/*.cu` file, for sm_80 and sm_90, or for the archs its first lines
  declare with a comment `// minigrad-arch: sm_90a` (comma-separated list; e.g. wgmma
  kernels that only build for sm_90a);
* a representative set of the primitive kernels that `minigrad.backend.cuda.codegen`
  generates (every op template, every dtype, several ranks and both index widths).

NVRTC comes from pip (`cuda-python`, `nvidia-cuda-nvrtc`, `nvidia-cuda-runtime` for the
headers; all in the `dev` extra). Where it is missing the tests skip, except under CI
(env CI set), where a missing compiler fails: CI must compile every kernel.
"""
import os

import pytest

from minigrad.backend import BINARY_OPS, BITWISE_OPS, COMPARISONS, REDUCE_OPS, UNARY_OPS
from minigrad.backend.cuda import codegen as cg
from minigrad.backend.cuda import compiler
from minigrad.dtype import ALL

DEFAULT_ARCHS = ("sm_80", "sm_90")
CUDA_DTYPES = [d for d in ALL if d.name in cg.CTYPE]


@pytest.fixture(scope="module", autouse=True)
def nvrtc_available():
    if compiler.nvrtc_version() is None:
        msg = ("NVRTC is not available: pip install cuda-python nvidia-cuda-nvrtc "
               "nvidia-cuda-runtime (the dev extra)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    if compiler.include_dir() is None:
        pytest.fail("no CUDA include dir (cuda_fp16.h): pip install nvidia-cuda-runtime")


def _kernel_files():
    return sorted(compiler.kernels_dir().glob("*.cu"))


def _file_cases():
    cases = []
    for path in _kernel_files():
        archs = compiler.kernel_file_archs(path.read_text()) or DEFAULT_ARCHS
        cases += [pytest.param(path, a, id=f"{path.name}-{a}") for a in archs]
    return cases


@pytest.mark.parametrize("path,arch", _file_cases())
def test_kernel_file_compiles(path, arch):
    cubin = compiler.compile_to_cubin(path.read_text(), arch=arch, name=path.name,
                                      headers=compiler.kernel_headers(path.parent), cache=False)
    assert cubin[:4] == b"\x7fELF"


def _generated():
    """A representative set of generated kernels: every template and op, every dtype
    through casts, and each template with f32, a 16-bit float and an integer type."""
    by = {d.name: d for d in CUDA_DTYPES}
    f32, f16, bf16, i32, i64, b = (by[n] for n in ("float32", "float16", "bfloat16", "int32",
                                                   "int64", "bool"))
    for op in UNARY_OPS:
        cg.elementwise(cg.unary_expr(op, f32), f32, [f32], (), 2, False)
        cg.elementwise(cg.unary_expr(op, i32), i32, [i32], (), 1, False)
    cg.elementwise(cg.unary_expr("exp", bf16), bf16, [bf16], (), 3, True)
    for op in BINARY_OPS:
        for d in (f32, i64, b):
            if (d is f32 and op in BITWISE_OPS) or (d is b and op not in BITWISE_OPS):
                continue                # &, |, ^ take integers and bools (bools: only those)
            cg.elementwise(cg.binary_expr(op, d), b if op in COMPARISONS else d, [d, d], (),
                           3, d is i64)
    cg.elementwise(cg.binary_expr("pow", f16), f16, [f16, f16], (), 2, False)
    for d in CUDA_DTYPES:                                   # casts to and from every dtype
        cg.elementwise("a0", f32, [d], (), 1, False)
        cg.elementwise("a0", d, [f32], (), 2, False)
        cg.elementwise("a0", d, [i64], (), 1, True)
    cg.elementwise("a0", bf16, [f16], (), 1, False)
    cg.elementwise("a0 ? a1 : a2", bf16, [b, bf16, bf16], (), 4, True)
    for op in REDUCE_OPS:
        for d in (f32, bf16, i32, b):
            cg.reduce(op, d, d, 1, 1, "rows", False)
            cg.reduce(op, d, f32 if d.is_float else i64, 2, 3, "cols", True)
    for d in (f32, f16, i64):
        cg.argmax(d, 2, False)
    for d in (f32, bf16, i32):
        cg.matmul(d, d, d)
        cg.gather(d, i64)
        cg.scatter_add(d, i32)
    u64 = ("unsigned long long", "unsigned long long")
    cg.elementwise("mg_uniform(c0, c1, i)", f16, [], u64, 1, False)
    cg.elementwise("mg_normal(c0, c1, i)", bf16, [], u64, 1, True)
    cg.elementwise("c0 + (double)i * c1", f32, [], ("double", "double"), 1, False)
    cg.elementwise("c0 + (long long)i * c1", i64, [], ("long long", "long long"), 1, False)
    cg.elementwise("c0", i64, [], ("long long",), 1, False)
    for d in (f32, f16, bf16):                              # the fused AdamW step
        cg.adamw(d, d, False)
    cg.adamw(bf16, f32, True)


def _fused_groups():
    """(tree, input dtypes) of the fused elementwise groups (lazy.fuse) of a few real
    graphs, built and run on the CPU: gelu in three dtypes, a layernorm, comparisons,
    where, casts and integer arithmetic."""
    import numpy as np

    import minigrad as mg
    from minigrad import lazy

    x, y = (mg.Tensor(np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4) * s,
                      device="cpu") for s in (1, -0.5))
    graphs = [x.gelu(), x.half().gelu(), x.bfloat16().gelu(), x.layernorm(),
              (x > y).where(x.half(), y.half()).float() * 2 - (~(y > 1)).float(),
              ((x * 10).long() * 3 + (y * 10).int() > 2).where((x * 9).int(), 0),
              ((x.half() * x.half()).float() + x * y).bfloat16().sigmoid() * 3]
    groups, run = [], lazy._run

    def record(lb):
        if lb.op == "fused":
            groups.append((lb.arg[0], tuple(s.dtype for s in lb.srcs)))
        return run(lb)
    lazy._run, fuse = record, lazy.FUSE
    lazy.FUSE = True
    try:
        mg.realize(*graphs)
    finally:
        lazy._run, lazy.FUSE = run, fuse
    return groups


FUSED = _fused_groups()


def _generated_fused():
    for k, (tree, in_dts) in enumerate(FUSED):
        cg.elementwise(cg.fused_expr(tree, in_dts), tree[2], list(in_dts), (), 1 + k % 4,
                       k % 3 == 0)


GENERATED = cg.sources(_generated) + cg.sources(_generated_fused)


def test_fused_groups_are_representative():
    assert len(FUSED) >= 7
    labels = " ".join(str(t) for t, _ in FUSED)
    for op in ("tanh", "where", "cast", "sigmoid", "sqrt", "mul"):
        assert op in labels
    srcs = " ".join(src for name, src in cg.sources(_generated_fused))
    assert "__fmul_rn" in srcs and "__float2half_rn" in srcs and "__float2bfloat16_rn" in srcs


def test_fused_sources_stand_alone():
    """Fused kernels include the fp16/bf16 headers their intermediates need, even
    where no input or output has that dtype."""
    for name, src in cg.sources(_generated_fused):
        assert compiler.compile_to_cubin(src, arch="sm_80", name=name, cache=False)[:4] == \
            b"\x7fELF"


def test_generated_set_is_representative():
    assert len(GENERATED) > 100
    names = " ".join(n for n, _ in GENERATED)
    for prefix in ("mg_ew_", "mg_red_", "mg_argmax_", "mg_mm_", "mg_gather_", "mg_scatter_",
                   "mg_adamw_"):
        assert prefix in names


def _one_unit(sources):
    """All generated kernels as one translation unit (one NVRTC call, not hundreds):
    the headers and the shared prelude once, then every kernel's own code."""
    bodies = []
    for _, src in sources:
        body = src.split(cg.PRELUDE)[-1]
        bodies.append("\n".join(ln for ln in body.splitlines() if not ln.startswith("#include")))
    return "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n" + cg.PRELUDE + "\n".join(bodies)


@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_generated_kernels_compile(arch):
    cubin = compiler.compile_to_cubin(_one_unit(GENERATED), arch=arch,
                                      name="generated_kernels.cu", cache=False)
    assert cubin[:4] == b"\x7fELF"


def test_generated_sources_stand_alone():
    """Each source includes what it needs: one kernel per template and 16-bit dtype."""
    picked, seen = [], set()
    for name, src in GENERATED:
        kind = (name.split("_")[1], "__half" in src, "__nv_bfloat16" in src)
        if kind not in seen:
            seen.add(kind)
            picked.append((name, src))
    assert len(picked) >= 10
    for name, src in picked:
        assert compiler.compile_to_cubin(src, arch="sm_90", name=name, cache=False)[:4] == \
            b"\x7fELF"


def test_syntax_error_fails_with_log():
    with pytest.raises(compiler.CompileError) as e:
        compiler.compile_to_cubin('extern "C" __global__ void k(float* x) { x[0] = ; }',
                                  arch="sm_90", name="broken.cu", options=("-DMG_TEST=1",),
                                  cache=False)
    msg = str(e.value)
    assert "broken.cu" in msg and "sm_90" in msg and "-DMG_TEST=1" in msg
    assert "expected an expression" in e.value.log


def test_arch_line_convention(tmp_path):
    text = "// some kernel\n// minigrad-arch: sm_90a\nextern \"C\" __global__ void k() {}\n"
    assert compiler.kernel_file_archs(text) == ["sm_90a"]
    assert compiler.kernel_file_archs("// nothing declared\n") is None
    assert compiler.arch_for_file(text, "sm_90") == "sm_90a"
    assert compiler.arch_for_file("// plain\n", "sm_80") == "sm_80"
    with pytest.raises(RuntimeError, match="needs sm_90a"):
        compiler.arch_for_file(text, "sm_80")
    # wgmma builds for sm_90a only: the convention exists for such files
    wgmma = 'extern "C" __global__ void k() { asm volatile("wgmma.fence.sync.aligned;"); }'
    assert compiler.compile_to_cubin(wgmma, arch="sm_90a", cache=False)[:4] == b"\x7fELF"
    with pytest.raises(compiler.CompileError):
        compiler.compile_to_cubin(wgmma, arch="sm_90", cache=False)
