// flash_attention.cu - FlashAttention-2-style f32 attention, forward (+ log-sum-exp
// statistics) and a three-kernel backward without atomics, for the ops attention_flash,
// attention_flash_causal and their backward (OPS.md, "Attention family"). Any sm_80+.
//
// MATH (per slice b; all f32, plain FFMA - no tensor cores, no TF32)
//   scale = 1/sqrt(D) (the host passes f32(1/sqrt(D)));  s_ij = scale * q_i . k_j
//   causal masks key j > query i.  Forward: out_i = sum_j softmax_j(s_i.) v_j,
//   L_i = logsumexp_j s_ij.   Backward (OPS.md):
//     P_ij = exp(s_ij - L_i),  D_i = sum_d dO_id O_id,  dV_j = sum_i P_ij dO_i,
//     dS_ij = P_ij (dO_i . v_j - D_i),  dK_j = scale sum_i dS_ij q_i,  dQ_i = scale sum_j dS_ij k_j.
//   Exponentials run in base 2: scores are scaled by scale*log2(e) and exp2 is the
//   hardware ex2.approx (rel. error ~2^-22); L is converted back to natural log.
//
// LAYOUT
//   q, k, v, o, dO, dQ, dK, dV: f32 [B, S, D] contiguous (row stride D, slice stride S*D);
//   B = every leading batch/head dim flattened, each slice independent, one launch for all.
//   L (log-sum-exp) and Dd (preprocess output): f32 [B, S].  1 <= D <= 256, S >= 1.
//   Kernels are templated on a padded head dim DP in {32, 64, 128, 256}: the host picks the
//   smallest DP >= D (D = 16 -> DP 32, D = 100 -> DP 128). Columns D..DP-1 are zero-filled
//   in shared memory and never stored.  16-byte cp.async loads / float4 stores are used when
//   D % 4 == 0 and the pointers are 16-byte aligned (checked in the kernel); otherwise
//   4-byte cp.async / scalar stores (any D, any 4-byte alignment).
//
// ENTRY POINTS (extern "C"; X = d32 | d64 | d128 | d256;  C = "" | "_causal")
//   flash_attention_fwd{C}_{X}(const float* q, const float* k, const float* v, float* o,
//                              float* lse, int B, int S, int D, float scale)      "PPPPPiiif"
//       lse == NULL: plain forward;  lse != NULL: the _with_stats forward (same o, also L).
//   flash_attention_lse{C}_{X}(const float* q, const float* k, float* lse,
//                              int B, int S, int D, float scale)                  "PPPiiif"
//       L only (Q.K^T and the online max/sum, no P.V, no V read): bit-identical to the
//       lse of the _with_stats forward at about half its cost - all the backward needs.
//       Same grid/block as fwd; shared memory 4*(64 + BC)*(DP + 4) bytes (fwd's BC).
//   flash_attention_bwd_preprocess(const float* dO, const float* o, float* Dd,
//                                  long long rows, int D)                           "PPPqi"
//       rows = B*S.  block (256,1,1), grid (ceil(rows/8),1,1), no shared memory.
//   flash_attention_bwd_dkdv{C}_{X}(const float* q, const float* k, const float* v,
//       const float* dO, const float* lse, const float* Dd, float* dK, float* dV,
//       int B, int S, int D, float scale)                                           "PPPPPPPPiiif"
//   flash_attention_bwd_dq{C}_{X}(const float* q, const float* k, const float* v,
//       const float* dO, const float* lse, const float* Dd, float* dQ,
//       int B, int S, int D, float scale)                                           "PPPPPPPiiif"
//   ATTENTION DROPOUT (an extension beyond OPS.md): flash_attention_{fwd,bwd_dq,bwd_dkdv}
//   {C}_dropout_{X} take the arguments above plus one struct fa::DropArgs (Philox round keys
//   of the 64-bit seed, keep threshold, f32 1/(1-p): format "I"*15 + "f").  P = softmax(S)
//   and L as without dropout; keep-mask M_ij = u16(seed, b, i, j) >= thr (keep_bits below);
//   fwd: out_i = sum_j P_ij M_ij/(1-p) v_j;  dkdv: dV_j = sum_i P_ij M_ij/(1-p) dO_i;
//   dkdv, dq: dS_ij = P_ij (M_ij/(1-p) dO_i.v_j - D_i) (D_i = dO_i.O_i with the dropped O).
//   The mask is a pure function of (seed, b, i, j), so every kernel regenerates it alike;
//   NumPy mirror: reference.dropout_keep.  The _dropout kernels are separate template
//   instances (DROP = true): without dropout the kernels compile to the same code as before.
//   -DFA_DROPOUT=0 builds only the kernels without dropout, =1 only the _dropout ones (and
//   the preprocess); undefined: both (57 kernels).
//   Backward order: L (the _with_stats fwd, or the lse kernel) -> preprocess -> dkdv -> dq
//   (dq and dkdv are independent of each other; both need L and Dd: the host runs dq on a
//   second stream beside dkdv).  Every output element
//   is written exactly once by one block (no atomics, deterministic).
//   Build option: -DFA_ONLY_DP=64 (etc.) instantiates the kernels of one DP only (the full
//   file holds 33 kernels without dropout and takes NVRTC tens of seconds; a runtime may compile per DP).
//
// LAUNCH RULES (fwd, lse, dkdv, dq): block (128,1,1); grid (ntiles * B, 1, 1) where
//   fwd, lse, dq : ntiles = ceil(S / 64)         (a block owns 64 query rows)
//   dkdv    : ntiles = ceil(S / BCK)             (a block owns BCK keys; table below)
//   dynamic shared memory = the bytes in the table; the host must first raise
//   CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES to that value when it exceeds 48 KB
//   (PyCUDA: f.set_attribute(function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, n)).
//       DP | fwd: BC  bytes   blk | dq: BC  bytes   blk | dkdv: BCK BRQ bytes  blk
//       32 |     64   44032   3   |     64  54272   3   |       64  32  46080  3
//       64 |     64   68608   3   |     32  61440   3   |       64  64 104448  2
//      128 |     32   76288   3   |     32 110592   2   |       32  32  76800  3
//      256 |     32  141824   1   |     16 171520   1   |       32  32 142336  1
//   lse: 4*(64 + BC)*(DP+4) = 18432 / 34816 / 50688 / 99840 bytes for DP 32 / 64 / 128 / 256.
//   (blk = blocks per SM the kernel is built for: __launch_bounds__(128, blk).)
//   formulas (floats * 4): fwd  64*(DP+4) + BC*(DP+4) + BC*DP + 64*(BC+4)
//                          dq   2*64*(DP+4) + 2*BC*(DP+4) + 64*(BC+4)
//                          dkdv 2*BCK*(DP+4) + 2*BRQ*(DP+4) + 2*BCK*(BRQ+4)
//   (the same numbers are compiled in as fa::smem_{fwd,dq,dkdv}<DP>()).
//
// ALGORITHM AND TILES (why)
//   128 threads = 4 warps; thread t has row group rg = 4*warp + (lane>>3) (0..15) and
//   column group cg = lane&7.  Score tiles are computed SGEMM-style with register blocking:
//   a thread owns rows {rg + 16*i} x columns {cg + 8*j} of a [rows x keys] tile, so one
//   d-chunk step loads 4 float4 of the row operand + TN float4 of the column operand from
//   shared memory for 16*TN FFMA (TN = 8: 12 LDS.128 per 128 FFMA).  Output tiles
//   ([rows x DP]) are owned as rows {rg+16i} x float4 chunks {cg + 8*jj}: for a P.V-type
//   product a thread loads 4 float4 of P (one per row) and DP/32 float4 of V per key.
//   Every shared row is padded by 4 floats (16 B) so that the 8 distinct row addresses
//   of one warp-wide LDS.128 fall into 8 different 16-byte bank groups (rows r and the
//   chunk c land in group (r + c) mod 8), and all 32 lanes of a warp touch at most 8
//   distinct 16-byte words: one shared-memory wavefront per LDS.128.
//   Row statistics: the 8 lanes of a row group share a row; max via 3 xor-shuffles.
//   fwd   : a block owns 64 query rows; Q in shared memory for the whole loop; K/V tiles
//           of BC keys streamed with cp.async into single buffers in the order that lets
//           each load overlap the other phase (K(j+1) lands during P.V(j), V(j+1) during
//           Q.K(j+1)).  Online softmax: running max m, running partial sum l (reduced
//           across the 8 lanes only at the end), O rescaled by exp2(m_old - m_new).
//           Causal: key tiles past the block's last row are skipped, the diagonal tile is
//           masked; blocks are issued heaviest first, across groups of 8 slices when a
//           slice has >= 8 tiles (mg_block_tile, common.cuh; dq and dkdv likewise).
//           out = O / l; L = (m + log2 l) ln 2.
//   dq    : a block owns 64 query rows (Q, dO resident); per key tile: dP = dO.V^T,
//           S = Q.K^T, dS = P (dP - D) -> shared, dQ += dS.K.  Same streaming as fwd.
//   dkdv  : a block owns BCK keys (K, V resident) and its dK, dV accumulators; per query
//           tile of BRQ rows: dP = dO.V^T, S = Q.K^T, P and dS written transposed to
//           shared, dV += P^T.dO, dK += dS^T.Q.  dO(i+1) is loaded during the dK product,
//           Q(i+1) during the next dP product.  Causal: query tiles before the key tile
//           are skipped.  Padded query rows get L = +inf (P = 0); padded keys are masked.
//   Masked or padded scores are -inf before the exponent, so they contribute exactly 0.
//   A fully masked row cannot occur (key 0 is visible to every query; S = Sq = Sk).
#include "common.cuh"

