// weight_quant.cuh - the weight-quantized matmul templates shared by matmul_int4.cu and
// qkv_project.cu (namespace mwq): helpers, the int4/int8 weight decoders, and the gemv,
// mma.sync gemm and wgmma gemm kernels those files instantiate. Each including file
// states the contracts and host launch rules of its own entry points.
#pragma once
#include "common.cuh"   // cp.async, ldmatrix, shared addresses
#include "wgmma.cuh"    // wgmma fences, descriptors, instructions

namespace mwq {

typedef unsigned short u16;

// ------------------------------------------------------------------ helpers --
__device__ __forceinline__ void mma_f16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,
                                        unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// Streamed weights: read once, keep them out of L1 (the activations live there).
__device__ __forceinline__ uint4 ldg_stream(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ u16 ldg_u16(const u16* p) {
    u16 v;
    asm volatile("ld.global.nc.u16 %0, [%1];\n" : "=h"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned s) {
    return __byte_perm(a, b, s);
}
// f16x2 arithmetic with explicit IEEE round-to-nearest (never contracted, subnormals kept).
__device__ __forceinline__ unsigned hsub2(unsigned a, unsigned b) {
    unsigned d;
    asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ unsigned hfma2(unsigned a, unsigned b, unsigned c) {
    unsigned d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ unsigned hmul2(unsigned a, unsigned b) {
    unsigned d;
    asm("mul.rn.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u16 f32_to_f16(float v) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(h) : "f"(v));
    return h;
}

// int4 word (nibbles k0..k7, two's complement) -> exact f16x2 pairs
// p[0] = (q0,q4), p[1] = (q1,q5), p[2] = (q2,q6), p[3] = (q3,q7).
// (w & 0x000F000F) ^ 0x64086408 = 0x6400 | (nib ^ 8) = 1024 + q + 8 in each half; minus 1032.
// (w & 0x00F000F0) ^ 0x64806480 = 1024 + 16 (q + 8); times 1/16 minus 72. All exact.
__device__ __forceinline__ void i4_pairs(unsigned w, unsigned (&p)[4]) {
    const unsigned w8 = w >> 8;
    p[0] = hsub2((w & 0x000F000Fu) ^ 0x64086408u, 0x64086408u);
    p[1] = hfma2((w & 0x00F000F0u) ^ 0x64806480u, 0x2C002C00u, 0xD480D480u);
    p[2] = hsub2((w8 & 0x000F000Fu) ^ 0x64086408u, 0x64086408u);
    p[3] = hfma2((w8 & 0x00F000F0u) ^ 0x64806480u, 0x2C002C00u, 0xD480D480u);
}
// int8 word (bytes b0..b3) -> exact f16x2: byte b ^ 0x80 = b + 128 under 0x64 gives
// 1024 + b + 128; minus 1152. SEL picks the bytes: 0x4240 -> (b0,b2), 0x4341 -> (b1,b3),
// 0x4140 -> (b0,b1), 0x4342 -> (b2,b3).
template <unsigned SEL>
__device__ __forceinline__ unsigned i8_pair(unsigned w) {
    return hsub2(prmt(w ^ 0x80808080u, 0x64646464u, SEL), 0x64806480u);
}

// --------------------------------------------------------- weight formats --
// A weight row (one output column n) is K-contiguous in both formats; a thread's 16-byte
// chunk holds KCH consecutive k.
struct I4 {   // uint32 [N, K/8] + f16 scales [K/G, N]
    static constexpr int KCH = 32, KSHIFT = 1;   // byte of k in a row = k >> KSHIFT
    static constexpr bool SCALED = true;   // per-group f16 scales inside the weight
    static __device__ __forceinline__ long long row_bytes(long long /*ldw*/, int K) {
        return (long long)K / 2;
    }
};
struct I8 {   // int8 [N, ldw], ldw % 16 == 0; one f32 scale per tensor applied at the end
    static constexpr int KCH = 16, KSHIFT = 0;
    static constexpr bool SCALED = false;
    static __device__ __forceinline__ long long row_bytes(long long ldw, int /*K*/) { return ldw; }
};

// Everything a kernel needs, up to three projections (q, k, v) sharing x, N, K.
struct Args {
    const u16* x;
    const unsigned char* w[3];
    const u16* s[3];
    void* o[3];
    float sc[3];
    long long ldx, ldw, ldo;
    int M, N, K, gshift;
};

// The gemm epilogues: an accumulator pair -> output row element `at` + col, col + 1, scaled
// by sc unless the weights were dequantized with their scale (F::SCALED), in f16 or f32.
template <class F, bool F16OUT>
__device__ __forceinline__ void store_out(void* O, long long at, int col, int N, bool pair_ok,
                                          float sc, float v0, float v1) {
    if (!F::SCALED) {
        v0 = __fmul_rn(v0, sc);
        v1 = __fmul_rn(v1, sc);
    }
    if (F16OUT)
        mg_store2(reinterpret_cast<u16*>(O) + at, col, N, pair_ok, f32_to_f16(v0), f32_to_f16(v1));
    else
        mg_store2(reinterpret_cast<float*>(O) + at, col, N, pair_ok, v0, v1);
}

// a[i] for a run-time i in 0..2 without indexing (an indexed struct array goes to local memory).
template <class V>
__device__ __forceinline__ V pick3(const V (&a)[3], int i) {
    return i == 0 ? a[0] : (i == 1 ? a[1] : a[2]);
}

// Load 8 activations x[m, k..k+7] (f16) with k < K masking when the chunk is partial or
// when XV is false (element loads; any alignment).
// TAIL = false promises k + 8 <= K whenever k < K (int4: K % 32 == 0).
template <bool XV, bool TAIL = true>
__device__ __forceinline__ uint4 load_x8(const u16* row, int k, int K, bool ok) {
    if (!ok || k >= K) return make_uint4(0u, 0u, 0u, 0u);
    if (XV && (!TAIL || k + 8 <= K)) return __ldg(reinterpret_cast<const uint4*>(row + k));
    unsigned w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int e = 0; e < 8; ++e)
        if (k + e < K) w[e >> 1] |= (unsigned)__ldg(row + k + e) << (16 * (e & 1));
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// ================================================================= GEMV (decode) ==
constexpr int GV_WARPS = 8, GV_NT = 256;

template <class F, int R, int T>
struct GvW {                         // one superchunk's weights for one thread
    uint4 w[R][2];                   // rows g and g+8 of each row tile (16 bytes each)
    unsigned s2[R][2];               // (scale, scale) f16x2 (I4 only)
};
template <class F, int T>
struct GvX {                         // one superchunk's activations for one thread
    uint4 x[T][F::KCH / 8];          // token g + 8t, KCH activations
};

// NP projections x RT row tiles (16 rows each) per block; T token tiles (8 tokens each);
// D superchunks of weights in flight per warp (a ring of registers, compile-time indexed).
// XP: prefetch the next superchunk's activations (registers permitting) or load them just
// before use (L1/L2 hits: x is small and re-read by every block).
template <class F, int NP, int RT, int T, int D, bool XP, bool XV, bool F16OUT>
__device__ __forceinline__ void gemv(const Args& p) {
    constexpr int R = NP * RT;
    constexpr int KCH = F::KCH, SCK = 4 * KCH;   // k per chunk / per warp superchunk
    __shared__ float red[GV_WARPS][R * T * 4][32];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int nb = blockIdx.x * 16 * RT, mb = blockIdx.y * 8 * T;
    const int K = p.K, N = p.N;
    const int nsc = (K + SCK - 1) / SCK;
    const long long rb = F::row_bytes(p.ldw, K);

    const unsigned char* wrow[R][2];
    const u16* srow[R][2];
    bool rok[R][2];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int n = nb + 16 * (r % RT) + g + 8 * h;
            rok[r][h] = n < N;
            const int nn = rok[r][h] ? n : 0;
            wrow[r][h] = p.w[r / RT] + (long long)nn * rb;
            srow[r][h] = F::SCALED ? p.s[r / RT] + nn : nullptr;
        }
    const u16* xrow[T];
    bool tok[T];
#pragma unroll
    for (int t = 0; t < T; ++t) {
        const int m = mb + 8 * t + g;
        tok[t] = m < p.M;
        xrow[t] = p.x + (long long)(tok[t] ? m : 0) * p.ldx;
    }

    float acc[R][T][4];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[r][t][e] = 0.f;

    auto fetch_w = [&](int sc, GvW<F, R, T>& st) {   // predicated off past the end of K
        const int kc = sc * SCK + tq * KCH;          // this lane's first k
        const bool kok = sc < nsc && kc < K;
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const bool ok = kok && rok[r][h];
                st.w[r][h] = ok ? ldg_stream(wrow[r][h] + (kc >> F::KSHIFT)) : make_uint4(0u, 0u, 0u, 0u);
                if (F::SCALED) {
                    const unsigned s = ok ? ldg_u16(srow[r][h] + (long long)(kc >> p.gshift) * N) : 0u;
                    st.s2[r][h] = s | (s << 16);
                }
            }
    };
    auto fetch_x = [&](int sc, GvX<F, T>& st) {
        const int kc = sc * SCK + tq * KCH;
        const bool kok = sc < nsc && kc < K;
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
            for (int q = 0; q < KCH / 8; ++q)
                st.x[t][q] = load_x8<XV, !F::SCALED>(xrow[t], kc + 8 * q, K, kok && tok[t]);
    };

    auto compute = [&](const GvW<F, R, T>& st, const GvX<F, T>& sx) {
#pragma unroll
        for (int wd = 0; wd < 4; ++wd) {             // the 4 words of each 16-byte chunk
            if (F::KCH == 32) {                      // I4: 8 k per word -> 2 mma k-steps
                unsigned wq[R][2][4];
#pragma unroll
                for (int r = 0; r < R; ++r)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const unsigned word = wd == 0 ? st.w[r][h].x : wd == 1 ? st.w[r][h].y
                                            : wd == 2 ? st.w[r][h].z : st.w[r][h].w;
                        unsigned q[4];
                        i4_pairs(word, q);
#pragma unroll
                        for (int i = 0; i < 4; ++i) wq[r][h][i] = hmul2(q[i], st.s2[r][h]);
                    }
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    unsigned b0[T], b1[T];
#pragma unroll
                    for (int t = 0; t < T; ++t) {
                        const uint4 X = sx.x[t][wd];
                        const unsigned lo = j == 0 ? X.x : X.y, hi = j == 0 ? X.z : X.w;
                        b0[t] = prmt(lo, hi, 0x5410);   // (x[2j],   x[2j+4])
                        b1[t] = prmt(lo, hi, 0x7632);   // (x[2j+1], x[2j+5])
                    }
#pragma unroll
                    for (int r = 0; r < R; ++r)
#pragma unroll
                        for (int t = 0; t < T; ++t)
                            mma_f16(acc[r][t], wq[r][0][2 * j], wq[r][1][2 * j], wq[r][0][2 * j + 1],
                                    wq[r][1][2 * j + 1], b0[t], b1[t]);
                }
            } else {                                 // I8: 4 k per word -> 1 mma k-step
                unsigned b0[T], b1[T];
#pragma unroll
                for (int t = 0; t < T; ++t) {
                    const uint4 X = sx.x[t][wd >> 1];
                    const unsigned lo = (wd & 1) ? X.z : X.x, hi = (wd & 1) ? X.w : X.y;
                    b0[t] = prmt(lo, hi, 0x5410);       // (x[0], x[2])
                    b1[t] = prmt(lo, hi, 0x7632);       // (x[1], x[3])
                }
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    const unsigned w0 = wd == 0 ? st.w[r][0].x : wd == 1 ? st.w[r][0].y
                                      : wd == 2 ? st.w[r][0].z : st.w[r][0].w;
                    const unsigned w1 = wd == 0 ? st.w[r][1].x : wd == 1 ? st.w[r][1].y
                                      : wd == 2 ? st.w[r][1].z : st.w[r][1].w;
                    const unsigned a0 = i8_pair<0x4240>(w0), a2 = i8_pair<0x4341>(w0);
                    const unsigned a1 = i8_pair<0x4240>(w1), a3 = i8_pair<0x4341>(w1);
#pragma unroll
                    for (int t = 0; t < T; ++t) mma_f16(acc[r][t], a0, a1, a2, a3, b0[t], b1[t]);
                }
            }
        }
    };

    // Warp w takes superchunks w, w+8, w+16, ...; the weights of the next D are always in
    // flight (issued before the current one is multiplied), the activations of the next one.
    GvW<F, R, T> ring[D];
#pragma unroll
    for (int i = 0; i < D; ++i) fetch_w(warp + GV_WARPS * i, ring[i]);
    GvX<F, T> xc;
    if (XP) fetch_x(warp, xc);
    for (int base = warp; base < nsc; base += GV_WARPS * D) {
#pragma unroll
        for (int i = 0; i < D; ++i) {
            const int sc = base + GV_WARPS * i;
            if (sc < nsc) {                          // warp-uniform
                if (XP) {
                    GvX<F, T> xn;
                    fetch_x(sc + GV_WARPS, xn);
                    compute(ring[i], xc);
                    xc = xn;
                } else {
                    fetch_x(sc, xc);
                    compute(ring[i], xc);
                }
            }
            fetch_w(sc + GV_WARPS * D, ring[i]);
        }
    }

    // ---- add the 8 warps' partial sums, store ----
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) red[warp][(r * T + t) * 4 + e][lane] = acc[r][t][e];
    __syncthreads();
    // Value v of all 32 lanes is finished by warp v % 8 (v, r, t, e compile-time constants).
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int v = (r * T + t) * 4 + e;
                if ((v & (GV_WARPS - 1)) != warp) continue;
                float sum = 0.f;
#pragma unroll
                for (int w = 0; w < GV_WARPS; ++w) sum += red[w][v][lane];
                const int n = nb + 16 * (r % RT) + g + 8 * (e >> 1);
                const int m = mb + 8 * t + 2 * tq + (e & 1);
                if (m < p.M && n < N) {
                    const float val = F::SCALED ? sum : __fmul_rn(sum, p.sc[r / RT]);
                    if (F16OUT)
                        reinterpret_cast<u16*>(p.o[r / RT])[(long long)m * p.ldo + n] = f32_to_f16(val);
                    else
                        reinterpret_cast<float*>(p.o[r / RT])[(long long)m * p.ldo + n] = val;
                }
            }
}

