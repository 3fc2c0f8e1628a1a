// minigrad-arch: sm_80, sm_86, sm_89, sm_90a
// matmul_int8.cu - W8A8 integer matmul on tensor cores: C = float(int32(A) . int32(B)) * scale.
//
// BUILD: on a compute-capability 9.0 device compile this file for sm_90a (the line above
//   tells minigrad's compiler so): every entry works there and matmul_int8_wgmma is live.
//   Built for any other target, matmul_int8_wgmma is a trap (never launch it there).
//
// MATH (op matmul_int8, OPS.md)
//   A int8 [M,K], B int8 [K,N] (given to the kernels as Bt = B^T, int8 [N,K]: see LAYOUT),
//   int32 accumulate (exact), then C[m,n] = f32(acc) * scale in f32: __int2float_rn then
//   __fmul_rn, the two roundings of the NumPy oracle acc.astype(f32) * f32(scale), so the
//   result is BIT-EXACT for any K (int32 cannot overflow for K < 131072).
//   Any M, N, K >= 1: rows/cols past M, N and the K tail are zero-filled on the way into
//   shared memory (zeros add nothing) and every store is predicated.
//
// LAYOUT (the contract)
//   A : A[m,k] at A[m*lda + k]         (row-major, K contiguous)
//   Bt: B[k,n] at Bt[n*ldb + k]        (B stored [N,K], K contiguous per output column)
//   C : C[m,n] at C[m*ldc + n]         f32
//   [N,K] is the layout the int8 tensor-core instructions want for B (mma .col / wgmma
//   K-major: int8 operands cannot be transposed by ldmatrix.trans or by wgmma). It is
//   free when B is a transposed view of an [N,K] tensor (nn.Linear's weight, [out, in]).
//   A row-major B [K,N] is first copied once by `matmul_int8_transpose` (below) into a
//   scratch [N, ldb] buffer with ldb = round_up(K, 16) (weights: cache the copy).
//   Leading batch dims of A are flattened into M by the host (A must then be [M,K] with
//   one row stride); B is shared.
//
// ENTRY POINTS (extern "C")
//   matmul_int8_tn_v      mma.sync.m16n8k32 s8, 16-byte cp.async 4-stage pipeline. sm_80+.
//   matmul_int8_tn_s      same tiles, element (byte) loads: any alignment / any lda, ldb.
//   matmul_int8_wgmma     Hopper wgmma.m64n256k32 s8 (sm_90a cubin only; on other targets
//                         its body traps).
//   matmul_int8_transpose int8 [K,N] (ldb_in) -> [N, ldb_out], zero-filling k in [K, ldb_out).
//
// ARGUMENTS (GEMM entries, in this order; PyCUDA prepare format "PPPqqqiiif")
//   const int8* A, const int8* Bt, float* C, int64 lda, int64 ldb, int64 ldc,
//   int M, int N, int K, float scale
//   transpose: (const int8* B, int8* Bt, int64 ldb_in, int64 ldb_out, int K, int N)  "PPqqii"
//
// LAUNCH RULES (what the host must do)
//   _v / _s: block (128,1,1); grid (ceil(M/128) * ceil(N/128), 1, 1); dynamic shared memory
//     MI8_SMEM = 81920 B: raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES to 81920 first.
//   wgmma:  block (256,1,1); grid (ceil(M/128) * ceil(N/256), 1, 1); dynamic shared memory
//     MI8W_SMEM = 197632 B (raise the attribute likewise); cubin built for sm_90a.
//   transpose: block (256,1,1); grid (ceil(N/64), ceil(ldb_out/64), 1); no shared memory
//     beyond its static 4160 B.
//   Choosing the GEMM entry:
//     _v and wgmma need lda % 16 == 0, ldb % 16 == 0 and 16-byte aligned A, Bt (cp.async of
//     16 B; K itself may be anything: a chunk that straddles K is read partially, the rest
//     zero-filled); C needs nothing (float2 stores only when ldc is even and C 8-B aligned).
//     On sm_90 with an sm_90a cubin prefer matmul_tc_wgmma.cu's matmul_int8_tma_* (TMA +
//     warp-specialized wgmma, 1.4x this file's wgmma at 8192^3), then wgmma; else _v; _s
//     when the alignment rule fails.
//
// ALGORITHM AND TILES
//   _v/_s: block tile 128 x 128 x 64 (bytes of K), 4 warps as 2 x 2, warp tile 64 x 64 =
//     4 (m16) x 8 (n8) mma.m16n8k32 tiles, 128 int32 accumulators per thread. Operands go
//     global -> shared by cp.async.cg (16 B, L1 bypass) in 4 stages (3 tiles in flight while
//     one is computed; one __syncthreads per K tile). Shared rows are 64 B + 16 B padding
//     (80 B apart), so the 8 row addresses of each ldmatrix land in 8 different 16-byte bank
//     groups. An int8 m16 x k32 A fragment is exactly one ldmatrix.x4 of the b16 view (each
//     8x8 b16 matrix = 8 rows x 16 bytes; thread t gets bytes 4(t%4)..+3 of row t/4, the
//     s8 fragment layout), likewise two n8 x k32 B fragments from the [n][k] tile.
//     2 blocks/SM (2 x 80 KB shared, <= 255 regs), blocks grouped by 8 block-rows for L2 reuse.
//   wgmma: block tile 128 x 256 x 128, 2 warpgroups (256 threads), each one
//     wgmma.m64n256k32.s32.s8.s8 chain (128 int32 accumulators per thread), both operands
//     K-major from shared memory in the 128-byte swizzle layout (16-byte chunk c of row r
//     stored at chunk c ^ (r % 8); tiles 1024-B aligned; descriptor SBO = 1024 B, K steps
//     of 32 B advance the start address). All 256 threads fill 4 stages with cp.async
//     (2 tiles in flight ahead of the one being multiplied, one wgmma group in flight);
//     fence.proxy.async makes the cp.async data visible to the tensor core's async proxy
//     before the barrier. 1 block/SM (193 KB shared).
//   Why: int8 tensor cores run twice the f16 rate, so the kernels are shared-memory and
//     issue bound; 64x64 warp tiles (mma.sync) or m64n256 warpgroup tiles (wgmma) keep
//     operand traffic per multiply-add low.