namespace fa {

constexpr int NT = 128;          // threads per block (4 warps)
constexpr int BR = 64;           // query rows per block (fwd, dq)
constexpr float LOG2E = 1.4426950408889634f;
__device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }   // NVRTC has no INFINITY
constexpr float LN2 = 0.6931471805599453f;

// Tile configuration per padded head dim: key tile of the forward (FWD_BC) and of the dq
// pass (DQ_BC); key tile (KV_BC) and query tile (KV_BR) of the dkdv pass.  The blocks per
// SM given to __launch_bounds__ follow from the shared-memory footprint (at most 3, which
// caps registers at 168 per thread).  FA_CFG_<DP> "FWD_BC, DQ_BC, KV_BC, KV_BR" may be
// defined at compile time to try other tiles (tuning only; the launch table below then
// no longer applies).  FA_ALT_TILES selects the alternative set that the standalone harness
// times with --variants.
#ifdef FA_ALT_TILES
#define FA_TUNING
#define FA_CFG_64 32, 64, 64, 32
#define FA_CFG_128 32, 32, 32, 64
#endif
#ifndef FA_CFG_32
#define FA_CFG_32 64, 64, 64, 32
#endif
#ifndef FA_CFG_64
#define FA_CFG_64 64, 32, 64, 64
#endif
#ifndef FA_CFG_128
#define FA_CFG_128 32, 32, 32, 32
#endif
#ifndef FA_CFG_256
#define FA_CFG_256 32, 16, 32, 32
#endif
template <int FB, int QB, int KB, int KR>
struct CfgT { static constexpr int FWD_BC = FB, DQ_BC = QB, KV_BC = KB, KV_BR = KR; };
template <int DP> struct Cfg;
template <> struct Cfg<32> : CfgT<FA_CFG_32> {};
template <> struct Cfg<64> : CfgT<FA_CFG_64> {};
template <> struct Cfg<128> : CfgT<FA_CFG_128> {};
template <> struct Cfg<256> : CfgT<FA_CFG_256> {};

