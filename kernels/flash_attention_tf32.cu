// flash_attention_tf32.cu - FlashAttention-2 forward (+ log-sum-exp), L-only and the
// three-kernel backward of attention_flash / attention_flash_causal (OPS.md, "Attention
// family") on tensor cores with error-compensated 3xTF32 products.  Any sm_80+.
// Covers head dims D <= 128 (padded classes DP = 32, 64, 128); flash_attention.cu (plain
// FFMA) stays the path for 128 < D <= 256 and the reference design.
//
// NUMERICS (the f32 contract)
//   Every product of the five matrix products (S = Q.K^T, O += P.V; backward dP = dO.V^T,
//   dV += P^T.dO, dK += dS^T.Q, dQ += dS.K) is computed as 3xTF32: each f32 operand x is split
//   into big = x with the low 13 mantissa bits cleared (a TF32 value) and small = x - big
//   (exact in f32; the tensor core reads its top 10 mantissa bits, as for any TF32 operand), and
//       a.b ~= big_a.big_b + big_a.small_b + small_a.big_b
//   by three mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (small terms first), f32
//   accumulate.  Per product the relative error is < ~2^-20 (the dropped small.small term and
//   the truncation of small), i.e. ~1e-6 relative on the dot products: f32-level accuracy,
//   the scheme of CUTLASS's OpMultiplyAddFastF32 that PyTorch's f32 SDPA kernels use.  Plain
//   1xTF32 is never used.  The softmax, the running max / sum, L, D_i, P and dS stay in f32
//   exactly as in flash_attention.cu (base-2 exponentials: ex2.approx of s*scale*log2(e) - m).
//   The tensor core's f32 accumulation inside a chain of MMAs truncates (with one chain per
//   output over all key tiles the error grew with S: 3e-5 relative at S = 4097, H200), so the
//   chains are short: one 16-wide d chunk (6 MMAs) of a row.row product, one key / query tile
//   (3 BC/8 MMAs) of a P.M product, each summed into fresh registers and added to the running
//   sums with f32 FADD / FFMA (round to nearest).  Measured: <= 2.8e-6 relative (out, dQ, dK,
//   dV vs float64) for S up to 4097, L within 8.3e-6 (benchmarks/notes_attention.md).
//
// MATH (per slice b; scale = 1/sqrt(D) as passed by the host): as flash_attention.cu
//   s_ij = scale q_i.k_j; causal masks key j > query i; out_i = sum_j softmax_j(s_i.) v_j;
//   L_i = logsumexp_j s_ij.  Backward: P_ij = exp(s_ij - L_i), D_i = sum_d dO_id O_id,
//   dV_j = sum_i P_ij dO_i, dS_ij = P_ij (dO_i.v_j - D_i), dK_j = scale sum_i dS_ij q_i,
//   dQ_i = scale sum_j dS_ij k_j.  Dropout (the _dropout kernels): the keep-mask of
//   flash_attention.cu / reference.dropout_keep (Philox-4x32-7 of (seed, b, i, j)), applied as
//   there: out_i = sum_j P_ij M_ij/(1-p) v_j, dV_j = sum_i P_ij M_ij/(1-p) dO_i,
//   dS_ij = P_ij (M_ij/(1-p) dO_i.v_j - D_i); L does not depend on the mask.
//
// LAYOUT: q, k, v, o, dO, dQ, dK, dV f32 [B, S, D] contiguous; L, Dd f32 [B, S]; 1 <= D <= 128.
//   Kernels are templated on DP in {32, 64, 128} (smallest DP >= D; columns D..DP-1 zero-filled
//   in shared memory, never stored).  Tiles in the row layout load by 16-byte cp.async when
//   D % 4 == 0 and the pointers are 16-byte aligned, else by 4-byte cp.async; the interleaved
//   tiles (below) always by 4-byte cp.async.  float4 stores under the same rule, else scalar.
//
// ENTRY POINTS (extern "C"; X = d32 | d64 | d128; W = w4 | w8 (warps per block; d128: w8
// only); C = "" | "_causal"; argument formats as flash_attention.cu's kernels of the same role)
//   flash_tf32_fwd{C}_{X}_{W}      (q, k, v, o, lse, B, S, D, scale)              "PPPPPiiif"
//       lse == NULL: plain forward; else the _with_stats forward (same o, also L).
//       Non-causal (C = ""): also (split_first, split_parts, o_part, l_part)   + "iiPP":
//       the tail split (fa3::TailSplit below; parts = 1: none, grid as below; else
//       grid first + parts * (tiles - first), then flash_tf32_merge).
//   flash_tf32_merge (o_part, l_part, o, lse, S, D, rows_per_tile, first, ntail, parts)
//       "PPPPiiiiii": block 256, grid ceil(ntail * rows_per_tile / 8); parts <= 8;
//       l_part NULL: o = the plain sum of the parts (dQ), lse untouched.
//   flash_tf32_lse{C}_{X}_{W}      (q, k, lse, B, S, D, scale)                    "PPPiiif"
//       L only; bit-identical to the lse of the stats forward of the same W.
//   flash_tf32_bwd_preprocess      (dO, o, Dd, rows, D)                           "PPPqi"
//       block 256, grid ceil(rows/8); rows = B*S.
//   flash_tf32_bwd_dq{C}_{X}_{W}   (q, k, v, dO, lse, Dd, dQ, B, S, D, scale)     "PPPPPPPiiif"
//       Non-causal: also (split_first, split_parts, dq_part)                  + "iiP":
//       the tail split as fwd's (partial sums of dQ; flash_tf32_merge with l_part NULL).
//   flash_tf32_bwd_dkdv{C}_{X}_{W} (q, k, v, dO, lse, Dd, dK, dV, B, S, D, scale) "PPPPPPPPiiif"
//   flash_tf32_{fwd,bwd_dq,bwd_dkdv}{C}_dropout_{X}_{W}: the same plus one fa3::DropArgs
//       (format "I"*15 + "f", identical to flash_attention.cu's fa::DropArgs).
//   -DFA3_DROPOUT=0 builds only the kernels without dropout (+ preprocess), =1 only the
//   _dropout ones (+ preprocess); -DFA3_ONLY_DP=<DP> one head-dim class only.
//
// LAUNCH RULES: block (32*NW, 1, 1); grid (ceil(S / (16*NW)) * B, 1, 1) for every kernel (fwd,
//   lse, dq: 16*NW query rows per block; dkdv: 16*NW keys per block); dynamic shared memory =
//   the bytes below (raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first when > 48 KB).
//   Key tile of fwd/lse: 64; of dq: BCQ = 64 (d32, d64) / 32 (d128); query tile of dkdv:
//   BRQ = 64 / 32.  Bytes (LD = DP + 4 floats):
//       fwd 4*(16 NW LD + 256 LD)  lse 4*(16 NW LD + 128 LD)  dq 4*(32 NW LD + 4 BCQ LD)
//       dkdv 4*(32 NW LD + 4 BRQ LD + 4 BRQ)
//        X_W    |  fwd     lse     dq      dkdv
//       d32_w4  |  46080   27648   55296   56320
//       d32_w8  |  55296   36864   73728   74752
//       d64_w4  |  87040   52224  104448  105472
//       d64_w8  | 104448   69632  139264  140288
//       d128_w8 | 202752  135168  202752  203264
//   (compiled in as fa3::smem_{fwd,lse,dq,dkdv}<DP, NW>(); static_asserts at the end.)
//   Host rule (ops_attention.py _nw): d128 w8; d32/d64 w4, except the causal dq / dkdv passes
//   when ceil(S/128)*B >= 2 * SMs (w8; measured on an H200, benchmarks/notes_attention.md).
//
// ALGORITHM (FlashAttention-2 tiling; every warp owns 16 rows of the row operand)
//   mma.m16n8k8 fragments, g = lane/4, t = lane%4: A a0 (g, t), a1 (g+8, t), a2 (g, t+4),
//   a3 (g+8, t+4); B b0 (k=t, n=g), b1 (k=t+4, n=g); C c0,c1 (g, 2t..2t+1), c2,c3 (g+8, ...).
//   The reduction index of every product and the column index of every score tile may be
//   permuted freely (the same permutation on both operands), which gives:
//   * "row . row" products (S = Q.K^T, dP = dO.V^T, S^T = K.Q^T, dP^T = V.dO^T): in a 16-wide
//     d chunk, thread t takes d = 4t..4t+3 from one 16-byte load per row: k-step 0 uses
//     (4t, 4t+1) as (k=t, k=t+4), k-step 1 uses (4t+2, 4t+3).  Score-tile column (key) n of
//     n-tile j is key 8j + rho(n), rho = 0,4,1,5,2,6,3,7, so a thread's C values c0 / c1 of
//     n-tile j belong to keys 8j + t / 8j + t + 4.
//   * "P . M" products (O += P.V, dQ += dS.K, dV += P^T.dO, dK += dS^T.Q): the C fragment of
//     the score tile is used as the A fragment as it is (k = t <-> key 8j + t, k = t+4 <->
//     key 8j + t + 4), so B rows are keys 8j + t and 8j + t + 4; the output column n of
//     output n-tile jo is d = 32 (jo/4) + 4 rho(n) + jo%4, so one 16-byte load of a B row gives
//     the b values of four n-tiles, and a thread stores float4s at d = 32G + 4t and 32G + 16 + 4t.
//   * Row operands: warp w's 16 rows are base_w + rho(g) (m = g) and base_w + rho(g) + 16
//     (m = g + 8) with base_w = 32 (w/2) + 8 (w%2) (fwd, dq), or keys 16w + rho(g) and + 8
//     (dkdv).  A thread's two rows i, i+16 are the pair of one Philox call of the dropout mask.
//   * Shared layouts ("tile products" below): the row layout (stride DP + 4 floats) for B of the
//     row.row products, and two element-interleaved layouts - row pairs for their A operands
//     (Q, dO, K, V where resident), key pairs for V in the forward's P.V - in which one 16-byte
//     load is a fragment in the register order of the MMA, so no register copies build
//     fragments.  Every 16-byte shared load of a warp is conflict-free (each quarter-warp
//     touches 8 distinct 16-byte bank groups).  The interleaved layouts took the d = 128
//     kernels from 5576 to 4488 (fwd), 4640 to 4208 (dq), 5856 to 5448 (dkdv) SASS
//     instructions (whole kernel, nvcc 13.0 sm_90) and fwd+bwd 7-10 % faster
//     (benchmarks/notes_attention.md, "Interleaved shared layouts").
//   fwd  : a block owns 16*NW query rows (Q resident in shared memory); K/V tiles of BC keys are
//          double-buffered with cp.async (tile j+1 loads while tile j computes; one barrier per
//          tile).  Per tile: S = Q.K^T, masks, online softmax (running max m and sum l per row,
//          O rescaled by exp2(m_old - m_new)), O += P.V.  Causal: key tiles past the block's
//          last row are not loaded, a warp skips tiles that lie wholly above its rows, blocks
//          are issued heaviest first across groups of 8 slices (mg_block_tile).
//          out = O / l (dropout: O (1/(1-p)) / l), L = (m + log2 l) ln 2.  Non-causal: the
//          tiles of a partly filled last wave may run as key ranges, merged by their L.
//   dq   : a block owns 16*NW query rows (Q, dO resident); per key tile: dP = dO.V^T,
//          S = Q.K^T, P = exp2(S*scale*log2e - L log2e), dS = P (dP - D), dQ += dS.K.
//          Causal: as fwd (key tiles past the last row skipped, blocks by mg_block_tile).
//          Non-causal: the last wave's tiles may run as key ranges, their sums added.
//   dkdv : a block owns 16*NW keys (K, V resident) and their dK, dV accumulators; per query tile
//          of BRQ rows (Q, dO, L, D double-buffered): S^T = K.Q^T, dP^T = V.dO^T, P^T, dS^T,
//          dV += P^T.dO, dK += dS^T.Q.  Causal: query tiles before the block's first key are
//          skipped, a warp skips tiles that lie wholly before its keys, blocks by mg_block_tile
//          (key tile 0 first).  Padded query rows
//          (>= S) are masked (P = 0); padded key rows are computed and not stored.
//   Masked scores are -inf before the exponent (exactly 0).  Every output element is written
//   once by one block; no atomics; deterministic.
#include "common.cuh"