#include "common.cuh"   // cp.async, ldmatrix, shared addresses
#include "wgmma.cuh"    // wgmma fences, descriptors, instructions

namespace mi8 {

typedef signed char i8;
typedef unsigned char u8;

__device__ __forceinline__ void mma_s8(int (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Valid bytes (0..16) of the 16-byte chunk at (row gr, col gk) of a [rows, K] operand.
__device__ __forceinline__ int chunk_bytes(int gr, int rows, int gk, int K) {
    return gr < rows ? min(max(K - gk, 0), 16) : 0;
}
// Byte loads of one chunk (the _s path): element e < n of row gr from column gk.
__device__ __forceinline__ uint4 load_chunk_bytes(const i8* g, long long ld, int gr, int gk, int n) {
    unsigned w[4] = {0u, 0u, 0u, 0u};
    if (n > 0) {
        const u8* src = reinterpret_cast<const u8*>(g) + (long long)gr * ld + gk;
#pragma unroll
        for (int e = 0; e < 16; ++e)
            if (e < n) w[e >> 2] |= (unsigned)__ldg(src + e) << (8 * (e & 3));
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// ------------------------------------------------------------ mma.sync kernel --
constexpr int BM = 128, BN = 128, BK = 64, NT = 128, STAGES = 4, GROUP_M = 8;
constexpr int LDS = BK + 16;              // bytes between shared rows (80)
constexpr int TILE = BM * LDS;            // 10240 B; the B tile (BN = BM) is the same size
constexpr int STAGE = 2 * TILE;           // 20480 B
constexpr int SMEM = STAGES * STAGE;      // 81920 B

// One 128-row x 64-byte operand tile (rows row0.., K bytes k0..) into shared memory.
template <bool VEC>
__device__ __forceinline__ void load_tile(u8* sm, const i8* g, long long ld, int row0, int rows,
                                          int k0, int K, int tid) {
#pragma unroll
    for (int i = 0; i < (BM * BK / 16) / NT; ++i) {     // 4 chunks per thread
        const int c = tid + i * NT;
        const int r = c >> 2, cc = (c & 3) * 16;
        const int gr = row0 + r, gk = k0 + cc;
        const int n = chunk_bytes(gr, rows, gk, K);
        u8* dst = sm + r * LDS + cc;
        if (VEC) {
            const i8* src = n > 0 ? g + (long long)gr * ld + gk : g;
            mg_cp_async16(mg_smem_addr(dst), src, n);
        } else {
            *reinterpret_cast<uint4*>(dst) = load_chunk_bytes(g, ld, gr, gk, n);
        }
    }
}

// One K tile (64 bytes = 2 k32 steps) of mma work for this warp's 64 x 64 tile.
__device__ __forceinline__ void mma_tile(const u8* sA, const u8* sB, int (&acc)[4][8][4], int wm,
                                         int wn, int lane) {
#pragma unroll
    for (int ks = 0; ks < BK; ks += 32) {
        unsigned a[4][4], b[8][2];
        mg_warp_frags64(a, b, sA, sB, LDS, wm * 64, wn * 64, ks, lane);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) mma_s8(acc[i][j], a[i], b[j][0], b[j][1]);
    }
}

// Predicated store of the pair (row, col), (row, col + 1).
__device__ __forceinline__ void store_pair(float* C, long long ldc, int M, int N, int row, int col,
                                           float v0, float v1, bool pair_ok) {
    if (row < M) mg_store2(C + (long long)row * ldc, col, N, pair_ok, v0, v1);
}

template <bool VEC>
__device__ __forceinline__ void gemm(const i8* __restrict__ A, const i8* __restrict__ Bt,
                                     float* __restrict__ C, long long lda, long long ldb,
                                     long long ldc, int M, int N, int K, float scale, u8* smem) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    int m0, n0;
    mg_tile_origin(M, N, BM, BN, GROUP_M, m0, n0);
    const int KT = (K + BK - 1) / BK;

    int acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < KT) {
            u8* st = smem + s * STAGE;
            load_tile<VEC>(st, A, lda, m0, M, s * BK, K, tid);
            load_tile<VEC>(st + TILE, Bt, ldb, n0, N, s * BK, K, tid);
        }
        mg_cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        mg_cp_async_wait<STAGES - 2>();   // this thread's copies of tile kt have landed
        __syncthreads();               // everyone's have; everyone is done with tile kt-1
        const int nk = kt + STAGES - 1;
        if (nk < KT) {                 // refill the stage tile kt-1 used
            u8* st = smem + (nk % STAGES) * STAGE;
            load_tile<VEC>(st, A, lda, m0, M, nk * BK, K, tid);
            load_tile<VEC>(st + TILE, Bt, ldb, n0, N, nk * BK, K, tid);
        }
        mg_cp_async_commit();
        const u8* st = smem + (kt % STAGES) * STAGE;
        mma_tile(st, st + TILE, acc, wm, wn, lane);
    }
    mg_cp_async_wait<0>();

    const bool pair_ok = ((ldc & 1) == 0) && ((reinterpret_cast<unsigned long long>(C) & 7) == 0);
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int row = m0 + wm * 64 + i * 16 + g;
            const int col = n0 + wn * 64 + j * 8 + 2 * tq;
            store_pair(C, ldc, M, N, row, col, mg_int8_out(acc[i][j][0], scale),
                       mg_int8_out(acc[i][j][1], scale), pair_ok);
            store_pair(C, ldc, M, N, row + 8, col, mg_int8_out(acc[i][j][2], scale),
                       mg_int8_out(acc[i][j][3], scale), pair_ok);
        }
}

}  // namespace mi8