template <int DP> __host__ __device__ constexpr int smem_fwd() {
    return 4 * (BR * (DP + 4) + Cfg<DP>::FWD_BC * (DP + 4) + Cfg<DP>::FWD_BC * DP
                + BR * (Cfg<DP>::FWD_BC + 4));
}
template <int DP> __host__ __device__ constexpr int smem_lse() {
    return 4 * (BR + Cfg<DP>::FWD_BC) * (DP + 4);
}
template <int DP> __host__ __device__ constexpr int smem_dq() {
    return 4 * (2 * BR * (DP + 4) + 2 * Cfg<DP>::DQ_BC * (DP + 4) + BR * (Cfg<DP>::DQ_BC + 4));
}
template <int DP> __host__ __device__ constexpr int smem_dkdv() {
    return 4 * (2 * Cfg<DP>::KV_BC * (DP + 4) + 2 * Cfg<DP>::KV_BR * (DP + 4)
                + 2 * Cfg<DP>::KV_BC * (Cfg<DP>::KV_BR + 4));
}
// blocks per SM that fit 228 KB of shared memory (1 KB reserved per block), capped at 3
__host__ __device__ constexpr int min_blocks(int smem) {
    return (233472 / (smem + 1024)) < 3 ? (233472 / (smem + 1024)) : 3;
}

__device__ __forceinline__ void fma4(float4& acc, float a, const float4& b) {
    acc.x = fmaf(a, b.x, acc.x); acc.y = fmaf(a, b.y, acc.y);
    acc.z = fmaf(a, b.z, acc.z); acc.w = fmaf(a, b.w, acc.w);
}
__device__ __forceinline__ float dot4(const float4& a, const float4& b, float acc) {
    acc = fmaf(a.x, b.x, acc); acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc); return fmaf(a.w, b.w, acc);
}

// acc[i][j] += A[ra + 16 i, :] . Bm[cb + 8 j, :] over d in [0, nd4*4)   (nd4: multiple of 4)
// A: shared [*, LDA], Bm: shared [*, LDB]; ra = row group, cb = column group.
template <int TM, int TN, int LDA, int LDB>
__device__ __forceinline__ void gemm_nt(float (&acc)[TM][TN], const float* A, const float* Bm,
                                        int nd4) {
    for (int f0 = 0; f0 < nd4; f0 += 4) {
#pragma unroll
        for (int f = f0; f < f0 + 4; ++f) {
            float4 a[TM];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = *reinterpret_cast<const float4*>(A + 16 * i * LDA + 4 * f);
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const float4 b = *reinterpret_cast<const float4*>(Bm + 8 * j * LDB + 4 * f);
#pragma unroll
                for (int i = 0; i < TM; ++i) acc[i][j] = dot4(a[i], b, acc[i][j]);
            }
        }
    }
}

// acc[i][jj] += sum_c P[ra + 16 i, c] * M[c, 4*(cg + 8 jj) .. +3]  over c in [0, NC)
// P: shared, pointer already at row ra, stride LDP; M: shared, pointer already at column
// 4*cg, row stride LDM.
template <int TM, int TD, int NC, int LDP, int LDM>
__device__ __forceinline__ void gemm_pv(float4 (&acc)[TM][TD], const float* P, const float* M) {
#pragma unroll 2
    for (int c4 = 0; c4 < NC / 4; ++c4) {
        float4 p[TM];
#pragma unroll
        for (int i = 0; i < TM; ++i) p[i] = *reinterpret_cast<const float4*>(P + 16 * i * LDP + 4 * c4);
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) {
#pragma unroll
            for (int jj = 0; jj < TD; ++jj) {
                const float4 m = *reinterpret_cast<const float4*>(M + (4 * c4 + cc) * LDM + 32 * jj);
#pragma unroll
                for (int i = 0; i < TM; ++i) fma4(acc[i][jj], mg_comp(p[i], cc), m);
            }
        }
    }
}

// Stores rows [row0 + ra + 16 i] (< S) of acc * mul into out [S, D] at float4 chunks cg + 8 jj.
template <int TM, int TD>
__device__ __forceinline__ void store_rows(float* out, const float4 (&acc)[TM][TD], const float (&mul)[TM],
                                           int row0, int ra, int cg, int S, int D, bool vec) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int r = row0 + ra + 16 * i;
        if (r >= S) continue;
        float* orow = out + (size_t)r * D;