namespace fa3 {

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
__device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }

// Tiles: the forward (and lse) streams key tiles of FWD_BC = 64 keys; dq key tiles of BCQ(DP),
// dkdv query tiles of BRQ(DP); a block has NW = 4 or 8 warps (one kernel instance each).
constexpr int FWD_BC = 64;
template <int DP> __host__ __device__ constexpr int BCQ() { return DP == 128 ? 32 : 64; }
template <int DP> __host__ __device__ constexpr int BRQ() { return DP == 128 ? 32 : 64; }
template <int DP, int NW> __host__ __device__ constexpr int smem_fwd() {
    return 4 * (16 * NW * (DP + 4) + 4 * FWD_BC * (DP + 4));
}
template <int DP, int NW> __host__ __device__ constexpr int smem_lse() {
    return 4 * (16 * NW * (DP + 4) + 2 * FWD_BC * (DP + 4));
}
template <int DP, int NW> __host__ __device__ constexpr int smem_dq() {
    return 4 * (32 * NW * (DP + 4) + 4 * BCQ<DP>() * (DP + 4));
}
template <int DP, int NW> __host__ __device__ constexpr int smem_dkdv() {
    return 4 * (32 * NW * (DP + 4) + 4 * BRQ<DP>() * (DP + 4) + 4 * BRQ<DP>());
}
// blocks per SM asked of __launch_bounds__: 2 where two blocks' shared memory fits 228 KB and
// (REGFIT) the kernel needs no more than 65536 / (64 NW) registers per thread, else 1
__host__ __device__ constexpr int min_blocks(int smem, bool regfit) {
    return regfit && 2 * (smem + 1024) <= 233472 ? 2 : 1;
}

__host__ __device__ constexpr int rho(int c) { return (c >> 1) + ((c & 1) << 2); }   // 0,4,1,5,2,6,3,7

