// attention_tc.cu - attention with f16 tensor-core products and an exactly normalised,
// f16-rounded probability matrix, for the ops attention_tc and attention_tc_causal
// (OPS.md, "Attention family"). Any sm_80+ (mma.sync.m16n8k16, ldmatrix, cp.async).
//
// MATH (per slice b)
//   s_ij = f32(q_i . k_j) * scale   (f16 products summed in f32 by the tensor cores;
//                                     the host passes scale = f32(1/sqrt(Dk)))
//   causal: s_ij = -inf for key j > query i (top-left aligned, also when Sq != Sk)
//   m_i = max_j s_ij,  l_i = sum_j exp(s_ij - m_i)        (f32)
//   p_ij = f16( exp(s_ij - m_i) / l_i )                     (P rounded to f16 before P.V)
//   out_i = sum_j p_ij * v_j                                (f16 products, f32 sum) -> f32
//   This is the NumPy oracle reference.attention_tc (softmax in f32, P cast to f16, f32
//   P.V).  exp is computed as ex2.approx(s*log2e - m*log2e) (rel. error ~2^-22), so a p
//   that lies within ~1e-6 relative of an f16 rounding boundary may round the other way
//   (one f16 ulp); everything else follows the oracle's rounding steps.
//
// DESIGN: "materialised" scores without an O(S^2) buffer: two passes over the keys in one
//   kernel.  Pass 1 computes S = Q.K^T tile by tile and keeps only the row max m and the
//   row sum l (online: l rescaled when m grows).  Pass 2 recomputes each S tile with the
//   same instructions (bit-identical scores), forms the exactly normalised P, rounds it to
//   f16 in registers and multiplies by V.  Costs one extra Q.K^T (3 instead of 2 products)
//   but never writes scores to memory, so any Sq, Sk >= 1 work (Sk of 4096 and more) with
//   a fixed shared-memory footprint.  The full score row of a query block is thus visited
//   exactly as OPS.md asks (max and sum over the whole row before any P is formed).
//
// LAYOUT
//   q f16 [B, Sq, Dk], k f16 [B, Sk, Dk] (not pre-transposed), v f16 [B, Sk, Dv],
//   out f32 [B, Sq, Dv]; all contiguous; B = leading batch/head dims flattened (each slice
//   independent, one launch).  Any Sq, Sk >= 1; 1 <= Dk, Dv <= 256.
//   Kernels are templated on DP in {32, 64, 128, 256}: the host picks the smallest
//   DP >= max(Dk, Dv).  Columns past Dk / Dv are zero-filled in shared memory; keys past
//   Sk are masked to -inf; rows past Sq are computed but not stored.  16-byte cp.async
//   loads are used when Dk % 8 == 0, Dv % 8 == 0 and q, k, v are 16-byte aligned;
//   otherwise 2-byte loads (any sizes, 2-byte alignment).
//
// ENTRY POINTS (extern "C"; X = 32 | 64 | 128 | 256; all take the same arguments)
//   attention_tc_dX(const u16* q, const u16* k, const u16* v, float* out,
//                   int B, int Sq, int Sk, int Dk, int Dv, float scale)        "PPPPiiiiif"
//   attention_tc_causal_dX(...)
//   attention_tc_split_dX(...), attention_tc_causal_split_dX(...)   same results; for small
//       grids (see below): a block owns 32 rows and two warps share each row tile, each
//       taking half of every key tile; the partial row max / row sum (after pass 1) and
//       the partial outputs (after pass 2) are merged in shared memory.
//
// LAUNCH RULES
//   block (128,1,1); grid (ceil(Sq/64) * B, 1, 1)  (split: ceil(Sq/32) * B); dynamic shared
//   memory (bytes):
//       DP  |  BC  | plain  | split
//       32  |  64  |  25600 |  23552
//       64  |  64  |  46080 |  41984
//      128  |  64  |  87040 |  78848      (> 48 KB: raise the limit first, see below)
//      256  |  32  | 101376 |  84992      (> 48 KB)
//   formula: 2*(R*(DP+8) + 4*BC*(DP+8)) (+ 512 for split), R = 64 plain, 32 split
//   (Q tile + two stages of K and V tiles; split adds the [2][2][32] f32 merge buffer).
//   Choose split when ceil(Sq/64) * B < 2 * (number of SMs): it doubles the blocks and
//   halves the key walk of each warp, which is what a small grid is short of.
//   Build option: -DATC_ONLY_DP=64 (etc.) instantiates the kernels of one DP only.
//   For sizes above 48 KB the host must call cuFuncSetAttribute(f,
//   CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes) once per function
//   (PyCUDA: f.set_attribute(function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)).
//
// ALGORITHM AND TILES
//   4 warps; a block owns 64 query rows, a warp 16 (one m16 row tile) [split: 32 rows,
//   warps w and w+2 own the same 16 rows and the two halves of each key tile].  Keys are walked in
//   tiles of BC (64; 32 for DP 256) through a two-stage cp.async pipeline: the tile of
//   step t+1 is copied while step t computes (steps 0..nkt-1 = pass 1, K only;
//   nkt..2nkt-1 = pass 2, K and V).  Q.K^T: Q fragments come from ldmatrix (kept in
//   registers for DP <= 128, re-read from shared memory for DP 256), K fragments from
//   ldmatrix (K stored [key][d] is exactly the .col B operand), mma.m16n8k16 f16->f32.
//   Row statistics use the accumulator layout (each row lives in 4 lanes: 2 shuffles).
//   P.V: the f32 accumulator tile of two adjacent n8 score tiles is, element for
//   element, the A fragment of one k16 step, so P goes registers -> cvt.rn.f16x2 -> mma
//   without shared memory; V fragments come from ldmatrix.trans ([key][dv] storage).
//   Shared rows are padded by 16 bytes (row stride DP+8 halves), so the 8 row addresses
//   of each ldmatrix phase hit 8 different 16-byte bank groups.
//   Causal: key tiles past the block's last row are skipped in both passes; blocks are
//   issued heaviest first, across groups of 8 slices when a slice has >= 8 query tiles
//   (mg_block_tile, common.cuh).  A fully masked row cannot occur (key 0 is visible to all).
#include "common.cuh"