#pragma unroll
        for (int jj = 0; jj < TD; ++jj) {
            const int d = 4 * (cg + 8 * jj);
            float4 v = acc[i][jj];
            v.x *= mul[i]; v.y *= mul[i]; v.z *= mul[i]; v.w *= mul[i];
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


// ------------------------------------------------------------------ attention dropout --
// Dropout arguments and the Philox-4x32-7 generator: MgDropArgs and mg_philox7 in common.cuh.
using DropArgs = MgDropArgs;

// Keep bits of the dropout mask for a thread's [TM x TN] score tile: rows row + 16 i, keys
// key + 8 j (row = tile row0 + rg with row0 a multiple of 32; key = k0 + cg); bit i*TN + j.
// Element (b, i, j) is kept iff u16(b, i, j) >= thr, u16 = 16 bits of one Philox call on
// counter (j & ~24, i & ~16, b) under key = seed: word 2*((i >> 4) & 1) + ((j >> 4) & 1),
// low half when ((j >> 3) & 1) == 0, else high half.  One call thus serves the 8 elements
// {i, i+16} x {j, j+8, j+16, j+24} that one thread owns in every kernel - a pure function
// of (seed, b, i, j), independent of the tiling.
template <int TM, int TN>
__device__ __forceinline__ unsigned keep_bits(const DropArgs& dr, int b, int row, int key) {
    static_assert(TM % 2 == 0 && TM * TN <= 32, "keep_bits: row pairs, one 32-bit word");
    const int coff = TN >= 4 ? 0 : (key >> 3) & 3;   // key tile of 16: which half of a group
    unsigned bits = 0u;
#pragma unroll
    for (int ip = 0; ip < TM / 2; ++ip) {
#pragma unroll
        for (int jq = 0; jq < (TN + 3) / 4; ++jq) {
            const int r = row + 32 * ip, c = key + 32 * jq;
            const uint4 h = mg_philox7((unsigned)c & ~24u, (unsigned)r & ~16u, (unsigned)b, dr);
#pragma unroll
            for (int ii = 0; ii < 2; ++ii)
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) {
                    if (4 * jq + jj >= TN) continue;
                    const int cs = coff + jj;
                    const unsigned w = ii ? ((cs & 2) ? h.w : h.z) : ((cs & 2) ? h.y : h.x);
                    const unsigned u = (cs & 1) ? (w >> 16) : (w & 0xffffu);
                    bits |= (u >= dr.thr ? 1u : 0u) << ((2 * ip + ii) * TN + 4 * jq + jj);
                }
        }
    }
    return bits;
}

// ------------------------------------------------------------------------------ forward --
template <int DP, bool CAUSAL, bool PV = true, bool DROP = false>
__device__ __forceinline__ void fwd(const float* __restrict__ Q, const float* __restrict__ K,
                                    const float* __restrict__ V, float* __restrict__ O,
                                    float* __restrict__ LSE, int B, int S, int D, float scale,
                                    const DropArgs& drop = DropArgs{}) {
    static_assert(PV || !DROP, "dropout needs the P.V product");
    constexpr int BC = Cfg<DP>::FWD_BC;
    constexpr int LDQ = DP + 4, LDK = DP + 4, LDV = DP, LDP = BC + 4;
    constexpr int TM = BR / 16, TN = BC / 8, TD = DP / 32;
    extern __shared__ float4 fa_smem[];
    float* Qs = reinterpret_cast<float*>(fa_smem);
    float* Ks = Qs + BR * LDQ;
    float* Vs = Ks + BC * LDK;
    float* Ps = Vs + BC * LDV;

    const int nqt = (S + BR - 1) / BR, nkt_all = (S + BC - 1) / BC;
    int b, qt;
    mg_block_tile<CAUSAL>(nqt, B, b, qt);
    if (CAUSAL) qt = nqt - 1 - qt;                  // rank 0 = the last tile, most work
    const int q0 = qt * BR;
    const size_t off = (size_t)b * S * D;
    const float *q = Q + off, *k = K + off, *v = PV ? V + off : nullptr;
    const int nkt = CAUSAL ? min(nkt_all, (q0 + BR - 1) / BC + 1) : nkt_all;

    const int tid = threadIdx.x, lane = tid & 31;
    const int cg = lane & 7, rg = (tid >> 5) * 4 + (lane >> 3);
    const bool vec = (D & 3) == 0 && mg_aligned16(Q) && mg_aligned16(K) && (!PV || mg_aligned16(V));
    const int nd4 = ((D + 15) / 16) * 4;            // float4 chunks actually used (<= DP/4)
    const float sl2 = scale * LOG2E;

    float4 o[TM][TD];
    float m[TM], l[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        m[i] = -inf(); l[i] = 0.f;
#pragma unroll
        for (int jj = 0; jj < TD; ++jj) o[i][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
    }

    mg_load_rows<BR, DP, LDQ, NT>(Qs, q, q0, S, D, vec);
    mg_load_rows<BC, DP, LDK, NT>(Ks, k, 0, S, D, vec);
    mg_cp_async_commit();
    if (PV) mg_load_rows<BC, DP, LDV, NT>(Vs, v, 0, S, D, vec);
    mg_cp_async_commit();

    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * BC;
        mg_cp_async_wait<1>();                      // K(kt) (and Q) landed
        __syncthreads();
        float s[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) s[i][j] = 0.f;
        gemm_nt<TM, TN, LDQ, LDK>(s, Qs + rg * LDQ, Ks + cg * LDK, nd4);
        const unsigned keep = DROP ? keep_bits<TM, TN>(drop, b, q0 + rg, k0 + cg) : 0u;

        if (k0 + BC > S || (CAUSAL && k0 + BC - 1 > q0)) {
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) {
                    const int key = k0 + cg + 8 * j, row = q0 + rg + 16 * i;
                    if (key >= S || (CAUSAL && key > row)) s[i][j] = -inf();
                }
        }
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            float mx = s[i][0];
#pragma unroll
            for (int j = 1; j < TN; ++j) mx = fmaxf(mx, s[i][j]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            const float mnew = fmaxf(m[i], mx * sl2);
            const float mu = mnew == -inf() ? 0.f : mnew;
            const float alpha = mg_ex2(m[i] - mu);
            float rs = 0.f;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const float p = mg_ex2(fmaf(s[i][j], sl2, -mu));
                s[i][j] = p;
                rs += p;
            }
            l[i] = fmaf(l[i], alpha, rs);
            m[i] = mnew;
            if (PV) {
#pragma unroll
                for (int jj = 0; jj < TD; ++jj) {
                    o[i][jj].x *= alpha; o[i][jj].y *= alpha; o[i][jj].z *= alpha; o[i][jj].w *= alpha;
                }
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    Ps[(rg + 16 * i) * LDP + cg + 8 * j] =
                        DROP && !((keep >> (i * TN + j)) & 1u) ? 0.f : s[i][j];
            }
        }
        __syncthreads();                            // Ks free, Ps visible
        if (kt + 1 < nkt) mg_load_rows<BC, DP, LDK, NT>(Ks, k, k0 + BC, S, D, vec);
        mg_cp_async_commit();
        if (PV) {
            mg_cp_async_wait<1>();                  // V(kt) landed
            __syncthreads();
            gemm_pv<TM, TD, BC, LDP, LDV>(o, Ps + rg * LDP, Vs + 4 * cg);
            __syncthreads();                        // Vs, Ps free
            if (kt + 1 < nkt) mg_load_rows<BC, DP, LDV, NT>(Vs, v, k0 + BC, S, D, vec);
        }
        mg_cp_async_commit();
    }
    mg_cp_async_wait<0>();

    float inv[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        float t = l[i];
        t += __shfl_xor_sync(0xffffffffu, t, 1);
        t += __shfl_xor_sync(0xffffffffu, t, 2);
        t += __shfl_xor_sync(0xffffffffu, t, 4);
        l[i] = t;
        inv[i] = DROP ? drop.rp / t : 1.f / t;
    }
    if (PV) {
        const bool vec_out = (D & 3) == 0 && mg_aligned16(O);
        store_rows<TM, TD>(O + off, o, inv, q0, rg, cg, S, D, vec_out);
    }
    if (LSE != nullptr && cg == 0) {
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int r = q0 + rg + 16 * i;
            if (r < S) LSE[(size_t)b * S + r] = (m[i] + log2f(l[i])) * LN2;
        }
    }
}