// ------------------------------------------------------------------------------ 3xTF32 --
// big = x with the low 13 bits cleared (TF32), small = x - big (exact; the MMA reads its
// TF32 part).  x must be finite.
__device__ __forceinline__ void split(float x, unsigned& big, unsigned& small) {
    big = __float_as_uint(x) & 0xffffe000u;
    small = __float_as_uint(x - __uint_as_float(big));
}
__device__ __forceinline__ void mma_tf32(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// A fragment of one k-step in both parts
struct FragA { unsigned hi[4], lo[4]; };
__device__ __forceinline__ void make_a(FragA& f, float a0, float a1, float a2, float a3) {
    split(a0, f.hi[0], f.lo[0]); split(a1, f.hi[1], f.lo[1]);
    split(a2, f.hi[2], f.lo[2]); split(a3, f.hi[3], f.lo[3]);
}
// c += A.B in 3xTF32 (b0, b1: the f32 values of the B fragment)
__device__ __forceinline__ void mma3(float (&c)[4], const FragA& a, float b0, float b1) {
    unsigned h0, l0, h1, l1;
    split(b0, h0, l0);
    split(b1, h1, l1);
    mma_tf32(c, a.lo, h0, h1);
    mma_tf32(c, a.hi, l0, l1);
    mma_tf32(c, a.hi, h0, h1);
}

// --------------------------------------------------------------------- tile products --
// Shared layouts of the operand tiles.  Row layout (K in fwd, K/V in dq, Q/dO in dkdv): row r
// at r * LD, LD = DP + 4 floats.  Two interleaved layouts put each fragment's values where one
// 16-byte load gives them in the register order mma.sync wants, so that no register copies
// assemble fragments (they were ~1/4 of the instructions of the d = 128 kernels):
//   row pairs (the A operand of gemm_rr: Q in fwd, Q and dO in dq, K and V in dkdv; loaded
//     once per block by load_pairs<RowPairs>): the two rows of a warp's fragment row g (m = g and
//     m = g + 8) share pair row 8w + g, element d of the first at 2d, of the second at 2d + 1;
//     pair stride LDA = 2 DP + 4 floats (consecutive pair rows 4 banks apart: conflict-free).
//   key pairs (the B operand of gemm_pm in fwd: V; load_pairs<KeyPairs>): keys 8j + u and 8j + u + 4
//     (u < 4) share pair row 4j + u, interleaved the same way; pair stride LDV = 2 DP + 8
//     floats; 16-byte chunk c of a pair row is stored at c ^ bit3(c) (in the second half of
//     every 256-byte group neighbours swap), which makes the loads conflict-free.
template <int DP> __host__ __device__ constexpr int lda_pairs() { return 2 * DP + 4; }
template <int DP> __host__ __device__ constexpr int ldv_pairs() { return 2 * DP + 8; }
// the key-pair swizzle: 16-byte chunk c of a pair row is stored at chunk c ^ bit3(c)
__host__ __device__ constexpr int key_pair_chunk(int c) { return c ^ ((c >> 3) & 1); }

// "row . row": acc[j] (16 x 8) = A[16 rows, 0:16*nch] . B[keys 8j + rho(n), 0:16*nch]^T.
// Ap: this thread's pair row of the A tile (row pairs); Bt: shared tile base (row 0) in the row
// layout, stride LD.  Chunks c >= nch (all-zero padding) are skipped.  FRESH: each 16-wide
// chunk is summed by the tensor core into fresh registers and added to acc with an f32 add (the
// tensor core's own accumulation truncates, so its chains are kept to 6 MMAs); else the whole
// product is one tensor-core chain (3 D/8 MMAs; fewer registers).
template <int NJ, int DP, int LD, bool FRESH = true>
__device__ __forceinline__ void gemm_rr(float (&acc)[NJ][4], const float* Ap, const float* Bt,
                                        int g, int t, int nch) {
    const float* ap = Ap + 8 * t;
    const float* bp = Bt + rho(g) * LD + 4 * t;
#pragma unroll
    for (int c = 0; c < DP / 16; ++c) {
        if (c == 0 || c < nch) {                     // nch >= 1
            // d = 16c + 4t .. 16c + 4t + 3 of rows m = g, g + 8, interleaved
            const float4 x = *reinterpret_cast<const float4*>(ap + 32 * c);
            const float4 y = *reinterpret_cast<const float4*>(ap + 32 * c + 4);
            FragA a0, a1;
            make_a(a0, x.x, x.y, x.z, x.w);     // k-step 0: d = 4t (k=t), 4t+1 (k=t+4)
            make_a(a1, y.x, y.y, y.z, y.w);     // k-step 1: d = 4t+2, 4t+3
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const float4 bv = *reinterpret_cast<const float4*>(bp + 8 * j * LD + 16 * c);
                if (FRESH) {
                    float tmp[4] = {0.f, 0.f, 0.f, 0.f};
                    mma3(tmp, a0, bv.x, bv.y);
                    mma3(tmp, a1, bv.z, bv.w);
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[j][e] = c == 0 ? tmp[e] : acc[j][e] + tmp[e];
                } else {
                    if (c == 0) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
                    mma3(acc[j], a0, bv.x, bv.y);
                    mma3(acc[j], a1, bv.z, bv.w);
                }
            }
        }
    }
}

// "P . M": acc[jo] (16 x 8, output columns d = 32(jo/4) + 4 rho(n) + jo%4) =
//   acc[jo] * (alo | ahi for the rows m = g | g + 8) + P[16 rows, keys] . M[keys, d],
//   P given as the C fragments p[j] of a score tile whose columns are keys 8j + t (c0, c2) and
//   8j + t + 4 (c1, c3).  Mt: shared tile base, in the row layout (stride LD) or, with
//   KEY_PAIRS, the key-pair layout.  Output groups G >= ngr (columns >= 32 ngr, padding) are
//   skipped.  The tile's product is summed by the tensor core into fresh registers (chains of
//   3 NJ MMAs) and folded into acc with an f32 FMA, so the long sum over all tiles rounds to
//   nearest (the tensor core's accumulation truncates).
template <int NJ, int DP, int LD, bool KEY_PAIRS = false>
__device__ __forceinline__ void gemm_pm(float (&acc)[DP / 8][4], const float (&p)[NJ][4],
                                        const float* Mt, int g, int t, int ngr,
                                        float alo = 1.f, float ahi = 1.f) {
    constexpr int LDV = ldv_pairs<DP>();
    // key pairs: keys 8j + t, 8j + t + 4 at pair row 4j + t; d = 32G + 4 rho(g) .. + 3 fill the
    // 16-byte chunks 16G + 2 rho(g) and + 1 (16G leaves the swizzle bit alone)
    const float* mp = KEY_PAIRS ? Mt + t * LDV : Mt + t * LD + 4 * rho(g);
    const int c0 = 4 * key_pair_chunk(2 * rho(g)), c1 = 4 * key_pair_chunk(2 * rho(g) + 1);
#pragma unroll
    for (int G = 0; G < DP / 32; ++G) {
        if (G == 0 || G < ngr) {                     // ngr >= 1
            float tmp[4][4];
#pragma unroll
            for (int e = 0; e < 4; ++e) tmp[e][0] = tmp[e][1] = tmp[e][2] = tmp[e][3] = 0.f;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                FragA a;
                make_a(a, p[j][0], p[j][2], p[j][1], p[j][3]);
                if (KEY_PAIRS) {   // (key 8j+t, key 8j+t+4) pairs of columns e = 0, 1 and 2, 3
                    const float* row = mp + 4 * j * LDV + 64 * G;
                    const float4 x = *reinterpret_cast<const float4*>(row + c0);
                    const float4 y = *reinterpret_cast<const float4*>(row + c1);
                    mma3(tmp[0], a, x.x, x.y);
                    mma3(tmp[1], a, x.z, x.w);
                    mma3(tmp[2], a, y.x, y.y);
                    mma3(tmp[3], a, y.z, y.w);
                } else {
                    const float4 v0 = *reinterpret_cast<const float4*>(mp + 8 * j * LD + 32 * G);
                    const float4 v1 = *reinterpret_cast<const float4*>(mp + (8 * j + 4) * LD + 32 * G);
#pragma unroll
                    for (int e = 0; e < 4; ++e) mma3(tmp[e], a, mg_comp(v0, e), mg_comp(v1, e));
                }
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float* o = acc[4 * G + e];
                o[0] = fmaf(o[0], alo, tmp[e][0]); o[1] = fmaf(o[1], alo, tmp[e][1]);
                o[2] = fmaf(o[2], ahi, tmp[e][2]); o[3] = fmaf(o[3], ahi, tmp[e][3]);
            }
        }
    }
}

// Which matrix rows an interleaved tile holds: pair row P interleaves rows first(P) (even
// words) and first(P) + SECOND (odd words), the tile's row 0 being row0 of the matrix.
//   RowPairs<H> (A of gemm_rr): H = 16 in fwd/dq, where a warp's fragment rows are r and r + 16,
//     H = 8 in dkdv (r and r + 8); first(P) = 2H (P / H) + 8 ((P % H) / 8) + rho(P % 8) puts
//     fragment row g of warp w in pair row 8w + g.
//   KeyPairs (B of gemm_pm): keys 8j + u and 8j + u + 4 (u < 4) in pair row 4j + u, 16-byte
//     chunks swizzled as described above.
template <int H> struct RowPairs {
    static constexpr int SECOND = H;
    static constexpr bool SWIZZLE = false;
    __host__ __device__ static constexpr int first(int P) {
        return 2 * H * (P / H) + 8 * ((P % H) / 8) + rho(P % 8);
    }
};
struct KeyPairs {
    static constexpr int SECOND = 4;
    static constexpr bool SWIZZLE = true;
    __host__ __device__ static constexpr int first(int P) { return 8 * (P >> 2) + (P & 3); }
};

