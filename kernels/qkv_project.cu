// minigrad-arch: sm_80, sm_86, sm_89, sm_90a
// qkv_project.cu - fused Q/K/V projections with quantized weights (ops qkv_project_int8,
// qkv_project_int4): one launch computes q, k and v from one read of x.
//
// MATH (OPS.md)
//   int8 (W8A16): out_P = f16( (sum_k f32(x[m,k]) * f32(W_P[k,n])) * scale_P ), P = q, k, v
//   int4 (W4A16): out_P = f16(  sum_k f32(x[m,k]) * f32(Wdq_P[k,n]) ),
//                 Wdq[k,n] = f16(f16(q[k,n]) * s_P[k/G, n])   (matmul_int4's weight)
//   f16 x (int8 or dequantised f16) products are exact in the tensor core, summed in f32
//   (mma.sync.m16n8k16.f32.f16.f16.f32); the scale multiply (int8) is one f32 __fmul_rn and
//   the final cvt.rn.f16.f32 is the oracle's astype(f16). Any M, N, K >= 1 (int4: K % G == 0);
//   every store is predicated (KAIO wrote out of bounds unless M % 64 == 0, N % 16 == 0).
//
// CONTRACT (layouts)
//   x    f16 [M,K], x[m,k] at x[m*ldx + k]; leading batch dims flattened into M.
//   int4 weights: uint32 [N, K/8] each (matmul_int4's packing), scales f16 [K/G, N] each,
//        G = 1 << gshift in {32, 64, 128}. x must be 16-byte aligned with ldx % 8 == 0
//        (true for a contiguous x since K % 32 == 0).
//   int8 weights: W_P stored [N, ldw] int8 (= W_P^T, K contiguous per output column, as
//        nn.Linear keeps [out, in]), ldw % 16 == 0 and 16-byte aligned base; a row-major
//        [K, N] weight is copied once with matmul_int8.cu's `matmul_int8_transpose`
//        (ldb_out = round_up(K, 16)). Bytes k in [K, ldw) are never used (x is zero there).
//   outputs f16 [M,N] each, out[m,n] at out[m*ldo + n], any ldo >= N, any alignment.
//
// ENTRY POINTS (extern "C") AND ARGUMENTS
//   int4: (const u16* x, const u32* Wq, Wk, Wv, const u16* Sq, Sk, Sv, u16* Oq, Ok, Ov,
//          int64 ldx, int64 ldo, int M, int N, int K, int gshift)     PyCUDA "PPPPPPPPPPqqiiii"
//     qkv_project_int4_gemv_t1, qkv_project_int4_gemv_t2, qkv_project_int4_gemm,
//     qkv_project_int4_gemm_wgmma
//   int8: (const u16* x, const i8* Wq, Wk, Wv, u16* Oq, Ok, Ov, int64 ldx, int64 ldw,
//          int64 ldo, int M, int N, int K, float sq, float sk, float sv) "PPPPPPPqqqiiifff"
//     qkv_project_int8_gemv_t{1,2}_{v,s}, qkv_project_int8_gemm_{v,s}, qkv_project_int8_gemm_wgmma,
//     qkv_project_int8_one_gemv_t{1,2}_v  (ONE projection: Wq/Oq/sq used; the "three separate
//                                          calls" baseline and a W8A16 linear)
//   _v: x read with 16-byte loads (x 16-byte aligned, ldx % 8 == 0); _s: element loads of x
//   (any K / ldx / alignment); gemm_wgmma needs the _v rule. Weights are always read with
//   16-byte loads (rule above).
//   BUILD: on compute capability 9.0 compile for sm_90a (first line); elsewhere the
//   *_gemm_wgmma entries trap.
//
// LAUNCH RULES
//   gemv (decode, M <= 64): block (256,1,1); grid (ceil(N/16), ceil(M/(8*T)), 1);
//     T = 1 when M <= 8 else 2; static shared memory only. One block produces 16 columns of
//     q, k AND v (its three row tiles are the three projections), so every activation
//     fragment loaded is used by three weight streams.
//   gemm_wgmma (prefill, M > 64, sm_90a, _v rule): block (256,1,1);
//     grid (ceil(M/128) * ceil(N/256), 3, 1); dynamic shared memory int4 189440 B /
//     int8 230400 B. blockIdx.y is the projection (grid.y = 1 computes q only).
//   gemm (prefill elsewhere, or int8 with the _s rule): block (128,1,1);
//     grid (ceil(M/128) * ceil(N/128), 3, 1); dynamic shared memory int4 69632 B /
//     int8 86016 B. Raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first.
//
// ALGORITHMS: the templates of weight_quant.cuh (shared with matmul_int4.cu), with the int8
//   weight format:
//   gemv: weights are the m16 mma operand, 8 warps split K, 16-byte streaming weight loads,
//         a register ring keeps the next superchunks' weights in flight; an int8 word (4 k)
//         becomes two exact f16x2 registers (prmt under 0x64 + one sub.f16x2: (b0,b2),
//         (b1,b3)), and x is permuted to match with one prmt each.
//   gemm_wgmma / gemm: x and raw weight tiles by cp.async; each weight row converted once
//         per block into an f16 K-major shared tile (double-buffered), then wgmma
//         (128 x 256 tiles) or ldmatrix + mma.sync (128 x 128 tiles).
//   Why fused: at decode sizes one launch instead of three (and three weight streams per
//   activation load); at prefill one launch of 3x the blocks fills the last wave better.
#include "weight_quant.cuh"   // namespace mwq: the shared templates