// ======================================================== GEMV of one token (decode) ==
// int4, M == 1 (the host sends it the K <= N shapes; see matmul_int4.cu). The gemv above makes
// the weights an mma operand, so each warp instruction reads 64-byte pieces of 8 rows. This
// one reads the way a copy does: a warp instruction loads 512 contiguous bytes (1024 k) of
// ONE row, 16 bytes (32 k) per lane, and the arithmetic is f32 FMA (one token: the tensor
// core would waste 7/8 of an mma).
//   Block: 16 rows (p.w[0], p.s[0] -> f32 p.o[0]), four groups of G1_RW = 4 rows; the 2 warps
//   of a group take the rows' 1024-k chunks in turn.
//   Per chunk a lane loads its 32 k of the group's 4 rows (4 independent 16-byte loads in
//   flight), their 4 scales (one 8-byte load when N % 4 == 0) and x[k..k+32) (L1/L2 hits: x is
//   small and read by every block); it dequantises each word as the gemv does (i4_pairs, then
//   one f16 multiply by the scale: the oracle's rounding) and adds w * x in f32 (a product of
//   two f16 values is exact in f32). Row sums: shuffles within the warp, then the group's two
//   warps through shared memory.
//   Why 4 rows per warp: 80 registers, so 3 blocks (24 warps) per SM hide the arithmetic's
//   latency; with 8 rows per warp (128 registers, 2 blocks) the kernel was 6-14 % slower
//   (H200, benchmarks/notes_quant.md, session 12).
constexpr int G1_NT = 256, G1_ROWS = 16, G1_RW = 4, G1_WPG = 8 * G1_RW / G1_ROWS;