// Pair rows [0, NP) of an interleaved tile (pair stride LDX floats) from the [nrows, D] matrix
// gm, its row 0 = matrix row row0; zeros past nrows and D.  A thread keeps one interleaved
// column w2 = 2d + h (consecutive threads write consecutive words) and steps down the pair
// rows from p0 = tid / 2DP by NT / 2DP: both maps then satisfy first(p0 + m) = first(p0) +
// first(m), so every source address is an immediate offset from one pointer.  4-byte cp.async.
template <class Map, int NP, int DP, int LDX, int NT>
__device__ __forceinline__ void load_pairs(float* sm, const float* gm, int row0, int nrows, int D) {
    constexpr int PSTEP = NT / (2 * DP);
    static_assert(NT % (2 * DP) == 0 && (PSTEP == 1 || PSTEP == 2 || PSTEP == 4) && NP % 4 == 0,
                  "a thread keeps its column; pair rows step by 1, 2 or 4");
    const int w2 = (int)threadIdx.x % (2 * DP), d = w2 >> 1, h = w2 & 1;
    const int p0 = (int)threadIdx.x / (2 * DP);
    const int col = Map::SWIZZLE ? (key_pair_chunk(w2 >> 2) << 2) | (w2 & 3) : w2;
    const int r0 = row0 + Map::first(p0) + Map::SECOND * h;       // the row of pair row p0
    const unsigned dst = mg_smem_addr(sm + p0 * LDX + col);
    const float* src = gm + (size_t)r0 * D + d;
    if (row0 + 2 * NP <= nrows && d < D) {           // the tile's 2 NP rows all inside
#pragma unroll
        for (int m = 0; m < NP; m += PSTEP)
            mg_cp_async4(dst + 4 * m * LDX, src + (size_t)Map::first(m) * D, 4);
    } else {                                         // the last tile, or D < DP
#pragma unroll 1
        for (int m = 0; m < NP; m += PSTEP) {
            const bool ok = r0 + Map::first(m) < nrows && d < D;
            mg_cp_async4(dst + 4 * m * LDX, ok ? src + (size_t)Map::first(m) * D : gm, ok ? 4 : 0);
        }
    }
}

// n floats v[row0 .. row0+n) (zero past nrows) -> shared, by threads [t0, t0 + n)
__device__ __forceinline__ void load_vec(float* sm, const float* gv, int row0, int nrows, int n, int t0) {
    const int i = (int)threadIdx.x - t0;
    if (i >= 0 && i < n) {
        const bool ok = row0 + i < nrows;
        mg_cp_async4(mg_smem_addr(sm + i), ok ? gv + row0 + i : gv, ok ? 4 : 0);
    }
}

// Stores rows rlo, rhi of acc * (mlo, mhi) into out [S, D] (rows >= S are not stored).
template <int DP>
__device__ __forceinline__ void store_rows(float* out, const float (&acc)[DP / 8][4], float mlo, float mhi,
                                           int rlo, int rhi, int S, int D, int t, bool vec) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = h ? rhi : rlo;
        const float mul = h ? mhi : mlo;
        if (r >= S) continue;
        float* orow = out + (size_t)r * D;
#pragma unroll
        for (int G = 0; G < DP / 32; ++G) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int d = 32 * G + 16 * half + 4 * t;
                const int e = 2 * h + half;
                const float4 v = make_float4(acc[4 * G][e] * mul, acc[4 * G + 1][e] * mul,
                                             acc[4 * G + 2][e] * mul, acc[4 * G + 3][e] * mul);
                if (vec) {
                    if (d < D) *reinterpret_cast<float4*>(orow + d) = v;
                } else {
                    if (d + 0 < D) orow[d + 0] = v.x;
                    if (d + 1 < D) orow[d + 1] = v.y;
                    if (d + 2 < D) orow[d + 2] = v.z;
                    if (d + 3 < D) orow[d + 3] = v.w;
                }
            }
        }
    }
}

// ------------------------------------------------------------------ attention dropout --
// The same mask as flash_attention.cu (common.cuh's MgDropArgs / mg_philox7; host: ops_attention.py _drop;
// mirror: reference.dropout_keep).  Element (b, i, j) is kept iff u16 >= thr, u16 = 16 bits of
// the Philox call on counter (j & ~24, i & ~16, b): word 2*bit4(i) + bit4(j), low half iff
// bit3(j) == 0.
using DropArgs = MgDropArgs;   // and mg_philox7: common.cuh
__device__ __forceinline__ unsigned u16_of(const uint4& h, int word, int half) {
    const unsigned w = word == 0 ? h.x : word == 1 ? h.y : word == 2 ? h.z : h.w;
    return half ? (w >> 16) : (w & 0xffffu);
}
// Keep bits of a score tile in the row-operand = queries layout (fwd, dq): element e of n-tile
// j (bit 4j + e) is (row e < 2 ? i0 : i0 + 16, key k0 + 8j + t + 4 (e & 1)).  Needs
// bit4(i0) == 0 and k0 % 32 == 0.  One Philox call per (32-key group, e & 1) serves 8 elements.
template <int NJ>
__device__ __forceinline__ unsigned keep_q(const DropArgs& dr, int b, int i0, int k0, int t) {
    unsigned bits = 0u;
#pragma unroll
    for (int J = 0; J < (NJ + 3) / 4; ++J)
#pragma unroll
        for (int x = 0; x < 2; ++x) {
            const uint4 h = mg_philox7((unsigned)(k0 + 32 * J + t + 4 * x), (unsigned)i0, (unsigned)b, dr);
#pragma unroll
            for (int ih = 0; ih < 2; ++ih)
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) {
                    if (4 * J + jj >= NJ) continue;
                    const unsigned u = u16_of(h, 2 * ih + (jj >> 1), jj & 1);
                    bits |= (u >= dr.thr ? 1u : 0u) << (4 * (4 * J + jj) + 2 * ih + x);
                }
        }
    return bits;
}
// Keep bits in the row-operand = keys layout (dkdv): element e of n-tile j (bit 4j + e) is
// (key e < 2 ? j0 : j0 + 8, query q0 + 8j + t + 4 (e & 1)).  Needs bit3(j0) == 0 and
// q0 % 32 == 0.  One call per (n-tile pair j, j + 2, e & 1) serves 4 elements.
template <int NJ>
__device__ __forceinline__ unsigned keep_k(const DropArgs& dr, int b, int j0, int q0, int t) {
    static_assert(NJ % 4 == 0, "query tiles of whole 32-row groups");
    unsigned bits = 0u;
    const int word_j = (j0 >> 4) & 1;
    const unsigned c0 = (unsigned)j0 & ~24u;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
        if (j & 2) continue;
#pragma unroll
        for (int x = 0; x < 2; ++x) {
            const uint4 h = mg_philox7(c0, (unsigned)(q0 + 8 * j + t + 4 * x), (unsigned)b, dr);
#pragma unroll
            for (int ih = 0; ih < 2; ++ih)            // query i (ih = 0) or i + 16 (n-tile j + 2)
#pragma unroll
                for (int kh = 0; kh < 2; ++kh) {      // key j0 (half 0) or j0 + 8 (half 1)
                    const unsigned u = u16_of(h, 2 * ih + word_j, kh);
                    bits |= (u >= dr.thr ? 1u : 0u) << (4 * (j + 2 * ih) + 2 * kh + x);
                }
        }
    }
    return bits;
}

// ------------------------------------------------------------------------------ forward --
// Tail split of the non-causal forward and dQ pass (host rule: ops_attention._tail_split).
// A grid of equal tiles on one or two blocks per SM ends in a partly filled wave (64 x 4096 x
// 128: 2048 tiles on 132 SMs, the 16th wave 68 tiles wide, 64 SMs idle for it).  Blocks from
// `first` on each take one of `parts` key ranges of a tail tile (tile first + r % ntail, part
// r / ntail, r = blockIdx.x - first) and write that range's normalised output and log-sum-exp
// to o_part / l_part ([parts][ntail][16 NW rows] x D, [parts][ntail][16 NW]); flash_tf32_merge
// combines them: L = log sum_p exp(L_p), out = sum_p exp(L_p - L) out_p.  The dQ pass writes
// each range's sum of dS.K to o_part (l = NULL) and the merge adds them.  parts <= 1: no split.
struct TailSplit {
    int first, parts;
    float *o, *l;
};
// This block's tile and key-tile range when it is a part of a tail tile (slot = the part's
// index in o_part / l_part); slot stays -1 for a whole tile.
__device__ __forceinline__ void tail_tile(const TailSplit& split, int nqt, int B, int nkt,
                                          int& b, int& qt, int& kt_lo, int& kt_hi, int& slot) {
    if (split.parts <= 1 || (int)blockIdx.x < split.first) return;
    const int ntail = nqt * B - split.first, r = (int)blockIdx.x - split.first;
    const int part = r / ntail, tile = split.first + r % ntail;
    slot = part * ntail + r % ntail;
    b = tile / nqt;
    qt = tile % nqt;
    kt_lo = part * nkt / split.parts;
    kt_hi = (part + 1) * nkt / split.parts;
}