__device__ __forceinline__ mwq::Args qkv_args(const unsigned short* x, const void* w0, const void* w1,
                                              const void* w2, const unsigned short* s0,
                                              const unsigned short* s1, const unsigned short* s2,
                                              void* o0, void* o1, void* o2, long long ldx,
                                              long long ldw, long long ldo, int M, int N, int K,
                                              int gshift, float f0, float f1, float f2) {
    mwq::Args p;
    p.x = x;
    p.w[0] = reinterpret_cast<const unsigned char*>(w0);
    p.w[1] = reinterpret_cast<const unsigned char*>(w1);
    p.w[2] = reinterpret_cast<const unsigned char*>(w2);
    p.s[0] = s0;
    p.s[1] = s1;
    p.s[2] = s2;
    p.o[0] = o0;
    p.o[1] = o1;
    p.o[2] = o2;
    p.sc[0] = f0;
    p.sc[1] = f1;
    p.sc[2] = f2;
    p.ldx = ldx;
    p.ldw = ldw;
    p.ldo = ldo;
    p.M = M;
    p.N = N;
    p.K = K;
    p.gshift = gshift;
    return p;
}

#define QKV4_ARGS                                                                             \
    const unsigned short* __restrict__ x, const unsigned* __restrict__ Wq,                     \
        const unsigned* __restrict__ Wk, const unsigned* __restrict__ Wv,                      \
        const unsigned short* __restrict__ Sq, const unsigned short* __restrict__ Sk,          \
        const unsigned short* __restrict__ Sv, unsigned short* __restrict__ Oq,                \
        unsigned short* __restrict__ Ok, unsigned short* __restrict__ Ov, long long ldx,       \
        long long ldo, int M, int N, int K, int gshift
#define QKV4_PASS qkv_args(x, Wq, Wk, Wv, Sq, Sk, Sv, Oq, Ok, Ov, ldx, K / 8, ldo, M, N, K, gshift, 1.f, 1.f, 1.f)

#define QKV8_ARGS                                                                             \
    const unsigned short* __restrict__ x, const signed char* __restrict__ Wq,                  \
        const signed char* __restrict__ Wk, const signed char* __restrict__ Wv,                \
        unsigned short* __restrict__ Oq, unsigned short* __restrict__ Ok,                      \
        unsigned short* __restrict__ Ov, long long ldx, long long ldw, long long ldo, int M,   \
        int N, int K, float sq, float sk, float sv
#define QKV8_PASS qkv_args(x, Wq, Wk, Wv, nullptr, nullptr, nullptr, Oq, Ok, Ov, ldx, ldw, ldo, M, N, K, 0, sq, sk, sv)

// ---- int4 ----  (D, XP per T: the most weight bytes in flight that fit 128 registers)
#define QKV4_GEMV(T, D, XP)                                                                   \
    extern "C" __global__ void __launch_bounds__(mwq::GV_NT, 2) qkv_project_int4_gemv_t##T(QKV4_ARGS) { \
        mwq::gemv<mwq::I4, 3, 1, T, D, XP, true, true>(QKV4_PASS);                             \
    }
QKV4_GEMV(1, 2, false)
QKV4_GEMV(2, 1, false)
extern "C" __global__ void __launch_bounds__(mwq::GM_NT, 2) qkv_project_int4_gemm(QKV4_ARGS) {
    mwq::gemm<mwq::I4, true, true>(QKV4_PASS, mwq_dyn_smem);
}
extern "C" __global__ void __launch_bounds__(mwq::WG_NT, 1) qkv_project_int4_gemm_wgmma(QKV4_ARGS) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    mwq::gemm_wg<mwq::I4, true>(QKV4_PASS, mwq_dyn_smem);
#else
    asm volatile("trap;");   // built without sm_90a
#endif
}

// ---- int8 ----
#define QKV8_GEMV(T, D, XP, XV, SUF)                                                          \
    extern "C" __global__ void __launch_bounds__(mwq::GV_NT, 2) qkv_project_int8_gemv_t##T##SUF(QKV8_ARGS) { \
        mwq::gemv<mwq::I8, 3, 1, T, D, XP, XV, true>(QKV8_PASS);                               \
    }
QKV8_GEMV(1, 2, true, true, _v)
QKV8_GEMV(2, 2, false, true, _v)
QKV8_GEMV(1, 2, true, false, _s)
QKV8_GEMV(2, 2, false, false, _s)
extern "C" __global__ void __launch_bounds__(mwq::GM_NT, 2) qkv_project_int8_gemm_v(QKV8_ARGS) {
    mwq::gemm<mwq::I8, true, true>(QKV8_PASS, mwq_dyn_smem);
}
extern "C" __global__ void __launch_bounds__(mwq::GM_NT, 2) qkv_project_int8_gemm_s(QKV8_ARGS) {
    mwq::gemm<mwq::I8, false, true>(QKV8_PASS, mwq_dyn_smem);
}
extern "C" __global__ void __launch_bounds__(mwq::WG_NT, 1) qkv_project_int8_gemm_wgmma(QKV8_ARGS) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    mwq::gemm_wg<mwq::I8, true>(QKV8_PASS, mwq_dyn_smem);
#else
    asm volatile("trap;");   // built without sm_90a
#endif
}

// ---- one projection (W8A16 linear; baseline for the fused op) ----
#define QKV8_ONE_GEMV(T, D, XP)                                                               \
    extern "C" __global__ void __launch_bounds__(mwq::GV_NT, 2) qkv_project_int8_one_gemv_t##T##_v(QKV8_ARGS) { \
        mwq::gemv<mwq::I8, 1, 1, T, D, XP, true, true>(QKV8_PASS);                             \
    }
QKV8_ONE_GEMV(1, 4, true)
QKV8_ONE_GEMV(2, 4, false)