// ------------------------------------------------------------------------- backward: dq --
template <int DP, bool CAUSAL, bool DROP = false>
__device__ __forceinline__ void bwd_dq(const float* __restrict__ Q, const float* __restrict__ K,
                                       const float* __restrict__ V, const float* __restrict__ dO,
                                       const float* __restrict__ LSE, const float* __restrict__ Dd,
                                       float* __restrict__ dQ, int B, int S, int D, float scale,
                                       const DropArgs& drop = DropArgs{}) {
    constexpr int BC = Cfg<DP>::DQ_BC;
    constexpr int LDQ = DP + 4, LDK = DP + 4, LDS_ = BC + 4;
    constexpr int TM = BR / 16, TN = BC / 8, TD = DP / 32;
    extern __shared__ float4 fa_smem[];
    float* Qs = reinterpret_cast<float*>(fa_smem);
    float* dOs = Qs + BR * LDQ;
    float* Ks = dOs + BR * LDQ;
    float* Vs = Ks + BC * LDK;
    float* dSs = Vs + BC * LDK;

    const int nqt = (S + BR - 1) / BR, nkt_all = (S + BC - 1) / BC;
    int b, qt;
    mg_block_tile<CAUSAL>(nqt, B, b, qt);
    if (CAUSAL) qt = nqt - 1 - qt;                  // rank 0 = the last tile, most work
    const int q0 = qt * BR;
    const size_t off = (size_t)b * S * D;
    const float *q = Q + off, *k = K + off, *v = V + off, *dout = dO + off;
    const int nkt = CAUSAL ? min(nkt_all, (q0 + BR - 1) / BC + 1) : nkt_all;

    const int tid = threadIdx.x, lane = tid & 31;
    const int cg = lane & 7, rg = (tid >> 5) * 4 + (lane >> 3);
    const bool vec = (D & 3) == 0 && mg_aligned16(Q) && mg_aligned16(K) && mg_aligned16(V) && mg_aligned16(dO);
    const int nd4 = ((D + 15) / 16) * 4;
    const float sl2 = scale * LOG2E;

    float l2[TM], dd[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int r = q0 + rg + 16 * i;
        l2[i] = r < S ? LSE[(size_t)b * S + r] * LOG2E : inf();
        dd[i] = r < S ? Dd[(size_t)b * S + r] : 0.f;
    }
    float4 acc[TM][TD];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int jj = 0; jj < TD; ++jj) acc[i][jj] = make_float4(0.f, 0.f, 0.f, 0.f);

    mg_load_rows<BR, DP, LDQ, NT>(Qs, q, q0, S, D, vec);
    mg_load_rows<BR, DP, LDQ, NT>(dOs, dout, q0, S, D, vec);
    mg_load_rows<BC, DP, LDK, NT>(Vs, v, 0, S, D, vec);
    mg_cp_async_commit();
    mg_load_rows<BC, DP, LDK, NT>(Ks, k, 0, S, D, vec);
    mg_cp_async_commit();

    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * BC;
        float dp[TM][TN], s[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) { dp[i][j] = 0.f; s[i][j] = 0.f; }
        mg_cp_async_wait<1>();                      // V(kt) (and Q, dO)
        __syncthreads();
        gemm_nt<TM, TN, LDQ, LDK>(dp, dOs + rg * LDQ, Vs + cg * LDK, nd4);
        if (DROP) {                                 // dP = M/(1-p) dO.v  (mask dead before S)
            const unsigned keep = keep_bits<TM, TN>(drop, b, q0 + rg, k0 + cg);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    dp[i][j] = (keep >> (i * TN + j)) & 1u ? dp[i][j] * drop.rp : 0.f;
        }
        mg_cp_async_wait<0>();                      // K(kt)
        __syncthreads();
        gemm_nt<TM, TN, LDQ, LDK>(s, Qs + rg * LDQ, Ks + cg * LDK, nd4);
        const bool mask = k0 + BC > S || (CAUSAL && k0 + BC - 1 > q0);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                float x = s[i][j];
                if (mask) {
                    const int key = k0 + cg + 8 * j, row = q0 + rg + 16 * i;
                    if (key >= S || (CAUSAL && key > row)) x = -inf();
                }
                const float p = mg_ex2(fmaf(x, sl2, -l2[i]));
                dSs[(rg + 16 * i) * LDS_ + cg + 8 * j] = p * (dp[i][j] - dd[i]);
            }
        __syncthreads();                            // dS visible, Vs free
        if (kt + 1 < nkt) mg_load_rows<BC, DP, LDK, NT>(Vs, v, k0 + BC, S, D, vec);
        mg_cp_async_commit();
        gemm_pv<TM, TD, BC, LDS_, LDK>(acc, dSs + rg * LDS_, Ks + 4 * cg);
        __syncthreads();                            // Ks, dSs free
        if (kt + 1 < nkt) mg_load_rows<BC, DP, LDK, NT>(Ks, k, k0 + BC, S, D, vec);
        mg_cp_async_commit();
    }
    mg_cp_async_wait<0>();
    float mul[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) mul[i] = scale;
    const bool vec_out = (D & 3) == 0 && mg_aligned16(dQ);
    store_rows<TM, TD>(dQ + off, acc, mul, q0, rg, cg, S, D, vec_out);
}