// ------------------------------------------------------------- wgmma kernel --
namespace mi8w {
using namespace mi8;
constexpr int BM = 128, BN = 256, BK = 128, NT = 256, STAGES = 4;
constexpr int A_BYTES = BM * BK;              // 16384
constexpr int B_BYTES = BN * BK;              // 32768
constexpr int STAGE = A_BYTES + B_BYTES;      // 49152 (a multiple of 1024)
constexpr int SMEM = STAGES * STAGE + 1024;   // + slack to align the base to 1024 B

// K-major operand tile of ROWS x 128 bytes in the 128-byte swizzle layout at shared
// address `base` (1024-aligned): 16-byte chunk c of row r lands at r*128 + ((c ^ (r&7))*16).
template <int ROWS>
__device__ __forceinline__ void load_tile_sw128(unsigned base, const i8* g, long long ld, int row0,
                                                int rows, int k0, int K, int tid) {
#pragma unroll
    for (int i = 0; i < ROWS * 8 / NT; ++i) {
        const int c = tid + i * NT;
        const int r = c >> 3, ch = c & 7;
        const int gr = row0 + r, gk = k0 + ch * 16;
        const int n = chunk_bytes(gr, rows, gk, K);
        const i8* src = n > 0 ? g + (long long)gr * ld + gk : g;
        mg_cp_async16(base + r * 128 + ((ch ^ (r & 7)) << 4), src, n);
    }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ void gemm(const i8* __restrict__ A, const i8* __restrict__ Bt,
                                     float* __restrict__ C, long long lda, long long ldb,
                                     long long ldc, int M, int N, int K, float scale,
                                     unsigned char* dsmem) {
    const int tid = threadIdx.x, lane = tid & 31;
    const int wg = tid >> 7, wl = (tid >> 5) & 3;   // warpgroup, warp within it
    const unsigned base = (mg_smem_addr(dsmem) + 1023u) & ~1023u;
    int m0, n0;
    mg_tile_origin(M, N, BM, BN, GROUP_M, m0, n0);
    const int KT = (K + BK - 1) / BK;

    int acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0;

    // Loads run STAGES-2 tiles ahead: the stage refilled in iteration kt was read by the
    // wgmma group of iteration kt-2, which every warpgroup has waited for (wait_group 1 at
    // the end of kt-1) before the barrier of iteration kt.
#pragma unroll
    for (int s = 0; s < STAGES - 2; ++s) {
        if (s < KT) {
            const unsigned st = base + s * STAGE;
            load_tile_sw128<BM>(st, A, lda, m0, M, s * BK, K, tid);
            load_tile_sw128<BN>(st + A_BYTES, Bt, ldb, n0, N, s * BK, K, tid);
        }
        mg_cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        mg_cp_async_wait<STAGES - 3>();   // this thread's copies of tile kt have landed
        mg_fence_proxy_async();        // ... and are visible to the async proxy (wgmma)
        __syncthreads();
        const int nk = kt + STAGES - 2;
        if (nk < KT) {
            const unsigned st = base + (nk % STAGES) * STAGE;
            load_tile_sw128<BM>(st, A, lda, m0, M, nk * BK, K, tid);
            load_tile_sw128<BN>(st + A_BYTES, Bt, ldb, n0, N, nk * BK, K, tid);
        }
        mg_cp_async_commit();
        const unsigned st = base + (kt % STAGES) * STAGE;
        const unsigned long long da = mg_wgmma_desc(st + wg * 64 * BK, 16, 1024);
        const unsigned long long db = mg_wgmma_desc(st + A_BYTES, 16, 1024);
        mg_wgmma_fence();
#pragma unroll
        for (int s = 0; s < BK / 32; ++s)   // +32 B along K = +2 in the 16-B address field
            mg_wgmma_s8_m64n256k32(acc, da + 2 * s, db + 2 * s);
        mg_wgmma_commit();
        mg_wgmma_wait<1>();
    }
    mg_wgmma_wait<0>();
    mg_cp_async_wait<0>();

    const bool pair_ok = ((ldc & 1) == 0) && ((reinterpret_cast<unsigned long long>(C) & 7) == 0);
    const int g = lane >> 2, tq = lane & 3;
    const int row = m0 + wg * 64 + wl * 16 + g;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
        const int col = n0 + i * 8 + 2 * tq;
        store_pair(C, ldc, M, N, row, col, mg_int8_out(acc[4 * i], scale),
                   mg_int8_out(acc[4 * i + 1], scale), pair_ok);
        store_pair(C, ldc, M, N, row + 8, col, mg_int8_out(acc[4 * i + 2], scale),
                   mg_int8_out(acc[4 * i + 3], scale), pair_ok);
    }
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace mi8w

extern __shared__ __align__(16) unsigned char mi8_dyn_smem[];
static_assert(mi8::SMEM == 81920, "MI8_SMEM in the header");
static_assert(mi8w::SMEM == 197632, "MI8W_SMEM in the header");

#define MI8_ARGS                                                                               \
    const signed char* __restrict__ A, const signed char* __restrict__ Bt, float* __restrict__ C, \
        long long lda, long long ldb, long long ldc, int M, int N, int K, float scale

extern "C" __global__ void __launch_bounds__(mi8::NT, 2) matmul_int8_tn_v(MI8_ARGS) {
    mi8::gemm<true>(A, Bt, C, lda, ldb, ldc, M, N, K, scale, mi8_dyn_smem);
}
extern "C" __global__ void __launch_bounds__(mi8::NT, 2) matmul_int8_tn_s(MI8_ARGS) {
    mi8::gemm<false>(A, Bt, C, lda, ldb, ldc, M, N, K, scale, mi8_dyn_smem);
}
extern "C" __global__ void __launch_bounds__(mi8w::NT, 1) matmul_int8_wgmma(MI8_ARGS) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    mi8w::gemm(A, Bt, C, lda, ldb, ldc, M, N, K, scale, mi8_dyn_smem);
#else
    asm volatile("trap;");   // built without sm_90a: wgmma does not exist here
#endif
}

// B int8 [K,N] (row stride ldb_in) -> Bt [N, ldb_out]: Bt[n, k] = B[k, n] for k < K, 0 for
// K <= k < ldb_out. 64 x 64 tiles through shared memory (coalesced reads and writes).
extern "C" __global__ void __launch_bounds__(256) matmul_int8_transpose(
    const signed char* __restrict__ B, signed char* __restrict__ Bt, long long ldb_in,
    long long ldb_out, int K, int N) {
    __shared__ signed char tile[64][65];
    const int n0 = blockIdx.x * 64, k0 = blockIdx.y * 64, tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int e = tid + i * 256, r = e >> 6, c = e & 63;   // r: k, c: n
        const int k = k0 + r, n = n0 + c;
        tile[r][c] = (k < K && n < N) ? B[(long long)k * ldb_in + n] : (signed char)0;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int e = tid + i * 256, r = e >> 6, c = e & 63;   // r: n, c: k
        const int n = n0 + r, k = k0 + c;
        if (n < N && k < ldb_out) Bt[(long long)n * ldb_out + k] = tile[c][r];
    }
}