__device__ __forceinline__ void f16x2_to_f32(unsigned h, float& lo, float& hi) {
    asm("{.reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;}\n"
        : "=f"(lo), "=f"(hi)
        : "r"(h));
}

__device__ __forceinline__ void gemv1(const Args& p) {
    __shared__ float part[G1_NT / 32][G1_RW];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nblk = blockIdx.x * G1_ROWS;                        // the block's first row
    const int n0 = nblk + (warp / G1_WPG) * G1_RW;                // this warp's rows
    const unsigned char* W = p.w[0];
    const u16* S = p.s[0];
    const long long rowb = (long long)p.K >> 1;                   // bytes per weight row
    const bool svec = (p.N & 3) == 0 && n0 + G1_RW <= p.N;        // 8-byte scale loads
    float acc[G1_RW];
#pragma unroll
    for (int r = 0; r < G1_RW; ++r) acc[r] = 0.f;
    for (int k = ((warp % G1_WPG) * 32 + lane) * 32; k < p.K; k += G1_WPG * 1024) {
        uint4 wv[G1_RW];
#pragma unroll
        for (int r = 0; r < G1_RW; ++r)
            wv[r] = n0 + r < p.N ? ldg_stream(W + (n0 + r) * rowb + (k >> 1))
                                 : make_uint4(0u, 0u, 0u, 0u);
        unsigned sc[G1_RW];                                       // f16 scale of each row
        const u16* srow = S + (long long)(k >> p.gshift) * p.N + n0;
        if (svec) {
            const uint2 v = __ldg(reinterpret_cast<const uint2*>(srow));
            sc[0] = v.x & 0xFFFFu, sc[1] = v.x >> 16, sc[2] = v.y & 0xFFFFu, sc[3] = v.y >> 16;
        } else {
#pragma unroll
            for (int r = 0; r < G1_RW; ++r) sc[r] = n0 + r < p.N ? ldg_u16(srow + r) : 0u;
        }
        float xf[32];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const uint4 X = __ldg(reinterpret_cast<const uint4*>(p.x + k + 8 * q));
            f16x2_to_f32(X.x, xf[8 * q + 0], xf[8 * q + 1]);
            f16x2_to_f32(X.y, xf[8 * q + 2], xf[8 * q + 3]);
            f16x2_to_f32(X.z, xf[8 * q + 4], xf[8 * q + 5]);
            f16x2_to_f32(X.w, xf[8 * q + 6], xf[8 * q + 7]);
        }
#pragma unroll
        for (int r = 0; r < G1_RW; ++r) {
            const unsigned s2 = sc[r] * 0x10001u;                 // (s, s) f16x2
            const unsigned words[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                unsigned q[4];
                i4_pairs(words[i], q);                            // (k+j, k+j+4) of word i
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float lo, hi;
                    f16x2_to_f32(hmul2(q[j], s2), lo, hi);
                    acc[r] = fmaf(lo, xf[8 * i + j], acc[r]);
                    acc[r] = fmaf(hi, xf[8 * i + j + 4], acc[r]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < G1_RW; ++r)
#pragma unroll
        for (int o = 16; o; o >>= 1) acc[r] += __shfl_xor_sync(0xFFFFFFFFu, acc[r], o);
    if (lane < G1_RW) {
        float v = acc[0];
#pragma unroll
        for (int r = 1; r < G1_RW; ++r) v = lane == r ? acc[r] : v;
        part[warp][lane] = v;
    }
    __syncthreads();
    if (threadIdx.x < G1_ROWS) {
        const int g = threadIdx.x / G1_RW, r = threadIdx.x % G1_RW, n = nblk + threadIdx.x;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < G1_WPG; ++w) v += part[G1_WPG * g + w][r];
        if (n < p.N) reinterpret_cast<float*>(p.o[0])[n] = v;
    }
}

// ================================================================ GEMM (prefill) ==
constexpr int GM_BM = 128, GM_BN = 128, GM_BK = 32, GM_NT = 128, GM_STAGES = 4, GM_GROUP = 8;
constexpr int GM_LD = GM_BK + 8;                       // f16 per shared row (80 B)
constexpr int GM_XTILE = GM_BM * GM_LD * 2;            // 10240 B
constexpr int GM_WDQ = GM_BN * GM_LD * 2;              // 10240 B (one dequantised f16 tile)
template <class F> struct GmRaw;                       // raw weight tile rows
template <> struct GmRaw<I4> { static constexpr int LD = 16, BYTES = GM_BN * 16; };   // 4 words
template <> struct GmRaw<I8> { static constexpr int LD = 48, BYTES = GM_BN * 48; };   // 32 B + pad
template <class F> struct GmSmem {
    static constexpr int STAGE = GM_XTILE + GmRaw<F>::BYTES;
    static constexpr int BYTES = GM_STAGES * STAGE + 2 * GM_WDQ;   // I4 69632, I8 86016
};

// x tile [128 m][32 k] f16 and the raw weight tile of K tile kt into one stage.
template <class F, bool XV>
__device__ __forceinline__ void gm_load_stage(unsigned char* st, const Args& p, const unsigned char* W,
                                              int m0, int n0, int kt, int tid) {
    const int k0 = kt * GM_BK;
    u16* xs = reinterpret_cast<u16*>(st);
#pragma unroll
    for (int i = 0; i < 4; ++i) {                      // 512 chunks of 8 f16
        const int c = tid + i * GM_NT, r = c >> 2, cc = (c & 3) * 8;
        const int m = m0 + r, k = k0 + cc;
        const bool ok = m < p.M;
        if (XV) {
            const int n = ok ? min(max(p.K - k, 0), 8) : 0;
            const u16* src = n > 0 ? p.x + (long long)m * p.ldx + k : p.x;
            mg_cp_async16(mg_smem_addr(xs + r * GM_LD + cc), src, n * 2);
        } else {
            *reinterpret_cast<uint4*>(xs + r * GM_LD + cc) =
                load_x8<false>(p.x + (long long)(ok ? m : 0) * p.ldx, k, p.K, ok);
        }
    }
    unsigned char* raw = st + GM_XTILE;
    if (F::KCH == 32) {                                // I4: row n = tid, 16 B = 32 k
        const int n = n0 + tid;
        const bool ok = n < p.N && k0 < p.K;
        const unsigned char* src = ok ? W + (long long)n * (p.K / 2) + k0 / 2 : W;
        mg_cp_async16(mg_smem_addr(raw + tid * GmRaw<F>::LD), src, ok ? 16 : 0);
    } else {                                           // I8: 2 chunks of 16 B per row
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int c = tid + i * GM_NT, r = c >> 1, cc = (c & 1) * 16;
            const int n = n0 + r, k = k0 + cc;
            const int nb = n < p.N ? min(max(p.K - k, 0), 16) : 0;
            const unsigned char* src = nb > 0 ? W + (long long)n * p.ldw + k : W;
            mg_cp_async16(mg_smem_addr(raw + r * GmRaw<F>::LD + cc), src, nb);
        }
    }
}