// ----------------------------------------------------------------------- backward: dkdv --
template <int DP, bool CAUSAL, bool DROP = false>
__device__ __forceinline__ void bwd_dkdv(const float* __restrict__ Q, const float* __restrict__ K,
                                         const float* __restrict__ V, const float* __restrict__ dO,
                                         const float* __restrict__ LSE, const float* __restrict__ Dd,
                                         float* __restrict__ dK, float* __restrict__ dV,
                                         int B, int S, int D, float scale,
                                         const DropArgs& drop = DropArgs{}) {
    constexpr int BCK = Cfg<DP>::KV_BC, BRQ = Cfg<DP>::KV_BR;
    constexpr int LDX = DP + 4, LDT = BRQ + 4;
    constexpr int TM = BRQ / 16, TN = BCK / 8;      // score tile [BRQ x BCK]
    constexpr int KM = BCK / 16, TD = DP / 32;      // dK/dV tile [BCK x DP]
    extern __shared__ float4 fa_smem[];
    float* Ks = reinterpret_cast<float*>(fa_smem);
    float* Vs = Ks + BCK * LDX;
    float* Qs = Vs + BCK * LDX;
    float* dOs = Qs + BRQ * LDX;
    float* PT = dOs + BRQ * LDX;
    float* dST = PT + BCK * LDT;

    const int nkt = (S + BCK - 1) / BCK, nqt = (S + BRQ - 1) / BRQ;
    int b, kt;
    mg_block_tile<CAUSAL>(nkt, B, b, kt);           // causal: rank 0 = key tile 0, most work
    const int k0 = kt * BCK;
    const size_t off = (size_t)b * S * D;
    const float *q = Q + off, *k = K + off, *v = V + off, *dout = dO + off;
    const float *lse = LSE + (size_t)b * S, *ddp = Dd + (size_t)b * S;
    const int qt0 = CAUSAL ? k0 / BRQ : 0;

    const int tid = threadIdx.x, lane = tid & 31;
    const int cg = lane & 7, rg = (tid >> 5) * 4 + (lane >> 3);
    const bool vec = (D & 3) == 0 && mg_aligned16(Q) && mg_aligned16(K) && mg_aligned16(V) && mg_aligned16(dO);
    const int nd4 = ((D + 15) / 16) * 4;
    const float sl2 = scale * LOG2E;

    float4 dk[KM][TD], dv[KM][TD];
#pragma unroll
    for (int i = 0; i < KM; ++i)
#pragma unroll
        for (int jj = 0; jj < TD; ++jj) {
            dk[i][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
            dv[i][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
        }

    mg_load_rows<BCK, DP, LDX, NT>(Ks, k, k0, S, D, vec);
    mg_load_rows<BCK, DP, LDX, NT>(Vs, v, k0, S, D, vec);
    mg_load_rows<BRQ, DP, LDX, NT>(dOs, dout, qt0 * BRQ, S, D, vec);
    mg_cp_async_commit();
    mg_load_rows<BRQ, DP, LDX, NT>(Qs, q, qt0 * BRQ, S, D, vec);
    mg_cp_async_commit();

    for (int qt = qt0; qt < nqt; ++qt) {
        const int r0 = qt * BRQ;
        float l2[TM], dd[TM];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int r = r0 + rg + 16 * i;
            l2[i] = r < S ? lse[r] * LOG2E : inf();
            dd[i] = r < S ? ddp[r] : 0.f;
        }
        float dp[TM][TN], s[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) { dp[i][j] = 0.f; s[i][j] = 0.f; }
        mg_cp_async_wait<1>();                      // dO(qt) (and K, V)
        __syncthreads();
        gemm_nt<TM, TN, LDX, LDX>(dp, dOs + rg * LDX, Vs + cg * LDX, nd4);
        mg_cp_async_wait<0>();                      // Q(qt)
        __syncthreads();
        gemm_nt<TM, TN, LDX, LDX>(s, Qs + rg * LDX, Ks + cg * LDX, nd4);
        const unsigned keep = DROP ? keep_bits<TM, TN>(drop, b, r0 + rg, k0 + cg) : 0u;
        const bool mask = k0 + BCK > S || (CAUSAL && k0 + BCK - 1 > r0);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                float x = s[i][j];
                if (mask) {
                    const int key = k0 + cg + 8 * j, row = r0 + rg + 16 * i;
                    if (key >= S || (CAUSAL && key > row)) x = -inf();
                }
                const float p = mg_ex2(fmaf(x, sl2, -l2[i]));
                const int t = (cg + 8 * j) * LDT + rg + 16 * i;
                if (DROP) {                          // dV uses P M/(1-p); dP = M/(1-p) dO.v
                    const bool kp = (keep >> (i * TN + j)) & 1u;
                    PT[t] = kp ? p * drop.rp : 0.f;
                    dST[t] = p * ((kp ? dp[i][j] * drop.rp : 0.f) - dd[i]);
                } else {
                    PT[t] = p;
                    dST[t] = p * (dp[i][j] - dd[i]);
                }
            }
        __syncthreads();                            // PT, dST visible
        gemm_pv<KM, TD, BRQ, LDT, LDX>(dv, PT + rg * LDT, dOs + 4 * cg);
        __syncthreads();                            // dOs free
        if (qt + 1 < nqt) mg_load_rows<BRQ, DP, LDX, NT>(dOs, dout, r0 + BRQ, S, D, vec);
        mg_cp_async_commit();
        gemm_pv<KM, TD, BRQ, LDT, LDX>(dk, dST + rg * LDT, Qs + 4 * cg);
        __syncthreads();                            // Qs, PT, dST free
        if (qt + 1 < nqt) mg_load_rows<BRQ, DP, LDX, NT>(Qs, q, r0 + BRQ, S, D, vec);
        mg_cp_async_commit();
    }
    mg_cp_async_wait<0>();
    float one[KM], sc[KM];
#pragma unroll
    for (int i = 0; i < KM; ++i) { one[i] = 1.f; sc[i] = scale; }
    const bool vec_out = (D & 3) == 0 && mg_aligned16(dK) && mg_aligned16(dV);
    store_rows<KM, TD>(dV + off, dv, one, k0, rg, cg, S, D, vec_out);
    store_rows<KM, TD>(dK + off, dk, sc, k0, rg, cg, S, D, vec_out);
}

}  // namespace fa

