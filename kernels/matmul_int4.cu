// minigrad-arch: sm_80, sm_86, sm_89, sm_90a
// matmul_int4.cu - W4A16 matmul (op matmul_int4, GPTQ-style int4 weights, f16 activations).
// The weight-quantized kernel templates (namespace mwq) live in weight_quant.cuh, shared
// with qkv_project.cu.
//
// MATH (OPS.md)  C[m,n] = sum_k f32(A[m,k]) * f32(W[k,n]),  W[k,n] = f16(f16(q[k,n]) * s[k/G, n])
//   q: signed 4-bit, packed uint32 [N, K/8]: word k/8 + n*(K/8), nibble k%8 at bits 4(k%8)..,
//   two's complement. The dequantised weight is rounded to f16 exactly as the NumPy oracle
//   does: q is made exact in f16 with the 0x6400 magic-number trick (lop3 + sub/fma.f16x2,
//   exact), then ONE mul.rn.f16x2 by the f16 scale (the exact product rounded once = the
//   oracle's f16(f32(q) * f32(s))). Products f16 x f16 are exact in the tensor core and summed
//   in f32 (mma.sync.m16n8k16.f32.f16.f16.f32), so only the summation order differs from
//   the oracle (well inside rel 1e-3).
//
// CONTRACT
//   A   f16 [M,K]: A[m,k] at A[m*lda + k]; lda % 8 == 0 and A 16-byte aligned (true for a
//       contiguous A: K is a multiple of G >= 32). Leading batch dims are flattened into M.
//   Wp  uint32 [N, K/8] contiguous, 16-byte aligned.   S f16 [K/G, N] contiguous (any N).
//   C   f32 [M,N]: C[m,n] at C[m*ldc + n] (any ldc >= N, any alignment).
//   G = 1 << gshift, gshift in {5, 6, 7}; K % G == 0. Any M, N >= 1.
//
// ENTRY POINTS AND LAUNCH RULES
//   Args of all entries: (const u16* A, const u32* Wp, const u16* S, float* C, int64 lda,
//                         int64 ldc, int M, int N, int K, int gshift)   PyCUDA "PPPPqqiiii"
//   BUILD: on compute capability 9.0 compile this file for sm_90a (the first line tells
//   minigrad's compiler): every entry works there; elsewhere matmul_int4_gemm_wgmma traps.
//   matmul_int4_gemv_r{1,2}_t{1,2}   decode (weight streaming, memory bound).
//       block (256,1,1); grid (ceil(N / (16*R)), ceil(M / (8*T)), 1); static shared only.
//       T = 1 when M <= 8, else 2; R = 1 when K >= N (twice the blocks), else 2
//       (the H200 sweep in benchmarks/notes_quant.md).
//   matmul_int4_gemv1   decode of one token (M == 1) with K <= N: reads weight rows like a
//       copy, f32 FMA (weight_quant.cuh). block (256,1,1); grid (ceil(N / 16), 1, 1); static
//       shared only. Where K > N the gemv r1 is as fast or faster (H200, notes_quant.md).
//   matmul_int4_gemm_wgmma  prefill on sm_90a (Hopper wgmma).
//       block (256,1,1); grid (ceil(M/128) * ceil(N/256), 1, 1); dynamic shared memory
//       MWQ_WG_SMEM_I4 = 189440 B (raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
//   matmul_int4_gemm  prefill on any sm_80+ (mma.sync).
//       block (128,1,1); grid (ceil(M/128) * ceil(N/128), 1, 1); dynamic shared memory
//       MWQ_SMEM_I4 = 69632 B (raise the attribute likewise).
//   Host rule: M == 1 and K <= N -> gemv1; M <= 64 -> gemv (grid.y covers the tokens 16 at a
//   time; the weights of the extra token groups come from L2); M > 64 -> gemm_wgmma on cc 9.0,
//   else gemm.
//
// DECODE KERNEL (gemv): the weights are the mma A operand (16 output columns n = the m16
//   rows), the activations the B operand (8 tokens = n8), so M = 1 wastes 7/8 of an n8 tile
//   instead of 15/16 of an m16 one. A warp takes 16*R weight rows and one "superchunk" of
//   K at a time: lane (g = lane/4, tq = lane%4) loads 16 bytes (32 k) of rows g and g+8 per
//   row tile with ld.global.nc.L1::no_allocate.v4 (4 lanes cover 64 contiguous bytes of a
//   row; rows are independent streams). The 8 warps of a block split K (superchunks
//   w, w+8, ...) and add their partial sums through shared memory at the end. Decode is
//   latency bound (an 8 MB weight is ~2 us of DRAM time, comparable to one round trip), so
//   each warp keeps the weights of its next D superchunks in flight in a register ring
//   (D = 4 for R = 1: all of K = 4096 is requested at once); registers are capped at 128 so
//   two blocks fit per SM. K order inside an mma is free (the sum runs over all k): a
//   word's nibbles come out of the magic-number trick as pairs (k, k+4), so the fragment's
//   logical k pairs map to actual k (8w+2j, 8w+2j+4) and (8w+2j+1, 8w+2j+5), and the
//   activations are permuted the same way with one prmt per register. Each 32-k chunk lies
//   in one scale group (G >= 32).
// PREFILL KERNEL, wgmma (gemm_wgmma): block tile 128 x 256 x 64, two warpgroups, each one
//   wgmma.m64n256k16.f32.f16.f16 chain from shared memory (A = x, B = the dequantised
//   weights, both K-major in the 128-byte swizzle layout). x and the raw packed tile arrive
//   by cp.async (5 stages, 3 tiles ahead); each thread dequantises one weight row per K tile
//   into the other of two f16 tiles while the tensor cores run the current one
//   (fence.proxy.async before the barrier that hands it to wgmma).
// PREFILL KERNEL, mma.sync (gemm): block tile 128 x 128 x 32, 4 warps (2 x 2, 64 x 64 warp
//   tiles, 128 f32 accumulators). A tiles and raw packed-weight tiles go global -> shared by
//   cp.async (4 stages); the tile after the current one is dequantised (one thread per weight
//   row: 4 words -> 32 f16, scale loaded two tiles ahead into a register) into one of two f16
//   [n][k] shared tiles, so each K step has one barrier; the f16 tiles feed ldmatrix + mma
//   exactly like matmul_tc's A 'n' / B 't' kernel. Shared rows padded by 16 B: ldmatrix,
//   the 16-byte dequant stores and the raw reads are bank-conflict free. 2-3 blocks/SM.
#include "weight_quant.cuh"   // namespace mwq: the shared templates