// Raw weight row `tid` of a stage -> 32 f16 of the dequantised [n][k] tile.
template <class F>
__device__ __forceinline__ void gm_dequant(const unsigned char* st, u16* wdq, unsigned s2, int tid) {
    const unsigned char* raw = st + GM_XTILE + tid * GmRaw<F>::LD;
    uint4* dst = reinterpret_cast<uint4*>(wdq + tid * GM_LD);
    if (F::KCH == 32) {
        const uint4 v = *reinterpret_cast<const uint4*>(raw);
        const unsigned wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            unsigned q[4];
            i4_pairs(wv[i], q);
#pragma unroll
            for (int e = 0; e < 4; ++e) q[e] = hmul2(q[e], s2);   // (w0,w4) (w1,w5) (w2,w6) (w3,w7)
            dst[i] = make_uint4(prmt(q[0], q[1], 0x5410), prmt(q[2], q[3], 0x5410),
                                prmt(q[0], q[1], 0x7632), prmt(q[2], q[3], 0x7632));
        }
    } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint4 v = *reinterpret_cast<const uint4*>(raw + 16 * h);
            dst[2 * h] = make_uint4(i8_pair<0x4140>(v.x), i8_pair<0x4342>(v.x),
                                    i8_pair<0x4140>(v.y), i8_pair<0x4342>(v.y));
            dst[2 * h + 1] = make_uint4(i8_pair<0x4140>(v.z), i8_pair<0x4342>(v.z),
                                        i8_pair<0x4140>(v.w), i8_pair<0x4342>(v.w));
        }
    }
}