// ------------------------------------------------------------------------- entry points --
extern "C" __global__ void __launch_bounds__(256)
flash_attention_bwd_preprocess(const float* __restrict__ dO, const float* __restrict__ O,
                               float* __restrict__ Dd, long long rows, int D) {
    mg_attn_bwd_preprocess(dO, O, Dd, rows, D);
}

#define FA_FWD(NAME, DP, CAUSAL)                                                                \
    extern "C" __global__ void __launch_bounds__(fa::NT, fa::min_blocks(fa::smem_fwd<DP>()))                \
    NAME(const float* q, const float* k, const float* v, float* o, float* lse,                 \
         int B, int S, int D, float scale) {                                                   \
        fa::fwd<DP, CAUSAL>(q, k, v, o, lse, B, S, D, scale);                                  \
    }
#define FA_LSE(NAME, DP, CAUSAL)                                                                \
    extern "C" __global__ void __launch_bounds__(fa::NT, fa::min_blocks(fa::smem_lse<DP>()))   \
    NAME(const float* q, const float* k, float* lse, int B, int S, int D, float scale) {       \
        fa::fwd<DP, CAUSAL, false>(q, k, nullptr, nullptr, lse, B, S, D, scale);               \
    }
#define FA_DQ(NAME, DP, CAUSAL)                                                                 \
    extern "C" __global__ void __launch_bounds__(fa::NT, fa::min_blocks(fa::smem_dq<DP>()))                 \
    NAME(const float* q, const float* k, const float* v, const float* dO, const float* lse,    \
         const float* Dd, float* dQ, int B, int S, int D, float scale) {                       \
        fa::bwd_dq<DP, CAUSAL>(q, k, v, dO, lse, Dd, dQ, B, S, D, scale);                      \
    }