namespace atc {

typedef unsigned short u16;
constexpr int NT = 128, BR = 64;
constexpr float LOG2E = 1.4426950408889634f;
__device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }   // NVRTC has no INFINITY

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr int MINB64 = 3;   // sm_8x's allocation needs a register more than 128 at DP 64
#else
constexpr int MINB64 = 4;
#endif
template <int DP> struct Cfg {
    static constexpr int BC = 64, MINB = DP == 32 ? 4 : DP == 64 ? MINB64 : 2, MINB_KS2 = MINB;
};
template <> struct Cfg<256> { static constexpr int BC = 32, MINB = 1, MINB_KS2 = 2; };

// KS = 1: 4 warps x 16 rows = 64 rows per block, each warp over whole key tiles.
// KS = 2: 2 warps x 16 rows = 32 rows per block; warps 2,3 take the second half of every key
//         tile (same rows as warps 0,1); partial (m, l) and partial O are merged in shared memory.
template <int DP, int KS> __host__ __device__ constexpr int smem_bytes() {
    return 2 * ((BR / KS) * (DP + 8) + 4 * Cfg<DP>::BC * (DP + 8)) + (KS > 1 ? 4 * 2 * KS * (BR / KS) : 0);
}

__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int DP, bool CAUSAL, int KS>
__device__ __forceinline__ void attention(const u16* __restrict__ Q, const u16* __restrict__ K,
                                          const u16* __restrict__ V, float* __restrict__ O,
                                          int B, int Sq, int Sk, int Dk, int Dv, float scale) {
    constexpr int BC = Cfg<DP>::BC, LD = DP + 8;
    constexpr int BRB = BR / KS;          // query rows per block
    constexpr int BCW = BC / KS;          // keys of a tile handled by one warp
    constexpr int NKK = DP / 16;          // k16 steps of Q.K^T
    constexpr int NS = BCW / 8;           // n8 score tiles per warp
    constexpr int NO = DP / 8;            // n8 output tiles per warp
    constexpr bool QREG = DP <= 128;
    extern __shared__ __align__(16) u16 atc_smem[];
    u16* Qs = atc_smem;
    u16* Kst = Qs + BRB * LD;             // 2 stages of K
    u16* Vst = Kst + 2 * BC * LD;         // 2 stages of V
    float* red = reinterpret_cast<float*>(Vst + 2 * BC * LD);   // KS > 1: [2][KS][BRB] m, l

    const int nqt = (Sq + BRB - 1) / BRB, nkt_all = (Sk + BC - 1) / BC;
    int b, qt;
    mg_block_tile<CAUSAL>(nqt, B, b, qt);
    if (CAUSAL) qt = nqt - 1 - qt;                  // rank 0 = the last tile, most work
    const int q0 = qt * BRB;
    const u16* q = Q + (size_t)b * Sq * Dk;
    const u16* k = K + (size_t)b * Sk * Dk;
    const u16* v = V + (size_t)b * Sk * Dv;
    float* o = O + (size_t)b * Sq * Dv;
    const int nkt = CAUSAL ? min(nkt_all, (q0 + BRB - 1) / BC + 1) : nkt_all;
    const int T = 2 * nkt;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int rw = warp % (4 / KS);                  // row warp: rows rw*16 .. +15 of the block
    const int kh = warp / (4 / KS);                  // key part: keys kh*BCW .. +BCW-1 of a tile
    const int wrow = q0 + rw * 16;                   // first query row of this warp
    const bool vec = (Dk & 7) == 0 && (Dv & 7) == 0 && mg_aligned16(Q) && mg_aligned16(K) && mg_aligned16(V);
    const float sl2 = scale * LOG2E;

    // ldmatrix lane offsets (in halves)
    const int mi = lane >> 3, mr = lane & 7;
    const int a_off = (rw * 16 + (mi & 1) * 8 + mr) * LD + (mi >> 1) * 8;    // Q (A operand)
    const int k_off = (kh * BCW + (mi >> 1) * 8 + mr) * LD + (mi & 1) * 8;    // K (B, non-trans)
    const int v_off = (kh * BCW + (mi & 1) * 8 + mr) * LD + (mi >> 1) * 8;    // V (B, trans)

    mg_load_rows<BRB, DP, LD, NT>(Qs, q, q0, Sq, Dk, vec);
    mg_load_rows<BC, DP, LD, NT>(Kst, k, 0, Sk, Dk, vec);
    mg_cp_async_commit();

    unsigned qa[QREG ? NKK : 1][4];
    float oacc[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;
    float m2[2] = {-inf(), -inf()}, l[2] = {0.f, 0.f}, inv[2];

    for (int t = 0; t < T; ++t) {
        const bool pass2 = t >= nkt;
        const int kt = pass2 ? t - nkt : t;
        const int st = t & 1;
        if (t + 1 < T) {                              // prefetch step t+1 into the other stage
            const int t1 = t + 1, kt1 = t1 >= nkt ? t1 - nkt : t1;
            mg_load_rows<BC, DP, LD, NT>(Kst + (t1 & 1) * BC * LD, k, kt1 * BC, Sk, Dk, vec);
            if (t1 >= nkt)
                mg_load_rows<BC, DP, LD, NT>(Vst + (t1 & 1) * BC * LD, v, kt1 * BC, Sk, Dv, vec);
        }
        mg_cp_async_commit();
        mg_cp_async_wait<1>();
        __syncthreads();
        if (QREG && t == 0) {
#pragma unroll
            for (int kk = 0; kk < (QREG ? NKK : 1); ++kk)
                mg_ldmatrix_x4(qa[kk], mg_smem_addr(Qs + a_off + kk * 16));
        }
        if (pass2 && t == nkt) {                      // pass 1 done: final row sums
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float x = l[h];
                x += __shfl_xor_sync(0xffffffffu, x, 1);
                x += __shfl_xor_sync(0xffffffffu, x, 2);
                l[h] = x;
            }
            if (KS > 1) {                             // merge the partial (m, l) of the key parts
                if (t4 == 0) {
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int r = rw * 16 + g + 8 * h;
                        red[kh * BRB + r] = m2[h];
                        red[(KS + kh) * BRB + r] = l[h];
                    }
                }
                __syncthreads();
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = rw * 16 + g + 8 * h;
                    float mm = -inf();
#pragma unroll
                    for (int p = 0; p < KS; ++p) mm = fmaxf(mm, red[p * BRB + r]);
                    const float mu = mm == -inf() ? 0.f : mm;
                    float ll = 0.f;
#pragma unroll
                    for (int p = 0; p < KS; ++p) ll += red[(KS + p) * BRB + r] * mg_ex2(red[p * BRB + r] - mu);
                    m2[h] = mm;
                    l[h] = ll;
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                inv[h] = 1.f / l[h];
                if (m2[h] == -inf()) m2[h] = 0.f;     // unreachable (key 0 always visible)
            }
        }
        const u16* Ks = Kst + st * BC * LD;
        const u16* Vs = Vst + st * BC * LD;

        // ---- S = Q.K^T for this warp's 16 rows x BC keys
        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < NKK; ++kk) {
            unsigned a[4];
            if (QREG) { a[0] = qa[QREG ? kk : 0][0]; a[1] = qa[QREG ? kk : 0][1];
                        a[2] = qa[QREG ? kk : 0][2]; a[3] = qa[QREG ? kk : 0][3]; }
            else mg_ldmatrix_x4(a, mg_smem_addr(Qs + a_off + kk * 16));
#pragma unroll
            for (int nn = 0; nn < NS / 2; ++nn) {
                unsigned bf[4];
                mg_ldmatrix_x4(bf, mg_smem_addr(Ks + k_off + nn * 16 * LD + kk * 16));
                mma16816(s[2 * nn], a, bf[0], bf[1]);
                mma16816(s[2 * nn + 1], a, bf[2], bf[3]);
            }
        }
        // ---- mask keys past Sk and (causal) keys after the row
        const int k0 = kt * BC + kh * BCW;            // first key of this warp's part
        if (k0 + BCW > Sk || (CAUSAL && k0 + BCW - 1 > wrow)) {
#pragma unroll
            for (int n = 0; n < NS; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = k0 + 8 * n + 2 * t4 + (e & 1), row = wrow + g + 8 * (e >> 1);
                    if (key >= Sk || (CAUSAL && key > row)) s[n][e] = -inf();
                }
        }
        if (!pass2) {
            // ---- pass 1: online row max / row sum (rows g and g+8 of the warp tile)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = fmaxf(s[0][2 * h], s[0][2 * h + 1]);
#pragma unroll
                for (int n = 1; n < NS; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(m2[h], mx * sl2);
                const float mu = mnew == -inf() ? 0.f : mnew;
                float rs = 0.f;
#pragma unroll
                for (int n = 0; n < NS; ++n)
                    rs += mg_ex2(fmaf(s[n][2 * h], sl2, -mu)) + mg_ex2(fmaf(s[n][2 * h + 1], sl2, -mu));
                l[h] = fmaf(l[h], mg_ex2(m2[h] - mu), rs);
                m2[h] = mnew;
            }
        } else {
            // ---- pass 2: P = f16(exp(s - m) / l) straight into A fragments; O += P.V
#pragma unroll
            for (int kc = 0; kc < BCW / 16; ++kc) {
                unsigned pa[4];
                pa[0] = pack_f16x2(mg_ex2(fmaf(s[2 * kc][0], sl2, -m2[0])) * inv[0],
                                   mg_ex2(fmaf(s[2 * kc][1], sl2, -m2[0])) * inv[0]);
                pa[1] = pack_f16x2(mg_ex2(fmaf(s[2 * kc][2], sl2, -m2[1])) * inv[1],
                                   mg_ex2(fmaf(s[2 * kc][3], sl2, -m2[1])) * inv[1]);
                pa[2] = pack_f16x2(mg_ex2(fmaf(s[2 * kc + 1][0], sl2, -m2[0])) * inv[0],
                                   mg_ex2(fmaf(s[2 * kc + 1][1], sl2, -m2[0])) * inv[0]);
                pa[3] = pack_f16x2(mg_ex2(fmaf(s[2 * kc + 1][2], sl2, -m2[1])) * inv[1],
                                   mg_ex2(fmaf(s[2 * kc + 1][3], sl2, -m2[1])) * inv[1]);
#pragma unroll
                for (int nd = 0; nd < NO / 2; ++nd) {
                    unsigned bf[4];
                    mg_ldmatrix_x4_trans(bf, mg_smem_addr(Vs + v_off + kc * 16 * LD + nd * 16));
                    mma16816(oacc[2 * nd], pa, bf[0], bf[1]);
                    mma16816(oacc[2 * nd + 1], pa, bf[2], bf[3]);
                }
            }
        }
        __syncthreads();                              // stage st is free for step t+2
    }
    mg_cp_async_wait<0>();
    if (KS > 1) {                                     // sum the partial O of the key parts
        float* part = reinterpret_cast<float*>(Kst);  // stages are free: loop ended with a barrier
        constexpr int LDO = DP + 4;
        static_assert((KS - 1) * BRB * LDO * 4 <= 4 * BC * LD * 2, "partial O fits in the stages");
        if (kh > 0) {
#pragma unroll
            for (int n = 0; n < NO; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    part[((kh - 1) * BRB + rw * 16 + g + 8 * (e >> 1)) * LDO + 8 * n + 2 * t4 + (e & 1)] = oacc[n][e];
        }
        __syncthreads();
        if (kh > 0) return;
#pragma unroll
        for (int p = 0; p < KS - 1; ++p)
#pragma unroll
            for (int n = 0; n < NO; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    oacc[n][e] += part[(p * BRB + rw * 16 + g + 8 * (e >> 1)) * LDO + 8 * n + 2 * t4 + (e & 1)];
    }

    // ---- store rows < Sq, columns < Dv
    const bool v2 = (Dv & 1) == 0 && (reinterpret_cast<unsigned long long>(O) & 7ull) == 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = wrow + g + 8 * h;
        if (row >= Sq) continue;
        float* orow = o + (size_t)row * Dv;
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            const int c = 8 * n + 2 * t4;
            if (c >= Dv) continue;
            if (v2) {
                *reinterpret_cast<float2*>(orow + c) = make_float2(oacc[n][2 * h], oacc[n][2 * h + 1]);
            } else {
                orow[c] = oacc[n][2 * h];
                if (c + 1 < Dv) orow[c + 1] = oacc[n][2 * h + 1];
            }
        }
    }
}

}  // namespace atc