// One K tile (2 k16 steps) of mma for this warp's 64 x 64 tile: A = x [m][k], B = wdq [n][k].
__device__ __forceinline__ void gm_mma(const u16* xs, const u16* ws, float (&acc)[4][8][4], int wm,
                                       int wn, int lane) {
#pragma unroll
    for (int ks = 0; ks < GM_BK; ks += 16) {
        unsigned a[4][4], b[8][2];
        mg_warp_frags64(a, b, xs, ws, GM_LD, wm * 64, wn * 64, ks, lane);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j)
                mma_f16(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
    }
}

// Projection blockIdx.y of p (NP = gridDim.y projections share x).
template <class F, bool XV, bool F16OUT>
__device__ __forceinline__ void gemm(const Args& p, unsigned char* smem) {
    constexpr int S = GM_STAGES, STAGE = GmSmem<F>::STAGE;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1, pr = blockIdx.y;
    const unsigned char* W = pick3(p.w, pr);
    u16* wdq = reinterpret_cast<u16*>(smem + S * STAGE);   // two f16 tiles
    int m0, n0;
    mg_tile_origin(p.M, p.N, GM_BM, GM_BN, GM_GROUP, m0, n0);
    const int KT = (p.K + GM_BK - 1) / GM_BK;
    const int ncol = n0 + tid;                 // the weight row this thread dequantises
    const bool cok = ncol < p.N;
    const u16* srow = F::SCALED ? pick3(p.s, pr) + (cok ? ncol : 0) : nullptr;
    auto scale2 = [&](int kt) -> unsigned {   // (s, s) for K tile kt of row ncol
        if (!F::SCALED) return 0u;
        const unsigned s = (cok && kt < KT) ? ldg_u16(srow + (long long)((kt * GM_BK) >> p.gshift) * p.N) : 0u;
        return s | (s << 16);
    };

    float acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

#pragma unroll
    for (int s = 0; s < S - 1; ++s) {
        if (s < KT) gm_load_stage<F, XV>(smem + s * STAGE, p, W, m0, n0, s, tid);
        mg_cp_async_commit();
    }
    unsigned s_cur = scale2(0), s_nxt = scale2(1);
    mg_cp_async_wait<S - 2>();                    // tile 0 has landed (this thread's copies)
    __syncthreads();
    gm_dequant<F>(smem, wdq, s_cur, tid);
    s_cur = s_nxt;
    s_nxt = scale2(2);

    for (int kt = 0; kt < KT; ++kt) {
        mg_cp_async_wait<S - 3>();                // tile kt+1 has landed
        __syncthreads();                       // for everyone; wdq[kt&1] complete; mma(kt-1) done
        const int nk = kt + S - 1;
        if (nk < KT) gm_load_stage<F, XV>(smem + (nk % S) * STAGE, p, W, m0, n0, nk, tid);
        mg_cp_async_commit();
        if (kt + 1 < KT) {
            gm_dequant<F>(smem + ((kt + 1) % S) * STAGE, wdq + ((kt + 1) & 1) * (GM_WDQ / 2), s_cur, tid);
            s_cur = s_nxt;
            s_nxt = scale2(kt + 3);
        }
        gm_mma(reinterpret_cast<const u16*>(smem + (kt % S) * STAGE), wdq + (kt & 1) * (GM_WDQ / 2),
               acc, wm, wn, lane);
    }
    mg_cp_async_wait<0>();

    const int g = lane >> 2, tq = lane & 3;
    const float sc = pick3(p.sc, pr);
    void* O = pick3(p.o, pr);
    const bool pair_ok = ((p.ldo & 1) == 0) &&
                         ((reinterpret_cast<unsigned long long>(O) & (F16OUT ? 3 : 7)) == 0);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = m0 + wm * 64 + i * 16 + g + 8 * h;
            if (row >= p.M) continue;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int col = n0 + wn * 64 + j * 8 + 2 * tq;
                store_out<F, F16OUT>(O, (long long)row * p.ldo, col, p.N, pair_ok, sc, acc[i][j][2 * h],
                                     acc[i][j][2 * h + 1]);
            }
        }
}


