// common.cuh - helpers shared by the kernels in this folder.
//
// Included by the .cu files (`#include "common.cuh"`); the runtime compiles them
// with NVRTC using this folder as the include path (minigrad.kernelfiles.kernel_dir()).
// Keep it to small, header-only device helpers: index math, vectorised loads,
// warp reductions, f16/bf16 conversions. Every definition must compile for sm_80
// and sm_90.
#pragma once

// ---- async copy, ldmatrix, shared addresses (sm_80+; used by matmul_tc*.cu) ----
// Raw 16-bit values (f16 / bf16 bit patterns) travel as `unsigned short`, so no
// header (cuda_fp16.h) is needed for the tensor-core kernels.
__device__ __forceinline__ unsigned mg_smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
// 16-byte global->shared copy that bypasses L1; reads `src_bytes` (0..16) bytes
// and zero-fills the rest, so a tail chunk or an out-of-range chunk (0 bytes;
// pass any valid pointer) needs no branch. `src` must be 16-byte aligned.
__device__ __forceinline__ void mg_cp_async16(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void mg_cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>   // wait until at most N of this thread's committed groups are pending
__device__ __forceinline__ void mg_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}
// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void mg_ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void mg_ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// ---- block -> output tile (the matmul kernels) ----
// Tile (tm, tn) of block `pid` on a tiles_m x tiles_n grid of output tiles, visited in
// groups of `group` tile-rows, down each column of a group before the next column, so
// that the blocks running at the same time share rows of A and columns of B in L2.
__device__ __forceinline__ void mg_grouped_tile(int pid, int tiles_m, int tiles_n, int group,
                                                int& tm, int& tn) {
    const int width = group * tiles_n;
    const int first = (pid / width) * group;
    const int gsz = min(tiles_m - first, group);
    tm = first + (pid % width) % gsz;
    tn = (pid % width) / gsz;
}
// The origin (m0, n0) of this block's bm x bn tile of an M x N output, grid = tiles.
__device__ __forceinline__ void mg_tile_origin(int M, int N, int bm, int bn, int group,
                                               int& m0, int& n0) {
    int tm, tn;
    mg_grouped_tile(blockIdx.x, (M + bm - 1) / bm, (N + bn - 1) / bn, group, tm, tn);
    m0 = tm * bm;
    n0 = tn * bn;
}

// ---- block -> (slice, tile) (the attention kernels) ----
// The grid is B * ntiles blocks, one tile (of query rows, or of keys) of one slice each;
// this gives the slice b and the tile's rank. Without a mask every tile is the same work:
// slice-major. Causal tiles are not (a query tile sees more keys the later it is, a key
// tile fewer queries), so blocks go heaviest first (rank 0 = most work; the kernel maps
// rank to its tile) - across a group of MG_CAUSAL_GROUP slices, not within one slice: the
// last wave then holds the lightest tiles of the last group instead of a whole slice's
// heavy-to-light run, while the group's K/V stay together in L2. (A list-scheduling model
// of 132 SMs: 64 x 4096 x 128 causal 274 -> 256 time units, the mean being 256; 8 x 4096 x
// 128 51 -> 32; measured on an H200 with flash_attention_tf32.cu: -6 % and -37 % fwd+bwd
// GPU time.) Slices of fewer than MG_GROUP_MIN_TILES tiles keep the slice-major order
// (heaviest first within the slice): there the model gains little and the GPT shape
// (384 x 256 x 64) measured 6 % slower grouped (benchmarks/notes_attention.md, "Causal
// block order").
constexpr int MG_CAUSAL_GROUP = 8, MG_GROUP_MIN_TILES = 8;
template <bool CAUSAL>
__device__ __forceinline__ void mg_block_tile(int ntiles, int B, int& b, int& rank) {
    const int bid = (int)blockIdx.x;
    if (!CAUSAL || ntiles < MG_GROUP_MIN_TILES) {
        b = bid / ntiles;
        rank = bid % ntiles;
        return;
    }
    const int per_group = MG_CAUSAL_GROUP * ntiles, group = bid / per_group,
              r = bid % per_group;
    const int slices = min(MG_CAUSAL_GROUP, B - group * MG_CAUSAL_GROUP);  // last group: fewer
    b = group * MG_CAUSAL_GROUP + r % slices;
    rank = r / slices;
}