#define FA_DKDV(NAME, DP, CAUSAL)                                                               \
    extern "C" __global__ void __launch_bounds__(fa::NT, fa::min_blocks(fa::smem_dkdv<DP>()))                 \
    NAME(const float* q, const float* k, const float* v, const float* dO, const float* lse,    \
         const float* Dd, float* dK, float* dV, int B, int S, int D, float scale) {            \
        fa::bwd_dkdv<DP, CAUSAL>(q, k, v, dO, lse, Dd, dK, dV, B, S, D, scale);                \
    }
#define FA_DROP_ARGS fa::DropArgs drop
#define FA_FWD_DROP(NAME, DP, CAUSAL)                                                           \
    extern "C" __global__ void __launch_bounds__(fa::NT, fa::min_blocks(fa::smem_fwd<DP>()))   \
    NAME(const float* q, const float* k, const float* v, float* o, float* lse,                 \
         int B, int S, int D, float scale, FA_DROP_ARGS) {                                     \
        fa::fwd<DP, CAUSAL, true, true>(q, k, v, o, lse, B, S, D, scale, drop);                \
    }
#define FA_DQ_DROP(NAME, DP, CAUSAL)                                                            \
    extern "C" __global__ void __launch_bounds__(fa::NT, fa::min_blocks(fa::smem_dq<DP>()))    \
    NAME(const float* q, const float* k, const float* v, const float* dO, const float* lse,    \
         const float* Dd, float* dQ, int B, int S, int D, float scale, FA_DROP_ARGS) {         \
        fa::bwd_dq<DP, CAUSAL, true>(q, k, v, dO, lse, Dd, dQ, B, S, D, scale, drop);          \
    }
#define FA_DKDV_DROP(NAME, DP, CAUSAL)                                                          \
    extern "C" __global__ void __launch_bounds__(fa::NT, fa::min_blocks(fa::smem_dkdv<DP>()))  \
    NAME(const float* q, const float* k, const float* v, const float* dO, const float* lse,    \
         const float* Dd, float* dK, float* dV, int B, int S, int D, float scale,              \
         FA_DROP_ARGS) {                                                                       \
        fa::bwd_dkdv<DP, CAUSAL, true>(q, k, v, dO, lse, Dd, dK, dV, B, S, D, scale, drop);    \
    }
#if !defined(FA_DROPOUT) || FA_DROPOUT == 0
#define FA_PLAIN_KERNELS(DP)                                                                    \
    FA_FWD(flash_attention_fwd_d##DP, DP, false)                                               \
    FA_FWD(flash_attention_fwd_causal_d##DP, DP, true)                                         \
    FA_LSE(flash_attention_lse_d##DP, DP, false)                                               \
    FA_LSE(flash_attention_lse_causal_d##DP, DP, true)                                         \
    FA_DQ(flash_attention_bwd_dq_d##DP, DP, false)                                             \
    FA_DQ(flash_attention_bwd_dq_causal_d##DP, DP, true)                                       \
    FA_DKDV(flash_attention_bwd_dkdv_d##DP, DP, false)                                         \
    FA_DKDV(flash_attention_bwd_dkdv_causal_d##DP, DP, true)
#else
#define FA_PLAIN_KERNELS(DP)
#endif
#if !defined(FA_DROPOUT) || FA_DROPOUT == 1
#define FA_DROP_KERNELS(DP)                                                                     \
    FA_FWD_DROP(flash_attention_fwd_dropout_d##DP, DP, false)                                  \
    FA_FWD_DROP(flash_attention_fwd_causal_dropout_d##DP, DP, true)                            \
    FA_DQ_DROP(flash_attention_bwd_dq_dropout_d##DP, DP, false)                                \
    FA_DQ_DROP(flash_attention_bwd_dq_causal_dropout_d##DP, DP, true)                          \
    FA_DKDV_DROP(flash_attention_bwd_dkdv_dropout_d##DP, DP, false)                            \
    FA_DKDV_DROP(flash_attention_bwd_dkdv_causal_dropout_d##DP, DP, true)
#else
#define FA_DROP_KERNELS(DP)
#endif
#define FA_ALL(DP) FA_PLAIN_KERNELS(DP) FA_DROP_KERNELS(DP)
#if !defined(FA_ONLY_DP) || FA_ONLY_DP == 32
FA_ALL(32)
#endif
#if !defined(FA_ONLY_DP) || FA_ONLY_DP == 64
FA_ALL(64)
#endif
#if !defined(FA_ONLY_DP) || FA_ONLY_DP == 128
FA_ALL(128)
#endif
#if !defined(FA_ONLY_DP) || FA_ONLY_DP == 256
FA_ALL(256)
#endif

#ifndef FA_TUNING
static_assert(fa::smem_fwd<32>() == 44032 && fa::smem_fwd<64>() == 68608 &&
              fa::smem_fwd<128>() == 76288 && fa::smem_fwd<256>() == 141824, "fwd smem table");
static_assert(fa::smem_dq<32>() == 54272 && fa::smem_dq<64>() == 61440 &&
              fa::smem_dq<128>() == 110592 && fa::smem_dq<256>() == 171520, "dq smem table");
static_assert(fa::smem_lse<32>() == 18432 && fa::smem_lse<64>() == 34816 &&
              fa::smem_lse<128>() == 50688 && fa::smem_lse<256>() == 99840, "lse smem table");
static_assert(fa::smem_dkdv<32>() == 46080 && fa::smem_dkdv<64>() == 104448 &&
              fa::smem_dkdv<128>() == 76800 && fa::smem_dkdv<256>() == 142336, "dkdv smem table");
#endif