template <int DP, int NW, bool CAUSAL, bool PV = true, bool DROP = false>
__device__ __forceinline__ void fwd(const float* __restrict__ Q, const float* __restrict__ K,
                                    const float* __restrict__ V, float* __restrict__ O,
                                    float* __restrict__ LSE, int B, int S, int D, float scale,
                                    const DropArgs& drop = DropArgs{},
                                    const TailSplit& split = TailSplit{0, 1, nullptr, nullptr}) {
    static_assert(PV || !DROP, "dropout needs the P.V product");
    constexpr int BC = FWD_BC;
    constexpr int BR = 16 * NW, NT = 32 * NW, LD = DP + 4, NJ = BC / 8, NO = DP / 8;
    constexpr int LDA = lda_pairs<DP>(), LDV = ldv_pairs<DP>();   // the interleaved tiles
    extern __shared__ float4 fa3_smem[];
    float* Qs = reinterpret_cast<float*>(fa3_smem);
    float* Ks = Qs + BR * LD;                        // [2][BC][LD]
    float* Vs = Ks + 2 * BC * LD;                    // [2][BC][LD] (PV only)

    const int nqt = (S + BR - 1) / BR, nkt_all = (S + BC - 1) / BC;
    int b, qt, kt_lo = 0, kt_hi = nkt_all, slot = -1;
    if (!CAUSAL) tail_tile(split, nqt, B, nkt_all, b, qt, kt_lo, kt_hi, slot);
    if (slot < 0) mg_block_tile<CAUSAL>(nqt, B, b, qt);
    if (CAUSAL) qt = nqt - 1 - qt;                   // rank 0: the last query tile
    const int q0 = qt * BR;
    const size_t off = (size_t)b * S * D;
    const float *q = Q + off, *k = K + off, *v = PV ? V + off : nullptr;
    const int nkt = CAUSAL ? min(nkt_all, (q0 + BR - 1) / BC + 1) : kt_hi;

    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wbase = 32 * (w >> 1) + 8 * (w & 1);
    const int rlo = wbase + rho(g), rhi = rlo + 16;  // block-local rows of m = g, g + 8
    const bool vec = (D & 3) == 0 && mg_aligned16(Q) && mg_aligned16(K) && (!PV || mg_aligned16(V));
    const int nch = (D + 15) >> 4, ngr = (D + 31) >> 5;
    const float sl2 = scale * LOG2E;

    float o[NO][4];
#pragma unroll
    for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_lo = -inf(), m_hi = -inf(), l_lo = 0.f, l_hi = 0.f;

    load_pairs<RowPairs<16>, BR / 2, DP, LDA, NT>(Qs, q, q0, S, D);
    mg_load_rows<BC, DP, LD, NT>(Ks, k, kt_lo * BC, S, D, vec);
    if (PV) load_pairs<KeyPairs, BC / 2, DP, LDV, NT>(Vs, v, kt_lo * BC, S, D);
    mg_cp_async_commit();

    for (int kt = kt_lo; kt < nkt; ++kt) {
        const int k0 = kt * BC, buf = (kt - kt_lo) & 1;
        mg_cp_async_wait<0>();
        __syncthreads();                             // tile kt visible; tile kt-1's buffers free
        if (kt + 1 < nkt) {
            mg_load_rows<BC, DP, LD, NT>(Ks + (buf ^ 1) * BC * LD, k, k0 + BC, S, D, vec);
            if (PV) load_pairs<KeyPairs, BC / 2, DP, LDV, NT>(Vs + (buf ^ 1) * BC * LD, v, k0 + BC, S, D);
        }
        mg_cp_async_commit();
        if (CAUSAL && k0 > q0 + wbase + 23) continue;   // every key above every row of this warp

        float s[NJ][4];
#pragma unroll
        for (int j = 0; j < NJ; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
        gemm_rr<NJ, DP, LD>(s, Qs + (8 * w + g) * LDA, Ks + buf * BC * LD, g, t, nch);

        if (k0 + BC > S || (CAUSAL && k0 + BC - 1 > q0 + wbase)) {
#pragma unroll
            for (int j = 0; j < NJ; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = k0 + 8 * j + t + 4 * (e & 1), row = q0 + (e < 2 ? rlo : rhi);
                    if (key >= S || (CAUSAL && key > row)) s[j][e] = -inf();
                }
        }
        float mx_lo = -inf(), mx_hi = -inf();
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            mx_lo = fmaxf(mx_lo, fmaxf(s[j][0], s[j][1]));
            mx_hi = fmaxf(mx_hi, fmaxf(s[j][2], s[j][3]));
        }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        const float mn_lo = fmaxf(m_lo, mx_lo * sl2), mn_hi = fmaxf(m_hi, mx_hi * sl2);
        const float mu_lo = mn_lo == -inf() ? 0.f : mn_lo, mu_hi = mn_hi == -inf() ? 0.f : mn_hi;
        const float al_lo = mg_ex2(m_lo - mu_lo), al_hi = mg_ex2(m_hi - mu_hi);
        float rs_lo = 0.f, rs_hi = 0.f;
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            s[j][0] = mg_ex2(fmaf(s[j][0], sl2, -mu_lo));
            s[j][1] = mg_ex2(fmaf(s[j][1], sl2, -mu_lo));
            s[j][2] = mg_ex2(fmaf(s[j][2], sl2, -mu_hi));
            s[j][3] = mg_ex2(fmaf(s[j][3], sl2, -mu_hi));
            rs_lo += s[j][0] + s[j][1];
            rs_hi += s[j][2] + s[j][3];
        }
        l_lo = fmaf(l_lo, al_lo, rs_lo);
        l_hi = fmaf(l_hi, al_hi, rs_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
        if (PV) {
            if (DROP) {
                const unsigned keep = keep_q<NJ>(drop, b, q0 + rlo, k0, t);
#pragma unroll
                for (int j = 0; j < NJ; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (!((keep >> (4 * j + e)) & 1u)) s[j][e] = 0.f;
            }
            gemm_pm<NJ, DP, LD, true>(o, s, Vs + buf * BC * LD, g, t, ngr, al_lo, al_hi);   // O = O alpha + P.V
        }
    }
    mg_cp_async_wait<0>();

    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    // This tile's rows of O and LSE, or, for a key range of a tail tile, its slot of o_part and
    // l_part (rows from 0 in both cases; rows at or past S - q0 are not stored).
    const bool part = slot >= 0;
    if (PV) {
        float* out = part ? split.o + (size_t)slot * BR * D : O + off + (size_t)q0 * D;
        const float i_lo = DROP ? drop.rp / l_lo : 1.f / l_lo, i_hi = DROP ? drop.rp / l_hi : 1.f / l_hi;
        store_rows<DP>(out, o, i_lo, i_hi, rlo, rhi, S - q0, D, t, (D & 3) == 0 && mg_aligned16(out));
    }
    float* lse = part ? split.l + (size_t)slot * BR : LSE != nullptr ? LSE + (size_t)b * S + q0 : nullptr;
    if (lse != nullptr && t == 0) {
        if (q0 + rlo < S) lse[rlo] = (m_lo + log2f(l_lo)) * LN2;
        if (q0 + rhi < S) lse[rhi] = (m_hi + log2f(l_hi)) * LN2;
    }
}

// ------------------------------------------------------------------------- backward: dq --
template <int DP, int NW, bool CAUSAL, bool DROP = false>
__device__ __forceinline__ void bwd_dq(const float* __restrict__ Q, const float* __restrict__ K,
                                       const float* __restrict__ V, const float* __restrict__ dO,
                                       const float* __restrict__ LSE, const float* __restrict__ Dd,
                                       float* __restrict__ dQ, int B, int S, int D, float scale,
                                       const DropArgs& drop = DropArgs{},
                                       const TailSplit& split = TailSplit{0, 1, nullptr, nullptr}) {
    constexpr int BC = BCQ<DP>();
    constexpr int BR = 16 * NW, NT = 32 * NW, LD = DP + 4, NJ = BC / 8, NO = DP / 8;
    constexpr int LDA = lda_pairs<DP>();   // the row-pair A tiles
    extern __shared__ float4 fa3_smem[];
    float* Qs = reinterpret_cast<float*>(fa3_smem);
    float* dOs = Qs + BR * LD;
    float* Ks = dOs + BR * LD;                       // [2][BC][LD]
    float* Vs = Ks + 2 * BC * LD;                    // [2][BC][LD]

    const int nqt = (S + BR - 1) / BR, nkt_all = (S + BC - 1) / BC;
    int b, qt, kt_lo = 0, kt_hi = nkt_all, slot = -1;
    if (!CAUSAL) tail_tile(split, nqt, B, nkt_all, b, qt, kt_lo, kt_hi, slot);
    if (slot < 0) mg_block_tile<CAUSAL>(nqt, B, b, qt);
    if (CAUSAL) qt = nqt - 1 - qt;                   // rank 0: the last query tile
    const int q0 = qt * BR;
    const size_t off = (size_t)b * S * D;
    const float *q = Q + off, *k = K + off, *v = V + off, *dout = dO + off;
    const int nkt = CAUSAL ? min(nkt_all, (q0 + BR - 1) / BC + 1) : kt_hi;

    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wbase = 32 * (w >> 1) + 8 * (w & 1);
    const int rlo = wbase + rho(g), rhi = rlo + 16;
    const bool vec = (D & 3) == 0 && mg_aligned16(Q) && mg_aligned16(K) && mg_aligned16(V) && mg_aligned16(dO);
    const int nch = (D + 15) >> 4, ngr = (D + 31) >> 5;
    const float sl2 = scale * LOG2E;
    const float l2_lo = q0 + rlo < S ? LSE[(size_t)b * S + q0 + rlo] * LOG2E : inf();
    const float l2_hi = q0 + rhi < S ? LSE[(size_t)b * S + q0 + rhi] * LOG2E : inf();
    const float dd_lo = q0 + rlo < S ? Dd[(size_t)b * S + q0 + rlo] : 0.f;
    const float dd_hi = q0 + rhi < S ? Dd[(size_t)b * S + q0 + rhi] : 0.f;

    float acc[NO][4];
#pragma unroll
    for (int i = 0; i < NO; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

    load_pairs<RowPairs<16>, BR / 2, DP, LDA, NT>(Qs, q, q0, S, D);
    load_pairs<RowPairs<16>, BR / 2, DP, LDA, NT>(dOs, dout, q0, S, D);
    mg_load_rows<BC, DP, LD, NT>(Ks, k, kt_lo * BC, S, D, vec);
    mg_load_rows<BC, DP, LD, NT>(Vs, v, kt_lo * BC, S, D, vec);
    mg_cp_async_commit();

    for (int kt = kt_lo; kt < nkt; ++kt) {
        const int k0 = kt * BC, buf = (kt - kt_lo) & 1;
        mg_cp_async_wait<0>();
        __syncthreads();
        if (kt + 1 < nkt) {
            mg_load_rows<BC, DP, LD, NT>(Ks + (buf ^ 1) * BC * LD, k, k0 + BC, S, D, vec);
            mg_load_rows<BC, DP, LD, NT>(Vs + (buf ^ 1) * BC * LD, v, k0 + BC, S, D, vec);
        }
        mg_cp_async_commit();
        if (CAUSAL && k0 > q0 + wbase + 23) continue;

        float s[NJ][4], dp[NJ][4];
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
            dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
        }
        gemm_rr<NJ, DP, LD>(dp, dOs + (8 * w + g) * LDA, Vs + buf * BC * LD, g, t, nch);
        gemm_rr<NJ, DP, LD>(s, Qs + (8 * w + g) * LDA, Ks + buf * BC * LD, g, t, nch);
        const bool mask = k0 + BC > S || (CAUSAL && k0 + BC - 1 > q0 + wbase);
        const unsigned keep = DROP ? keep_q<NJ>(drop, b, q0 + rlo, k0, t) : 0u;
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = s[j][e];
                if (mask) {
                    const int key = k0 + 8 * j + t + 4 * (e & 1), row = q0 + (e < 2 ? rlo : rhi);
                    if (key >= S || (CAUSAL && key > row)) x = -inf();
                }
                const float p = mg_ex2(fmaf(x, sl2, -(e < 2 ? l2_lo : l2_hi)));
                float d = dp[j][e];
                if (DROP) d = (keep >> (4 * j + e)) & 1u ? d * drop.rp : 0.f;
                s[j][e] = p * (d - (e < 2 ? dd_lo : dd_hi));
            }
        gemm_pm<NJ, DP, LD>(acc, s, Ks + buf * BC * LD, g, t, ngr);
    }
    mg_cp_async_wait<0>();
    // This tile's rows of dQ, or, for a key range of a tail tile, its partial sum's slot of dq_part
    float* out = slot >= 0 ? split.o + (size_t)slot * BR * D : dQ + off + (size_t)q0 * D;
    store_rows<DP>(out, acc, scale, scale, rlo, rhi, S - q0, D, t, (D & 3) == 0 && mg_aligned16(out));
}