// ---- epilogue stores of the matmul kernels ----
// matmul_int8's output element: the oracle's two roundings, f32(acc) then * scale (bit-exact)
__device__ __forceinline__ float mg_int8_out(int acc, float scale) {
    return __fmul_rn(__int2float_rn(acc), scale);
}

// An accumulator pair (v0, v1) -> row[col], row[col + 1] of an output row, columns >= N
// dropped. pair_ok (even row stride, base aligned to the pair: 8 bytes for f32, 4 for
// 16-bit) allows one store of both when both columns are inside.
__device__ __forceinline__ void mg_store2(float* row, int col, int N, bool pair_ok, float v0,
                                         float v1) {
    if (pair_ok && col + 1 < N) {
        *reinterpret_cast<float2*>(row + col) = make_float2(v0, v1);
    } else {
        if (col < N) row[col] = v0;
        if (col + 1 < N) row[col + 1] = v1;
    }
}
__device__ __forceinline__ void mg_store2(unsigned short* row, int col, int N, bool pair_ok,
                                         unsigned short h0, unsigned short h1) {
    if (pair_ok && col + 1 < N) {
        *reinterpret_cast<unsigned*>(row + col) = (unsigned)h0 | ((unsigned)h1 << 16);
    } else {
        if (col < N) row[col] = h0;
        if (col + 1 < N) row[col + 1] = h1;
    }
}

// The ldmatrix fragments of one k step of a warp's 64 x 64 mma.sync tile (f16 / bf16
// m16n8k16 or s8 m16n8k32: 32 bytes of K per step). A: 4 m16 tiles, rows m0 + 16 i.. of
// sA; B: 8 n8 tiles, rows n0 + 8 j.. of sB; both tiles row-major with K contiguous, rows
// `ld` elements of T apart; k = the step's first element along K. Matrices of one x4:
// A rows 0-7 | 8-15 x bytes 0-15 | 16-31 (a0..a3); B (n 0-7, k bytes 0-15), (n 0-7,
// 16-31), (n 8-15, 0-15), (n 8-15, 16-31).
template <class T>
__device__ __forceinline__ void mg_warp_frags64(unsigned (&a)[4][4], unsigned (&b)[8][2],
                                                const T* sA, const T* sB, int ld, int m0,
                                                int n0, int k, int lane) {
    constexpr int C = 16 / (int)sizeof(T);     // elements in 16 bytes
    const int mi = lane >> 3, r8 = lane & 7;
#pragma unroll
    for (int i = 0; i < 4; ++i)
        mg_ldmatrix_x4(a[i],
                       mg_smem_addr(sA + (m0 + i * 16 + (lane & 15)) * ld + k + (lane >> 4) * C));
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        unsigned t[4];
        mg_ldmatrix_x4(t, mg_smem_addr(sB + (n0 + j * 16 + (mi >> 1) * 8 + r8) * ld + k +
                                       (mi & 1) * C));
        b[2 * j][0] = t[0];
        b[2 * j][1] = t[1];
        b[2 * j + 1][0] = t[2];
        b[2 * j + 1][1] = t[3];
    }
}

// ---- small f32 helpers of the attention kernels (attention_tc.cu, flash_attention*.cu) ----
// 2^x by the hardware (ex2.approx, relative error ~2^-22; flushes subnormals).
__device__ __forceinline__ float mg_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ bool mg_aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}
// Component i of a float4 (i a compile-time constant after unrolling).
__device__ __forceinline__ float mg_comp(const float4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
// 4-byte global->shared copy through L1; src_bytes 0 zero-fills (pass any valid pointer).
__device__ __forceinline__ void mg_cp_async4(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// Rows [row0, row0+ROWS) x columns [0, DP) of a [nrows, D] matrix of T (f32, or 16-bit
// raw f16) -> shared tile with row stride LD elements, by NT threads; rows >= nrows and
// columns >= D are zero-filled. vec (D a multiple of 16 bytes' worth of T, g 16-byte
// aligned): each thread copies one fixed 16-byte column chunk of rows tr, tr + RSTEP, ...
// with cp.async (the caller commits and waits); else element copies: 4-byte cp.async for
// f32, plain loads and stores for 16-bit (cp.async has no 2-byte size).
template <int ROWS, int DP, int LD, int NT, class T>
__device__ __forceinline__ void mg_load_rows(T* sm, const T* g, int row0, int nrows, int D,
                                             bool vec) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 2, "f32 or 16-bit elements");
    constexpr int E = 16 / (int)sizeof(T), CH = DP / E, RSTEP = NT / CH;
    static_assert(NT % CH == 0 && ROWS % RSTEP == 0, "whole rounds");
    if (vec) {
        const int tr = threadIdx.x / CH, d = (threadIdx.x % CH) * E;
        const unsigned dst = mg_smem_addr(sm + tr * LD + d);
        const T* src = g + (size_t)(row0 + tr) * D + d;
        const int rleft = nrows - row0 - tr;       // rows r < rleft are inside the matrix
#pragma unroll
        for (int it = 0; it < ROWS / RSTEP; ++it) {
            const bool ok = it * RSTEP < rleft && d < D;
            mg_cp_async16(dst + it * RSTEP * LD * (int)sizeof(T),
                          ok ? src + (size_t)it * RSTEP * D : g, ok ? 16 : 0);
        }
    } else {
#pragma unroll 1
        for (int i = threadIdx.x; i < ROWS * DP; i += NT) {
            const int r = i / DP, d = i % DP, gr = row0 + r;
            const bool ok = gr < nrows && d < D;
            if constexpr (sizeof(T) == 4)
                mg_cp_async4(mg_smem_addr(sm + r * LD + d), ok ? g + (size_t)gr * D + d : g,
                             ok ? 4 : 0);
            else
                sm[r * LD + d] = ok ? g[(size_t)gr * D + d] : (T)0;
        }
    }
}