// ============================================== GEMM on Hopper wgmma (prefill, sm_90a) ==
// Block tile 128 (m) x 256 (n) x 64 (k); 2 warpgroups, each wgmma.m64n256k16.f32.f16.f16
// (128 f32 accumulators per thread) from shared memory: A = the x tile, B = the weight tile
// dequantised to f16 by the threads, both K-major in the 128-byte swizzle layout (a 128-byte
// row = 64 k; 16-byte chunk c of row r at chunk c ^ (r % 8); 1024-byte aligned; descriptor
// SBO = 1024 B, k16 steps advance the start address by 32 B). x and raw weight tiles come by
// cp.async in WG_STAGES stages (3 tiles ahead); the dequantised tile is double-buffered.
// Iteration kt: wait tile kt+1, fence.proxy.async, barrier; refill stage (kt-2); issue
// wgmma(kt); wait_group 1 (wgmma(kt-1) done); barrier; dequantise tile kt+1 into the other
// f16 buffer while wgmma(kt) runs. So the dequantisation overlaps the tensor cores.
constexpr int WG_BM = 128, WG_BN = 256, WG_BK = 64, WG_NT = 256, WG_STAGES = 5, WG_GROUP = 8;
constexpr int WG_XT = WG_BM * 128;                      // x tile bytes (16384)
constexpr int WG_WDQ = WG_BN * 128;                     // one f16 weight tile (32768)
template <class F> struct WgRaw {                       // raw weight tile: 256 rows
    static constexpr int ROW = F::KCH == 32 ? 32 : 64;  // bytes per row (64 k)
    static constexpr int CH = ROW / 16;                 // 16-byte chunks per row
    static constexpr int BYTES = WG_BN * ROW;
};
template <class F> struct WgSmem {
    static constexpr int STAGE = WG_XT + WgRaw<F>::BYTES;              // I4 24 KB, I8 32 KB
    static constexpr int BYTES = WG_STAGES * STAGE + 2 * WG_WDQ + 1024; // I4 189440, I8 230400
};
// Raw rows are 2 or 4 chunks; chunk j of row r is stored at j ^ sw(r) so that the 8 rows a
// quarter-warp reads (one per thread) fall in 8 different 16-byte bank groups.
template <class F>
__device__ __forceinline__ int wg_raw_sw(int r) {
    return F::KCH == 32 ? ((r >> 2) & 1) : ((r >> 1) & 3);
}