// ----------------------------------------------------------------------- backward: dkdv --
template <int DP, int NW, bool CAUSAL, bool DROP = false>
__device__ __forceinline__ void bwd_dkdv(const float* __restrict__ Q, const float* __restrict__ K,
                                         const float* __restrict__ V, const float* __restrict__ dO,
                                         const float* __restrict__ LSE, const float* __restrict__ Dd,
                                         float* __restrict__ dK, float* __restrict__ dV,
                                         int B, int S, int D, float scale,
                                         const DropArgs& drop = DropArgs{}) {
    constexpr int BRQ = fa3::BRQ<DP>();
    constexpr int BCK = 16 * NW, NT = 32 * NW, LD = DP + 4, NJ = BRQ / 8, NO = DP / 8;
    constexpr int LDA = lda_pairs<DP>();   // the row-pair A tiles
    static_assert(BRQ % 32 == 0 && NT >= 2 * BRQ, "query tiles of whole 32-row groups; L, D loaders");
    extern __shared__ float4 fa3_smem[];
    float* Ks = reinterpret_cast<float*>(fa3_smem);
    float* Vs = Ks + BCK * LD;
    float* Qs = Vs + BCK * LD;                       // [2][BRQ][LD]
    float* dOs = Qs + 2 * BRQ * LD;                  // [2][BRQ][LD]
    float* Ls = dOs + 2 * BRQ * LD;                  // [2][BRQ]
    float* Ds = Ls + 2 * BRQ;                        // [2][BRQ]

    const int nkt = (S + BCK - 1) / BCK, nqt = (S + BRQ - 1) / BRQ;
    int b, kt;
    mg_block_tile<CAUSAL>(nkt, B, b, kt);               // causal: rank 0 = key tile 0, most work
    const int k0 = kt * BCK;
    const size_t off = (size_t)b * S * D;
    const float *q = Q + off, *k = K + off, *v = V + off, *dout = dO + off;
    const float *lse = LSE + (size_t)b * S, *ddp = Dd + (size_t)b * S;
    const int qt0 = CAUSAL ? k0 / BRQ : 0;

    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int klo = 16 * w + rho(g), khi = klo + 8;  // block-local keys of m = g, g + 8
    const bool vec = (D & 3) == 0 && mg_aligned16(Q) && mg_aligned16(K) && mg_aligned16(V) && mg_aligned16(dO);
    const int nch = (D + 15) >> 4, ngr = (D + 31) >> 5;
    const float sl2 = scale * LOG2E;

    float dk[NO][4], dv[NO][4];
#pragma unroll
    for (int i = 0; i < NO; ++i) {
        dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = 0.f;
        dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0.f;
    }

    load_pairs<RowPairs<8>, BCK / 2, DP, LDA, NT>(Ks, k, k0, S, D);
    load_pairs<RowPairs<8>, BCK / 2, DP, LDA, NT>(Vs, v, k0, S, D);
    if (qt0 < nqt) {
        mg_load_rows<BRQ, DP, LD, NT>(Qs, q, qt0 * BRQ, S, D, vec);
        mg_load_rows<BRQ, DP, LD, NT>(dOs, dout, qt0 * BRQ, S, D, vec);
        load_vec(Ls, lse, qt0 * BRQ, S, BRQ, 0);
        load_vec(Ds, ddp, qt0 * BRQ, S, BRQ, BRQ);
    }
    mg_cp_async_commit();

    for (int qt = qt0; qt < nqt; ++qt) {
        const int r0 = qt * BRQ, buf = (qt - qt0) & 1;
        mg_cp_async_wait<0>();
        __syncthreads();
        if (qt + 1 < nqt) {
            const int nb = buf ^ 1;
            mg_load_rows<BRQ, DP, LD, NT>(Qs + nb * BRQ * LD, q, r0 + BRQ, S, D, vec);
            mg_load_rows<BRQ, DP, LD, NT>(dOs + nb * BRQ * LD, dout, r0 + BRQ, S, D, vec);
            load_vec(Ls + nb * BRQ, lse, r0 + BRQ, S, BRQ, 0);
            load_vec(Ds + nb * BRQ, ddp, r0 + BRQ, S, BRQ, BRQ);
        }
        mg_cp_async_commit();
        if (CAUSAL && r0 + BRQ - 1 < k0 + 16 * w) continue;   // every query before every key

        const float* qs = Qs + buf * BRQ * LD;
        const float* dos = dOs + buf * BRQ * LD;
        float st[NJ][4], dpt[NJ][4];
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.f;
            dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.f;
        }
        gemm_rr<NJ, DP, LD>(st, Ks + (8 * w + g) * LDA, qs, g, t, nch);     // S^T = K.Q^T
        gemm_rr<NJ, DP, LD>(dpt, Vs + (8 * w + g) * LDA, dos, g, t, nch);   // dP^T = V.dO^T
        const bool mask = r0 + BRQ > S || (CAUSAL && r0 < k0 + 16 * w + 15);
        const unsigned keep = DROP ? keep_k<NJ>(drop, b, k0 + klo, r0, t) : 0u;
        const float* ls = Ls + buf * BRQ;
        const float* ds = Ds + buf * BRQ;
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int x = 0; x < 2; ++x) {
                const int qi = 8 * j + t + 4 * x;        // query within the tile
                const float l2 = ls[qi] * LOG2E, dq = ds[qi];
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int e = 2 * hh + x;
                    float p = mg_ex2(fmaf(st[j][e], sl2, -l2));
                    if (mask) {
                        const int qry = r0 + qi, key = k0 + (hh ? khi : klo);
                        if (qry >= S || (CAUSAL && qry < key)) p = 0.f;
                    }
                    float d = dpt[j][e];
                    float pv = p;
                    if (DROP) {
                        const bool kp = (keep >> (4 * j + e)) & 1u;
                        d = kp ? d * drop.rp : 0.f;
                        pv = kp ? p * drop.rp : 0.f;
                    }
                    st[j][e] = pv;
                    dpt[j][e] = p * (d - dq);
                }
            }
        gemm_pm<NJ, DP, LD>(dv, st, dos, g, t, ngr);     // dV += P^T.dO
        gemm_pm<NJ, DP, LD>(dk, dpt, qs, g, t, ngr);     // dK += dS^T.Q
    }
    mg_cp_async_wait<0>();
    const bool vec_out = (D & 3) == 0 && mg_aligned16(dK) && mg_aligned16(dV);
    store_rows<DP>(dV + off, dv, 1.f, 1.f, k0 + klo, k0 + khi, S, D, t, vec_out);
    store_rows<DP>(dK + off, dk, scale, scale, k0 + klo, k0 + khi, S, D, t, vec_out);
}

}  // namespace fa3