// ---- attention dropout (flash_attention*.cu) ----
// Dropout arguments, one kernel parameter (so every field is a constant-bank operand and
// costs no register): the Philox round keys key[2r], key[2r+1] = (seed_lo + r*0x9E3779B9,
// seed_hi + r*0xBB67AE85) mod 2^32 for r = 0..6 (the host expands the 64-bit seed), the
// keep threshold thr on 16-bit uniforms (kept iff u16 >= thr = ceil(65536 p)) and
// rp = f32(1/(1-p)).  Host: ops_attention.py (_drop). Used by
// flash_attention.cu and flash_attention_tf32.cu.
struct MgDropArgs {
    unsigned key[14];
    unsigned thr;
    float rp;
};

// Philox-4x32 with 7 rounds (Random123's Philox4x32-7, the round count FlashAttention-2's
// dropout uses) of counter (c0, c1, c2, 0) under the key of `dr`.  Host mirror:
// minigrad/backend/reference.py (_philox4x32_7); the two must stay identical.
__device__ __forceinline__ uint4 mg_philox7(unsigned c0, unsigned c1, unsigned c2, const MgDropArgs& dr) {
    unsigned c3 = 0u;
#pragma unroll
    for (int r = 0; r < 7; ++r) {
        const unsigned h0 = __umulhi(0xD2511F53u, c0), l0 = 0xD2511F53u * c0;
        const unsigned h1 = __umulhi(0xCD9E8D57u, c2), l1 = 0xCD9E8D57u * c2;
        c0 = h1 ^ c1 ^ dr.key[2 * r]; c1 = l1; c2 = h0 ^ c3 ^ dr.key[2 * r + 1]; c3 = l0;
    }
    return make_uint4(c0, c1, c2, c3);
}

// The flash backward's preprocess, D_i = sum_d dO[i,d] * O[i,d] over rows = B*S rows of D
// floats (f32 fmaf in order per lane, then a warp tree): one warp per row, 8 rows per
// 256-thread block. Both flash files' *_bwd_preprocess entry points are this function.
__device__ __forceinline__ void mg_attn_bwd_preprocess(const float* __restrict__ dO,
                                                       const float* __restrict__ O,
                                                       float* __restrict__ Dd, long long rows,
                                                       int D) {
    const long long row = (long long)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* a = dO + row * D;
    const float* c = O + row * D;
    float acc = 0.f;
    if ((D & 3) == 0 && mg_aligned16(dO) && mg_aligned16(O)) {
        for (int d = 4 * lane; d < D; d += 128) {
            const float4 x = *reinterpret_cast<const float4*>(a + d);
            const float4 y = *reinterpret_cast<const float4*>(c + d);
            acc = fmaf(x.x, y.x, acc); acc = fmaf(x.y, y.y, acc);
            acc = fmaf(x.z, y.z, acc); acc = fmaf(x.w, y.w, acc);
        }
    } else {
        for (int d = lane; d < D; d += 32) acc = fmaf(a[d], c[d], acc);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) Dd[row] = acc;
}