#define ATC_ENTRY(NAME, DP, CAUSAL, KS)                                                         \
    extern "C" __global__ void __launch_bounds__(atc::NT, KS == 1 ? atc::Cfg<DP>::MINB : atc::Cfg<DP>::MINB_KS2) \
    NAME(const unsigned short* q, const unsigned short* k, const unsigned short* v, float* out,\
         int B, int Sq, int Sk, int Dk, int Dv, float scale) {                                 \
        atc::attention<DP, CAUSAL, KS>(q, k, v, out, B, Sq, Sk, Dk, Dv, scale);                \
    }
#define ATC_ALL(DP)                                                                             \
    ATC_ENTRY(attention_tc_d##DP, DP, false, 1)                                                 \
    ATC_ENTRY(attention_tc_causal_d##DP, DP, true, 1)                                           \
    ATC_ENTRY(attention_tc_split_d##DP, DP, false, 2)                                           \
    ATC_ENTRY(attention_tc_causal_split_d##DP, DP, true, 2)
#if !defined(ATC_ONLY_DP) || ATC_ONLY_DP == 32
ATC_ALL(32)
#endif
#if !defined(ATC_ONLY_DP) || ATC_ONLY_DP == 64
ATC_ALL(64)
#endif
#if !defined(ATC_ONLY_DP) || ATC_ONLY_DP == 128
ATC_ALL(128)
#endif
#if !defined(ATC_ONLY_DP) || ATC_ONLY_DP == 256
ATC_ALL(256)
#endif

static_assert(atc::smem_bytes<32, 1>() == 25600 && atc::smem_bytes<64, 1>() == 46080 &&
              atc::smem_bytes<128, 1>() == 87040 && atc::smem_bytes<256, 1>() == 101376, "smem table");
static_assert(atc::smem_bytes<32, 2>() == 23552 && atc::smem_bytes<64, 2>() == 41984 &&
              atc::smem_bytes<128, 2>() == 78848 && atc::smem_bytes<256, 2>() == 84992, "smem table (split)");