// ------------------------------------------------------------------------- entry points --
extern "C" __global__ void __launch_bounds__(256)
flash_tf32_bwd_preprocess(const float* __restrict__ dO, const float* __restrict__ O,
                          float* __restrict__ Dd, long long rows, int D) {
    mg_attn_bwd_preprocess(dO, O, Dd, rows, D);
}

// Combines the key ranges of the tail tiles (fa3::TailSplit): one warp per row of a tail
// tile; rows_per_tile = 16 NW of the forward that wrote o_part / l_part.  LSE may be NULL.
constexpr int FA3_MAX_PARTS = 8;
extern "C" __global__ void __launch_bounds__(256)
flash_tf32_merge(const float* __restrict__ o_part, const float* __restrict__ l_part,
                 float* __restrict__ O, float* __restrict__ LSE, int S, int D, int rows_per_tile,
                 int first, int ntail, int parts) {
    const long long gw = (long long)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31, br = rows_per_tile, nqt = (S + br - 1) / br;
    if (gw >= (long long)ntail * br) return;
    const int j = (int)(gw / br), r = (int)(gw % br), tile = first + j;
    const int b = tile / nqt, row = (tile % nqt) * br + r;
    if (row >= S) return;
    float lp[FA3_MAX_PARTS], lmax = 0.f, wsum = 1.f;
#pragma unroll
    for (int p = 0; p < FA3_MAX_PARTS; ++p) lp[p] = 1.f;   // l_part NULL (dQ): a plain sum
    if (l_part != nullptr) {
        lmax = -fa3::inf();
        wsum = 0.f;
#pragma unroll
        for (int p = 0; p < FA3_MAX_PARTS; ++p)
            if (p < parts) {
                lp[p] = l_part[((size_t)p * ntail + j) * br + r];
                lmax = fmaxf(lmax, lp[p]);
            }
#pragma unroll
        for (int p = 0; p < FA3_MAX_PARTS; ++p)
            if (p < parts) {
                lp[p] = expf(lp[p] - lmax);          // now the weight of part p, before 1/sum
                wsum += lp[p];
            }
    }
    const float inv = 1.f / wsum;
    float* orow = O + ((size_t)b * S + row) * D;
    for (int d = lane; d < D; d += 32) {
        float acc = 0.f;
#pragma unroll
        for (int p = 0; p < FA3_MAX_PARTS; ++p)
            if (p < parts) acc = fmaf(lp[p], o_part[(((size_t)p * ntail + j) * br + r) * D + d], acc);
        orow[d] = acc * inv;
    }
    if (LSE != nullptr && l_part != nullptr && lane == 0) LSE[(size_t)b * S + row] = lmax + logf(wsum);
}