// ------------------------------------------------------------- entry points --
#define MI4_ARGS                                                                              \
    const unsigned short* __restrict__ A, const unsigned* __restrict__ Wp,                     \
        const unsigned short* __restrict__ S, float* __restrict__ C, long long lda,           \
        long long ldc, int M, int N, int K, int gshift

__device__ __forceinline__ mwq::Args mi4_args(const unsigned short* A, const unsigned* Wp,
                                              const unsigned short* S, float* C, long long lda,
                                              long long ldc, int M, int N, int K, int gshift) {
    mwq::Args p;
    p.x = A;
    for (int i = 0; i < 3; ++i) {
        p.w[i] = reinterpret_cast<const unsigned char*>(Wp);
        p.s[i] = S;
        p.o[i] = C;
        p.sc[i] = 1.f;
    }
    p.ldx = lda;
    p.ldw = K / 8;
    p.ldo = ldc;
    p.M = M;
    p.N = N;
    p.K = K;
    p.gshift = gshift;
    return p;
}

#define MI4_GEMV(R, T, D, XP)                                                                 \
    extern "C" __global__ void __launch_bounds__(mwq::GV_NT, 2) matmul_int4_gemv_r##R##_t##T(   \
        MI4_ARGS) {                                                                           \
        mwq::gemv<mwq::I4, 1, R, T, D, XP, true, false>(mi4_args(A, Wp, S, C, lda, ldc, M, N, K, gshift)); \
    }
MI4_GEMV(1, 1, 4, true)
MI4_GEMV(1, 2, 4, false)
MI4_GEMV(2, 1, 2, true)
MI4_GEMV(2, 2, 2, false)

extern "C" __global__ void __launch_bounds__(mwq::G1_NT, 3) matmul_int4_gemv1(MI4_ARGS) {
    mwq::gemv1(mi4_args(A, Wp, S, C, lda, ldc, M, N, K, gshift));
}

extern "C" __global__ void __launch_bounds__(mwq::GM_NT, 2) matmul_int4_gemm(MI4_ARGS) {
    mwq::gemm<mwq::I4, true, false>(mi4_args(A, Wp, S, C, lda, ldc, M, N, K, gshift), mwq_dyn_smem);
}
extern "C" __global__ void __launch_bounds__(mwq::WG_NT, 1) matmul_int4_gemm_wgmma(MI4_ARGS) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    mwq::gemm_wg<mwq::I4, false>(mi4_args(A, Wp, S, C, lda, ldc, M, N, K, gshift), mwq_dyn_smem);
#else
    asm volatile("trap;");   // built without sm_90a
#endif
}