static_assert(WG_BK == 64 && WG_GROUP == 8, "one 128-byte swizzle row of f16 per K tile");

template <class F>
__device__ __forceinline__ void wg_load_stage(unsigned st, const Args& p, const unsigned char* W,
                                              int m0, int n0, int kt, int tid) {
    const int k0 = kt * WG_BK;
#pragma unroll
    for (int i = 0; i < WG_BM * 8 / WG_NT; ++i) {        // x: 128 rows x 8 chunks
        const int c = tid + i * WG_NT, r = c >> 3, ch = c & 7;
        const int m = m0 + r, k = k0 + ch * 8;
        const int n = m < p.M ? min(max(p.K - k, 0), 8) : 0;
        const u16* src = n > 0 ? p.x + (long long)m * p.ldx + k : p.x;
        mg_cp_async16(st + r * 128 + ((ch ^ (r & 7)) << 4), src, n * 2);
    }
    constexpr int CH = WgRaw<F>::CH;
    const unsigned raw = st + WG_XT;
#pragma unroll
    for (int i = 0; i < WG_BN * CH / WG_NT; ++i) {       // weights: 256 rows x CH chunks
        const int c = tid + i * WG_NT, r = c / CH, ch = c % CH;
        const int n = n0 + r;
        int nb;
        const unsigned char* src;
        if (F::KCH == 32) {                              // I4: K % 32 == 0, whole chunks
            const int k = k0 + ch * 32;
            nb = (n < p.N && k < p.K) ? 16 : 0;
            src = nb ? W + (long long)n * (p.K / 2) + k / 2 : W;
        } else {
            const int k = k0 + ch * 16;
            nb = n < p.N ? min(max(p.K - k, 0), 16) : 0;
            src = nb ? W + (long long)n * p.ldw + k : W;
        }
        mg_cp_async16(raw + r * WgRaw<F>::ROW + ((ch ^ wg_raw_sw<F>(r)) << 4), src, nb);
    }
}

// Thread t dequantises weight row t (64 k) of the raw tile at `raw` into the swizzled f16
// tile at `wdq` (chunk c = 8 k of row t at t*128 + ((c ^ (t%8)) << 4)).
template <class F>
__device__ __forceinline__ void wg_dequant(const unsigned char* raw, unsigned char* wdq,
                                           const unsigned (&s2)[2], int tid) {
    const unsigned char* row = raw + tid * WgRaw<F>::ROW;
    unsigned char* out = wdq + tid * 128;
    const int sw = tid & 7;
    if (F::KCH == 32) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {                    // 32 k each, one scale
            const uint4 v = *reinterpret_cast<const uint4*>(row + ((h ^ wg_raw_sw<F>(tid)) << 4));
            const unsigned wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                unsigned q[4];
                i4_pairs(wv[i], q);
#pragma unroll
                for (int e = 0; e < 4; ++e) q[e] = hmul2(q[e], s2[h]);
                *reinterpret_cast<uint4*>(out + (((4 * h + i) ^ sw) << 4)) =
                    make_uint4(prmt(q[0], q[1], 0x5410), prmt(q[2], q[3], 0x5410),
                               prmt(q[0], q[1], 0x7632), prmt(q[2], q[3], 0x7632));
            }
        }
    } else {
#pragma unroll
        for (int h = 0; h < 4; ++h) {                    // 16 k each
            const uint4 v = *reinterpret_cast<const uint4*>(row + ((h ^ wg_raw_sw<F>(tid)) << 4));
            *reinterpret_cast<uint4*>(out + (((2 * h) ^ sw) << 4)) =
                make_uint4(i8_pair<0x4140>(v.x), i8_pair<0x4342>(v.x), i8_pair<0x4140>(v.y),
                           i8_pair<0x4342>(v.y));
            *reinterpret_cast<uint4*>(out + (((2 * h + 1) ^ sw) << 4)) =
                make_uint4(i8_pair<0x4140>(v.z), i8_pair<0x4342>(v.z), i8_pair<0x4140>(v.w),
                           i8_pair<0x4342>(v.w));
        }
    }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <class F, bool F16OUT>