// (DP, NW) instances; REGFIT: the instance fits 128 registers per thread (see min_blocks)
#define FA3_LB(NW, SMEM, REGFIT) __launch_bounds__(32 * NW, fa3::min_blocks(SMEM, REGFIT))
#define FA3_KERNELS_PLAIN(DP, NW, FIT_FWD, FIT_BWD)                                                   \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_fwd<DP, NW>()), FIT_FWD)                       \
    flash_tf32_fwd_d##DP##_w##NW(const float* q, const float* k, const float* v, float* o,          \
                                 float* lse, int B, int S, int D, float scale, int split_first,     \
                                 int split_parts, float* o_part, float* l_part) {                   \
        fa3::fwd<DP, NW, false>(q, k, v, o, lse, B, S, D, scale, fa3::DropArgs{},                   \
                                fa3::TailSplit{split_first, split_parts, o_part, l_part});          \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_fwd<DP, NW>()), FIT_FWD)                       \
    flash_tf32_fwd_causal_d##DP##_w##NW(const float* q, const float* k, const float* v, float* o,   \
                                        float* lse, int B, int S, int D, float scale) {             \
        fa3::fwd<DP, NW, true>(q, k, v, o, lse, B, S, D, scale);                                    \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_lse<DP, NW>()), true)                          \
    flash_tf32_lse_d##DP##_w##NW(const float* q, const float* k, float* lse, int B, int S, int D,   \
                                 float scale) {                                                      \
        fa3::fwd<DP, NW, false, false>(q, k, nullptr, nullptr, lse, B, S, D, scale);                \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_lse<DP, NW>()), true)                          \
    flash_tf32_lse_causal_d##DP##_w##NW(const float* q, const float* k, float* lse, int B, int S,   \
                                        int D, float scale) {                                        \
        fa3::fwd<DP, NW, true, false>(q, k, nullptr, nullptr, lse, B, S, D, scale);                 \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_dq<DP, NW>()), FIT_BWD)                        \
    flash_tf32_bwd_dq_d##DP##_w##NW(const float* q, const float* k, const float* v,                 \
                                    const float* dO, const float* lse, const float* Dd, float* dQ,  \
                                    int B, int S, int D, float scale, int split_first,               \
                                    int split_parts, float* dq_part) {                               \
        fa3::bwd_dq<DP, NW, false>(q, k, v, dO, lse, Dd, dQ, B, S, D, scale, fa3::DropArgs{},       \
                                   fa3::TailSplit{split_first, split_parts, dq_part, nullptr});      \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_dq<DP, NW>()), FIT_BWD)                        \
    flash_tf32_bwd_dq_causal_d##DP##_w##NW(const float* q, const float* k, const float* v,          \
                                           const float* dO, const float* lse, const float* Dd,      \
                                           float* dQ, int B, int S, int D, float scale) {           \
        fa3::bwd_dq<DP, NW, true>(q, k, v, dO, lse, Dd, dQ, B, S, D, scale);                        \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_dkdv<DP, NW>()), FIT_BWD)                      \
    flash_tf32_bwd_dkdv_d##DP##_w##NW(const float* q, const float* k, const float* v,               \
                                      const float* dO, const float* lse, const float* Dd,           \
                                      float* dK, float* dV, int B, int S, int D, float scale) {     \
        fa3::bwd_dkdv<DP, NW, false>(q, k, v, dO, lse, Dd, dK, dV, B, S, D, scale);                 \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_dkdv<DP, NW>()), FIT_BWD)                      \
    flash_tf32_bwd_dkdv_causal_d##DP##_w##NW(const float* q, const float* k, const float* v,        \
                                             const float* dO, const float* lse, const float* Dd,    \
                                             float* dK, float* dV, int B, int S, int D,             \
                                             float scale) {                                          \
        fa3::bwd_dkdv<DP, NW, true>(q, k, v, dO, lse, Dd, dK, dV, B, S, D, scale);                  \
    }
#define FA3_KERNELS_DROP(DP, NW, FIT_FWD, FIT_BWD)                                                    \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_fwd<DP, NW>()), FIT_FWD)                       \
    flash_tf32_fwd_dropout_d##DP##_w##NW(const float* q, const float* k, const float* v, float* o,  \
                                         float* lse, int B, int S, int D, float scale,              \
                                         int split_first, int split_parts, float* o_part,           \
                                         float* l_part, fa3::DropArgs drop) {                        \
        fa3::fwd<DP, NW, false, true, true>(q, k, v, o, lse, B, S, D, scale, drop,                  \
                                            fa3::TailSplit{split_first, split_parts, o_part, l_part}); \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_fwd<DP, NW>()), FIT_FWD)                       \
    flash_tf32_fwd_causal_dropout_d##DP##_w##NW(const float* q, const float* k, const float* v,     \
                                                float* o, float* lse, int B, int S, int D,          \
                                                float scale, fa3::DropArgs drop) {                  \
        fa3::fwd<DP, NW, true, true, true>(q, k, v, o, lse, B, S, D, scale, drop);                  \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_dq<DP, NW>()), FIT_BWD)                        \
    flash_tf32_bwd_dq_dropout_d##DP##_w##NW(const float* q, const float* k, const float* v,         \
                                            const float* dO, const float* lse, const float* Dd,     \
                                            float* dQ, int B, int S, int D, float scale,            \
                                            int split_first, int split_parts, float* dq_part,       \
                                            fa3::DropArgs drop) {                                    \
        fa3::bwd_dq<DP, NW, false, true>(q, k, v, dO, lse, Dd, dQ, B, S, D, scale, drop,            \
                                         fa3::TailSplit{split_first, split_parts, dq_part, nullptr}); \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_dq<DP, NW>()), FIT_BWD)                        \
    flash_tf32_bwd_dq_causal_dropout_d##DP##_w##NW(const float* q, const float* k, const float* v,  \
                                                   const float* dO, const float* lse,               \
                                                   const float* Dd, float* dQ, int B, int S, int D, \
                                                   float scale, fa3::DropArgs drop) {               \
        fa3::bwd_dq<DP, NW, true, true>(q, k, v, dO, lse, Dd, dQ, B, S, D, scale, drop);            \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_dkdv<DP, NW>()), FIT_BWD)                      \
    flash_tf32_bwd_dkdv_dropout_d##DP##_w##NW(const float* q, const float* k, const float* v,       \
                                              const float* dO, const float* lse, const float* Dd,   \
                                              float* dK, float* dV, int B, int S, int D,            \
                                              float scale, fa3::DropArgs drop) {                    \
        fa3::bwd_dkdv<DP, NW, false, true>(q, k, v, dO, lse, Dd, dK, dV, B, S, D, scale, drop);     \
    }                                                                                                \
    extern "C" __global__ void FA3_LB(NW, (fa3::smem_dkdv<DP, NW>()), FIT_BWD)                      \
    flash_tf32_bwd_dkdv_causal_dropout_d##DP##_w##NW(const float* q, const float* k,                \
                                                     const float* v, const float* dO,               \
                                                     const float* lse, const float* Dd, float* dK,  \
                                                     float* dV, int B, int S, int D, float scale,   \
                                                     fa3::DropArgs drop) {                           \
        fa3::bwd_dkdv<DP, NW, true, true>(q, k, v, dO, lse, Dd, dK, dV, B, S, D, scale, drop);      \
    }
#if !defined(FA3_DROPOUT) || FA3_DROPOUT == 0
#define FA3_INST(DP, NW, FIT_FWD, FIT_BWD) FA3_KERNELS_PLAIN(DP, NW, FIT_FWD, FIT_BWD)
#else
#define FA3_INST(DP, NW, FIT_FWD, FIT_BWD)
#endif
#if !defined(FA3_DROPOUT) || FA3_DROPOUT == 1
#define FA3_INST_DROP(DP, NW, FIT_FWD, FIT_BWD) FA3_KERNELS_DROP(DP, NW, FIT_FWD, FIT_BWD)
#else
#define FA3_INST_DROP(DP, NW, FIT_FWD, FIT_BWD)
#endif
#define FA3_ALL(DP, NW, FIT_FWD, FIT_BWD) FA3_INST(DP, NW, FIT_FWD, FIT_BWD) FA3_INST_DROP(DP, NW, FIT_FWD, FIT_BWD)
#if !defined(FA3_ONLY_DP) || FA3_ONLY_DP == 32
FA3_ALL(32, 4, true, true)
FA3_ALL(32, 8, false, false)
#endif
#if !defined(FA3_ONLY_DP) || FA3_ONLY_DP == 64
FA3_ALL(64, 4, true, true)
FA3_ALL(64, 8, false, false)
#endif
#if !defined(FA3_ONLY_DP) || FA3_ONLY_DP == 128
FA3_ALL(128, 8, false, false)
#endif

static_assert(fa3::smem_fwd<32, 4>() == 46080 && fa3::smem_fwd<32, 8>() == 55296 &&
              fa3::smem_fwd<64, 4>() == 87040 && fa3::smem_fwd<64, 8>() == 104448 &&
              fa3::smem_fwd<128, 8>() == 202752, "fwd smem table");
static_assert(fa3::smem_lse<32, 4>() == 27648 && fa3::smem_lse<32, 8>() == 36864 &&
              fa3::smem_lse<64, 4>() == 52224 && fa3::smem_lse<64, 8>() == 69632 &&
              fa3::smem_lse<128, 8>() == 135168, "lse smem table");
static_assert(fa3::smem_dq<32, 4>() == 55296 && fa3::smem_dq<32, 8>() == 73728 &&
              fa3::smem_dq<64, 4>() == 104448 && fa3::smem_dq<64, 8>() == 139264 &&
              fa3::smem_dq<128, 8>() == 202752, "dq smem table");
static_assert(fa3::smem_dkdv<32, 4>() == 56320 && fa3::smem_dkdv<32, 8>() == 74752 &&
              fa3::smem_dkdv<64, 4>() == 105472 && fa3::smem_dkdv<64, 8>() == 140288 &&
              fa3::smem_dkdv<128, 8>() == 203264, "dkdv smem table");