__device__ __forceinline__ void gemm_wg(const Args& p, unsigned char* dsmem) {
    constexpr int S = WG_STAGES, STAGE = WgSmem<F>::STAGE;
    const int tid = threadIdx.x, lane = tid & 31;
    const int wg = tid >> 7, wl = (tid >> 5) & 3, pr = blockIdx.y;
    const unsigned sbase = (mg_smem_addr(dsmem) + 1023u) & ~1023u;
    unsigned char* gbase = dsmem + (sbase - mg_smem_addr(dsmem));     // generic view of sbase
    const unsigned wdq_s = sbase + S * STAGE;                      // two f16 weight tiles
    unsigned char* wdq_g = gbase + S * STAGE;
    const unsigned char* W = pick3(p.w, pr);
    int m0, n0;
    mg_tile_origin(p.M, p.N, WG_BM, WG_BN, WG_GROUP, m0, n0);
    const int KT = (p.K + WG_BK - 1) / WG_BK;
    const int ncol = n0 + tid;                 // the weight row this thread dequantises
    const bool cok = ncol < p.N;
    const u16* srow = F::SCALED ? pick3(p.s, pr) + (cok ? ncol : 0) : nullptr;
    auto scales = [&](int kt, unsigned (&s2)[2]) {   // (s, s) for the two 32-k halves
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int k = kt * WG_BK + 32 * h;
            const unsigned s = (F::SCALED && cok && k < p.K)
                                   ? ldg_u16(srow + (long long)(k >> p.gshift) * p.N) : 0u;
            s2[h] = s | (s << 16);
        }
    };

    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.f;

#pragma unroll
    for (int s = 0; s < S - 2; ++s) {
        if (s < KT) wg_load_stage<F>(sbase + s * STAGE, p, W, m0, n0, s, tid);
        mg_cp_async_commit();
    }
    unsigned s_cur[2], s_nxt[2];
    scales(0, s_cur);
    scales(1, s_nxt);
    mg_cp_async_wait<S - 3>();                    // tile 0 (this thread's copies)
    __syncthreads();
    wg_dequant<F>(gbase + WG_XT, wdq_g, s_cur, tid);
    s_cur[0] = s_nxt[0];
    s_cur[1] = s_nxt[1];
    scales(2, s_nxt);

    for (int kt = 0; kt < KT; ++kt) {
        mg_cp_async_wait<S - 4>();                // tile kt+1 has landed (this thread's copies)
        mg_fence_proxy_async();                // cp.async data and our f16 stores -> async proxy
        __syncthreads();
        const int nk = kt + S - 2;             // refill the stage wgmma(kt-2) read
        if (nk < KT) wg_load_stage<F>(sbase + (nk % S) * STAGE, p, W, m0, n0, nk, tid);
        mg_cp_async_commit();
        const unsigned xs = sbase + (kt % S) * STAGE;
        const unsigned long long da = mg_wgmma_desc(xs + wg * 64 * 128, 16, 1024);
        const unsigned long long db = mg_wgmma_desc(wdq_s + (kt & 1) * WG_WDQ, 16, 1024);
        mg_wgmma_fence();
#pragma unroll
        for (int s = 0; s < WG_BK / 16; ++s)   // +32 B along K = +2 in the 16-B address field
            MgWgmma<256, MgF16, 0, 0>::run(acc, da + 2 * s, db + 2 * s);
        mg_wgmma_commit();
        mg_wgmma_wait<1>();                    // wgmma(kt-1) is done (this warpgroup)
        __syncthreads();                       // ... in both warpgroups: its f16 tile is free
        if (kt + 1 < KT) {
            wg_dequant<F>(gbase + ((kt + 1) % S) * STAGE + WG_XT, wdq_g + ((kt + 1) & 1) * WG_WDQ,
                          s_cur, tid);
            s_cur[0] = s_nxt[0];
            s_cur[1] = s_nxt[1];
            scales(kt + 3, s_nxt);
        }
    }
    mg_wgmma_wait<0>();
    mg_cp_async_wait<0>();

    const int g = lane >> 2, tq = lane & 3;
    const float sc = pick3(p.sc, pr);
    void* O = pick3(p.o, pr);
    const bool pair_ok = ((p.ldo & 1) == 0) &&
                         ((reinterpret_cast<unsigned long long>(O) & (F16OUT ? 3 : 7)) == 0);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = m0 + wg * 64 + wl * 16 + g + 8 * h;
        if (row >= p.M) continue;
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            const int col = n0 + i * 8 + 2 * tq;
            store_out<F, F16OUT>(O, (long long)row * p.ldo, col, p.N, pair_ok, sc, acc[4 * i + 2 * h],
                                 acc[4 * i + 2 * h + 1]);
        }
    }
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace mwq

extern __shared__ __align__(16) unsigned char mwq_dyn_smem[];
static_assert(mwq::GmSmem<mwq::I4>::BYTES == 69632, "MWQ_SMEM_I4 in the header");
static_assert(mwq::GmSmem<mwq::I8>::BYTES == 86016, "qkv_project.cu's int8 gemm smem");
static_assert(mwq::WgSmem<mwq::I4>::BYTES == 189440, "MWQ_WG_SMEM_I4 in the header");
static_assert(mwq::WgSmem<mwq::I8>::BYTES == 230400, "qkv_project.cu's int8 gemm_wgmma smem");

