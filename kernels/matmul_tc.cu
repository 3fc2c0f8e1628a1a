// matmul_tc.cu - tensor-core matmul for the ops matmul_tc, matmul_tc_bf16 (sync
// loads) and matmul_tc_async, matmul_tc_bf16_async (cp.async pipeline), any sm_80+.
// On sm_90, when the 16-byte rule holds and no split-K applies, both the sync and the
// async ops run matmul_tc_wgmma.cu instead (sync: matmul_tc_wgsync_*, async:
// matmul_tc_tma_*). Issue 4 ruling (the lead): "sync" means the global->shared copies are
// synchronous (ld.global -> registers -> st.shared; no cp.async, no TMA); the MMA
// instruction may be wgmma on sm_90(a), while mma.sync (this file) stays the path on
// sm_80/89 and for the _s (element-load) and split-K cases.
//
// MATH  C[b] = A[b] . B[b]   A: [M,K], B: [K,N] of f16 or bf16, C: [M,N] f32.
//   Products of the 16-bit inputs are summed in f32 by
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32; no other
//   rounding happens, so the NumPy oracle is A.astype(f32) @ B.astype(f32).
//   Any M, N, K >= 1: rows/cols past M, N and the K tail are zero-filled on the
//   way into shared memory (they add exact zeros) and stores are predicated.
//
// ENTRY POINTS (extern "C", one template instance each; all take the same args)
//   matmul_tc_{f16,bf16}_{LAYOUT}_v       sync, 128x128 block, 16-byte loads
//   matmul_tc_{f16,bf16}_{LAYOUT}_v_w8    sync, 128x256 block (8 warps), 16-byte loads
//   matmul_tc_{f16,bf16}_{LAYOUT}_s       sync, 128x128 block, element loads
//   matmul_tc_async_{f16,bf16}_{LAYOUT}_{v,s}   4-stage cp.async pipeline, 128x128
//   matmul_tc_splitk_sum{,4}              the split-K reduction (end of this file)
//   LAYOUT = <A><B>, each letter n or t:
//     A 'n': A[m,k] at A[m*lda + k]    (row-major [M,K], K contiguous)
//     A 't': A[m,k] at A[k*lda + m]    (stored [K,M], M contiguous; e.g. Aᵀ of dB = Aᵀ·dC)
//     B 'n': B[k,n] at B[k*ldb + n]    (row-major [K,N], N contiguous)
//     B 't': B[k,n] at B[n*ldb + k]    (stored [N,K], K contiguous; a transposed view,
//                                       nn.Linear's weight, or Bᵀ of dA = dC·Bᵀ)
//
// ARGUMENTS (in this order; PyCUDA prepare format "PPPqqqqqqiiii")
//   const u16* A, const u16* B, float* C      (u16 = raw f16/bf16 bits)
//   int64 lda, ldb, ldc          leading dimensions in elements (C: C[m,n] at C[m*ldc + n])
//   int64 strideA, strideB, strideC   batch strides in elements; strideB may be 0 (B shared
//                                     by the whole batch), strideA may be 0 too
//   int M, N, K, batch           batch >= 1 (leading dims of A flattened)
//
// LAUNCH (what the host must do)
//   grid = (ceil(M/128) * ceil(N/BN), 1, min(batch, 65535)); blocks loop over the batch
//   with stride gridDim.z.
//     _v, _s:      BN = 128, block (128,1,1), static shared memory (<= 40960 B), pass 0.
//     _v_w8:       BN = 256, block (256,1,1), dynamic shared memory 61440 B.
//     async _v/_s: BN = 128, block (128,1,1), dynamic shared memory 81920 B.
//   Dynamic sizes over 48 KB need CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES raised
//   first (PyCUDA: f.set_attribute(function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, n)).
//   Layout (no copies): for a logical operand X[R,C] with element strides (s_r, s_c):
//     s_c == 1 -> 'n' with ld = s_r; else s_r == 1 -> 't' with ld = s_c; else the host
//     makes X contiguous first. (For R == 1 or C == 1 either works.)
//   _v or _s (the rule that makes 16-byte loads legal):
//     _v iff lda % 8 == 0, ldb % 8 == 0, strideA % 8 == 0, strideB % 8 == 0, and the A and
//     B base pointers are 16-byte aligned; otherwise _s. M, N, K need NOT be multiples of
//     8 for _v: a 16-byte chunk that straddles the end of a row is read partially
//     (cp.async src-size / element loads for that chunk) and zero-filled.
//   Sync ops, _v vs _v_w8 (measured, H200): _v_w8 when ceil(N/256)*2 == ceil(N/128) (no
//     extra N padding) and ceil(M/128)*ceil(N/256)*batch >= SMs/2; else _v.
//   C: any ldc >= N; float2 stores when ldc is even and C is 8-byte aligned.
//   Split-K (host only, both files): the batch strides express K chunks - entry s reads
//     A and B advanced by s*Kc along K and writes slab s of an f32 workspace, with
//     K = Kc; see minigrad/backend/cuda/ops_matmul.py and matmul_tc_splitk_sum below.
//
// ALGORITHM AND TILES
//   Block tile 128(M) x BN(N) x 32(K), warps 2 x BN/64, each warp a 64 x 64 tile
//   = 4 (m16) x 8 (n8) mma tiles, 128 f32 accumulators per thread. A 64x64 warp tile
//   needs 8 ldmatrix.x4 per 32 mma (k16 step), which keeps shared-memory bandwidth
//   under the tensor-core rate; 128 threads x <=255 regs gives 2 blocks per SM.
//   Shared tiles keep the operand's global layout (so a 16-byte global chunk is a
//   16-byte shared chunk) with each row padded by 16 bytes: rows are 80 B (K-major
//   tile of 32) or 272/528 B (MN-major tile of 128/256) apart, so the 8 row addresses
//   of one ldmatrix hit 8 distinct 16-byte bank groups (no conflicts). The fragment
//   orientation is fixed by ldmatrix vs ldmatrix.trans:
//     A 'n' [m][k]: ldmatrix        A 't' [k][m]: ldmatrix.trans
//     B 't' [n][k]: ldmatrix        B 'n' [k][n]: ldmatrix.trans
//   Sync kernels: two shared buffers; tile k+1 is loaded global -> registers before
//   the mma work on tile k and stored to the other buffer after it (one barrier per
//   K step). Async kernels: 4 shared stages filled by cp.async.cg (16 B, L1 bypass),
//   3 tiles in flight while one is computed (cp.async.wait_group 2, one barrier per
//   K step). The _s variants fill the same buffers with element loads.
//   Blocks are ordered in groups of 8 block-rows (GROUP_M) so that consecutive
//   blocks share A and B panels in L2.
//
// MEASURED (H200, 2026-11-27, benchmarks/notes_matmul.md): 4096^3 f16 sync _v 220,
//   _v_w8 254, async _v 329 TFLOP/s vs cuBLAS (torch.mm out_dtype=f32) 731-743. These
//   kernels are L2->SM-bandwidth and latency bound on Hopper (128x128 tiles need
//   ~64 flop per byte fetched); the mma.sync ceiling there is ~615 TFLOP/s.
// RESOURCES (nvcc 13.0 -Xptxas -v): 232-255 registers, no spills on sm_90; on sm_80
//   matmul_tc_{f16,bf16}_nt_v spills 24 bytes (3 registers), the rest none.
#include "common.cuh"

namespace mtc {

typedef unsigned short u16;

constexpr int BM = 128, BK = 32;
constexpr int WTM = 64, WTN = 64;    // warp tile
constexpr int PAD = 8;               // 16-bit elements of padding per shared row (16 B)
constexpr int GROUP_M = 8;

// Block width BN = 128 (4 warps, 2 x 2) or 256 (8 warps, 2 x 4): NT = BN threads.
template <int BN> struct Geo {
    static constexpr int NT = BN;
    static constexpr int WARPS_N = BN / WTN;
    static constexpr int ASYNC_STAGES = BN == 128 ? 4 : 3;
};

// A shared tile of ROWS x COLS elements in the operand's own layout, rows padded.
template <int ROWS, int COLS> struct Tile {
    static constexpr int rows = ROWS, cols = COLS, stride = COLS + PAD;
    static constexpr int elems = ROWS * (COLS + PAD);
};
template <bool AT> using ATile = Tile<AT ? BK : BM, AT ? BM : BK>;   // 'n': [m][k], 't': [k][m]
template <bool BT, int BN> using BTile = Tile<BT ? BN : BK, BT ? BK : BN>;   // 'n': [k][n], 't': [n][k]
template <bool AT, bool BT, int BN> struct Stage {
    static constexpr int elems = ATile<AT>::elems + BTile<BT, BN>::elems;
};
// Largest stage (layout nt): 2 * (128 + BN) * 40 elements.
template <int BN> struct MaxStage {
    static constexpr int bytes = 2 * (128 + BN) * (32 + PAD);
};

struct F16 {
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4],
                                               unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
struct BF16 {
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4],
                                               unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

// ---- operand tile loader ---------------------------------------------------
// One thread's share of one operand tile. The tile is ROWS x COLS elements of the
// global operand, rows `ld` apart; a thread moves W elements at a time (W = 8: one
// 16-byte chunk, the _v kernels; W = 1: the _s kernels). Thread tid owns the pieces
// at tile column (tid % (COLS/W)) * W and tile rows tid / (COLS/W) + i * RSTEP,
// i < P: consecutive threads read consecutive pieces of a row (coalesced), and the
// per-thread state is one pointer, one row and one column, advanced by BK per K step
// (along the columns when K is the contiguous dim of this operand, else the rows).
// Pieces past row_lim / col_lim read as zero; a 16-byte chunk that straddles
// col_lim is read partially (cp.async src-size, or element loads) and zero-filled.
template <class TL, bool VEC, bool K_IS_COL, int NT>
struct Loader {
    static constexpr int W = VEC ? 8 : 1;
    static constexpr int CPR = TL::cols / W;      // pieces per row
    static constexpr int RSTEP = NT / CPR;        // rows between a thread's pieces
    static constexpr int P = TL::rows / RSTEP;    // pieces per thread
    static_assert(NT % CPR == 0 && TL::rows % RSTEP == 0, "tile must split evenly over threads");

    const u16* g;        // operand base (any valid address for 0-byte copies)
    const u16* p;        // global address of piece 0 of the current tile
    long long ld;
    int row, col;        // global row / col of piece 0
    int row_lim, col_lim;
    int soff;            // shared offset (elements) of piece 0 within the tile

    __device__ __forceinline__ void init(const u16* g_, long long ld_, int row0, int col0,
                                         int row_lim_, int col_lim_, int tid) {
        g = g_; ld = ld_; row_lim = row_lim_; col_lim = col_lim_;
        row = row0 + tid / CPR;
        col = col0 + (tid % CPR) * W;
        soff = (tid / CPR) * TL::stride + (tid % CPR) * W;
        p = g + (long long)row * ld + col;
    }
    __device__ __forceinline__ void advance() {   // to the next K tile
        if (K_IS_COL) { col += BK; p += BK; }
        else          { row += BK; p += (long long)BK * ld; }
    }
    __device__ __forceinline__ int valid(int i, int ncol) const {   // elements of piece i
        return row + i * RSTEP < row_lim ? ncol : 0;
    }
    __device__ __forceinline__ int ncols() const { return min(max(col_lim - col, 0), W); }

    // cp.async 16-byte chunks (VEC) straight into shared memory; element loads otherwise.
    __device__ __forceinline__ void copy_async(u16* sm) const {
        const int nc = ncols();
#pragma unroll 4   // all 4 chunks (VEC); batches of 4 element loads (_s) to bound registers
        for (int i = 0; i < P; ++i) {
            if (VEC) {
                const int n = valid(i, nc);
                const u16* src = n > 0 ? p + i * RSTEP * ld : g;
                mg_cp_async16(mg_smem_addr(sm + soff + i * RSTEP * TL::stride), src, n * 2);
            } else {
                u16 x = 0;
                if (valid(i, nc)) x = p[i * RSTEP * ld];
                sm[soff + i * RSTEP * TL::stride] = x;
            }
        }
    }
    // VEC only: global -> registers (sync kernels), then registers -> shared.
    __device__ __forceinline__ void fetch(uint4 (&v)[P]) const {
        const int nc = ncols();
#pragma unroll
        for (int i = 0; i < P; ++i) {
            const int n = valid(i, nc);
            const u16* src = p + i * RSTEP * ld;
            if (n == 8) {
                v[i] = __ldg(reinterpret_cast<const uint4*>(src));
            } else {                     // tail or outside: element loads, zero fill
                unsigned w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    if (e < n) w[e >> 1] |= (unsigned)src[e] << (16 * (e & 1));
                v[i] = make_uint4(w[0], w[1], w[2], w[3]);
            }
        }
    }
    __device__ __forceinline__ void stash(u16* sm, const uint4 (&v)[P]) const {
#pragma unroll
        for (int i = 0; i < P; ++i)
            *reinterpret_cast<uint4*>(sm + soff + i * RSTEP * TL::stride) = v[i];
    }
};

// ---- one K tile (BK = 32) of mma work for this warp's 64 x 64 tile ----------
template <class DT, bool AT, bool BT, int BN>
__device__ __forceinline__ void mma_tile(const u16* sA, const u16* sB, float (&acc)[4][8][4],
                                         int wm, int wn, int lane) {
    using TA = ATile<AT>;
    using TB = BTile<BT, BN>;
    const int mi = lane >> 3, r8 = lane & 7;
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
        unsigned a[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m0 = wm * WTM + i * 16;
            if (!AT)   // lanes 0-15: rows m0..m0+15 at k0; lanes 16-31: same rows at k0+8
                mg_ldmatrix_x4(a[i], mg_smem_addr(sA + (m0 + (lane & 15)) * TA::stride
                                                  + ks + (lane >> 4) * 8));
            else       // matrix mi = (m half mi&1, k half mi>>1); its 8 rows are k rows
                mg_ldmatrix_x4_trans(a[i], mg_smem_addr(sA + (ks + (mi >> 1) * 8 + r8) * TA::stride
                                                        + m0 + (mi & 1) * 8));
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {   // 16 columns of n = two n8 mma tiles
            const int n0 = wn * WTN + j * 16;
            unsigned t[4];
            if (BT)    // matrix mi = (n half mi>>1, k half mi&1); rows are n rows
                mg_ldmatrix_x4(t, mg_smem_addr(sB + (n0 + (mi >> 1) * 8 + r8) * TB::stride
                                               + ks + (mi & 1) * 8));
            else       // rows are k rows
                mg_ldmatrix_x4_trans(t, mg_smem_addr(sB + (ks + (mi & 1) * 8 + r8) * TB::stride
                                                     + n0 + (mi >> 1) * 8));
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                DT::mma(acc[i][2 * j], a[i], t[0], t[1]);
                DT::mma(acc[i][2 * j + 1], a[i], t[2], t[3]);
            }
        }
    }
}

__device__ __forceinline__ void store_c(float* C, long long ldc, int M, int N, int m0, int n0,
                                        int wm, int wn, int lane, const float (&acc)[4][8][4]) {
    const bool pair = ((ldc & 1) == 0) && ((reinterpret_cast<unsigned long long>(C) & 7) == 0);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = m0 + wm * WTM + i * 16 + (lane >> 2) + 8 * h;
            if (row >= M) continue;
            float* crow = C + (long long)row * ldc;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int col = n0 + wn * WTN + j * 8 + (lane & 3) * 2;
                mg_store2(crow, col, N, pair, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            }
        }
}

template <class DT, bool AT, bool BT, bool VEC, bool ASYNC, int BN>
__device__ __forceinline__ void gemm(const u16* __restrict__ A, const u16* __restrict__ B,
                                     float* __restrict__ C, long long lda, long long ldb,
                                     long long ldc, long long sA, long long sB, long long sC,
                                     int M, int N, int K, int batch, u16* smem) {
    using TA = ATile<AT>;
    using TB = BTile<BT, BN>;
    constexpr int NT = Geo<BN>::NT;
    constexpr int STAGE = Stage<AT, BT, BN>::elems;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / Geo<BN>::WARPS_N, wn = warp % Geo<BN>::WARPS_N;
    int m0, n0;
    mg_tile_origin(M, N, BM, BN, GROUP_M, m0, n0);
    const int KT = (K + BK - 1) / BK;

    for (int bat = blockIdx.z; bat < batch; bat += gridDim.z) {
        // A 'n' tile: rows m, cols k (K along cols); A 't': rows k, cols m. B likewise.
        Loader<TA, VEC, !AT, NT> la;
        Loader<TB, VEC, BT, NT> lb;
        if (AT) la.init(A + bat * sA, lda, 0, m0, K, M, tid);
        else    la.init(A + bat * sA, lda, m0, 0, M, K, tid);
        if (BT) lb.init(B + bat * sB, ldb, n0, 0, N, K, tid);
        else    lb.init(B + bat * sB, ldb, 0, n0, K, N, tid);

        float acc[4][8][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

        if (ASYNC) {
            // ---- multi-stage cp.async pipeline: S-1 tiles in flight ----
            constexpr int S = Geo<BN>::ASYNC_STAGES;
#pragma unroll
            for (int s = 0; s < S - 1; ++s) {
                if (s < KT) {
                    la.copy_async(smem + s * STAGE);
                    lb.copy_async(smem + s * STAGE + TA::elems);
                    la.advance();
                    lb.advance();
                }
                mg_cp_async_commit();
            }
            for (int kt = 0; kt < KT; ++kt) {
                mg_cp_async_wait<S - 2>();     // this thread's copies of tile kt have landed
                __syncthreads();               // everyone's have; everyone is done with tile kt-1
                if (kt + S - 1 < KT) {         // refill the stage of tile kt-1
                    u16* st = smem + ((kt + S - 1) % S) * STAGE;
                    la.copy_async(st);
                    lb.copy_async(st + TA::elems);
                    la.advance();
                    lb.advance();
                }
                mg_cp_async_commit();
                const u16* st = smem + (kt % S) * STAGE;
                mma_tile<DT, AT, BT, BN>(st, st + TA::elems, acc, wm, wn, lane);
            }
        } else if (VEC) {
            // ---- register-staged double buffer ----
            uint4 ra[decltype(la)::P], rb[decltype(lb)::P];
            la.fetch(ra);
            lb.fetch(rb);
            la.stash(smem, ra);
            lb.stash(smem + TA::elems, rb);
            __syncthreads();
            for (int kt = 0; kt < KT; ++kt) {
                const bool more = kt + 1 < KT;
                if (more) {                    // next tile global -> registers, in flight
                    la.advance();
                    lb.advance();
                    la.fetch(ra);
                    lb.fetch(rb);
                }
                const u16* st = smem + (kt & 1) * STAGE;
                mma_tile<DT, AT, BT, BN>(st, st + TA::elems, acc, wm, wn, lane);
                if (more) {                    // registers -> the other buffer
                    u16* nx = smem + ((kt + 1) & 1) * STAGE;
                    la.stash(nx, ra);
                    lb.stash(nx + TA::elems, rb);
                }
                __syncthreads();
            }
        } else {
            // ---- element loads into a double buffer ----
            la.copy_async(smem);
            lb.copy_async(smem + TA::elems);
            __syncthreads();
            for (int kt = 0; kt < KT; ++kt) {
                if (kt + 1 < KT) {
                    u16* nx = smem + ((kt + 1) & 1) * STAGE;
                    la.advance();
                    lb.advance();
                    la.copy_async(nx);
                    lb.copy_async(nx + TA::elems);
                }
                const u16* st = smem + (kt & 1) * STAGE;
                mma_tile<DT, AT, BT, BN>(st, st + TA::elems, acc, wm, wn, lane);
                __syncthreads();
            }
        }
        store_c(C + bat * sC, ldc, M, N, m0, n0, wm, wn, lane, acc);
        __syncthreads();   // shared memory is reused by the next batch entry
    }
}

}  // namespace mtc

extern __shared__ __align__(16) unsigned short mtc_dyn_smem[];

#define MTC_ARGS                                                                          \
    const unsigned short* __restrict__ A, const unsigned short* __restrict__ B,           \
        float* __restrict__ C, long long lda, long long ldb, long long ldc, long long sA, \
        long long sB, long long sC, int M, int N, int K, int batch
#define MTC_PASS A, B, C, lda, ldb, ldc, sA, sB, sC, M, N, K, batch

#define MTC_SYNC(NAME, DT, AT, BT, VEC)                                                  \
    extern "C" __global__ void __launch_bounds__(128, 2) NAME(MTC_ARGS) {                \
        __shared__ __align__(16) unsigned short smem[2 * mtc::Stage<AT, BT, 128>::elems];\
        mtc::gemm<mtc::DT, AT, BT, VEC, false, 128>(MTC_PASS, smem);                     \
    }
#define MTC_ASYNC(NAME, DT, AT, BT, VEC)                                                 \
    extern "C" __global__ void __launch_bounds__(128, 2) NAME(MTC_ARGS) {                \
        mtc::gemm<mtc::DT, AT, BT, VEC, true, 128>(MTC_PASS, mtc_dyn_smem);              \
    }
#define MTC_SYNC_W8(NAME, DT, AT, BT)                                                    \
    extern "C" __global__ void __launch_bounds__(256, 1) NAME(MTC_ARGS) {                \
        mtc::gemm<mtc::DT, AT, BT, true, false, 256>(MTC_PASS, mtc_dyn_smem);            \
    }
#define MTC_ALL(MAC, PFX)                                                                \
    MAC(PFX##f16_nn_v, F16, false, false, true)  MAC(PFX##f16_nn_s, F16, false, false, false)  \
    MAC(PFX##f16_nt_v, F16, false, true, true)   MAC(PFX##f16_nt_s, F16, false, true, false)   \
    MAC(PFX##f16_tn_v, F16, true, false, true)   MAC(PFX##f16_tn_s, F16, true, false, false)   \
    MAC(PFX##f16_tt_v, F16, true, true, true)    MAC(PFX##f16_tt_s, F16, true, true, false)    \
    MAC(PFX##bf16_nn_v, BF16, false, false, true) MAC(PFX##bf16_nn_s, BF16, false, false, false) \
    MAC(PFX##bf16_nt_v, BF16, false, true, true)  MAC(PFX##bf16_nt_s, BF16, false, true, false)  \
    MAC(PFX##bf16_tn_v, BF16, true, false, true)  MAC(PFX##bf16_tn_s, BF16, true, false, false)  \
    MAC(PFX##bf16_tt_v, BF16, true, true, true)   MAC(PFX##bf16_tt_s, BF16, true, true, false)

// Shared memory (bytes) the host passes at launch; see the header.
#define MTC_ASYNC_SMEM (4 * mtc::MaxStage<128>::bytes)     // matmul_tc_async_*: 81920
#define MTC_SYNC_W8_SMEM (2 * mtc::MaxStage<256>::bytes)   // matmul_tc_*_v_w8: 61440
static_assert(MTC_ASYNC_SMEM == 81920 && MTC_SYNC_W8_SMEM == 61440, "documented in the header");
static_assert(2 * mtc::Stage<false, true, 128>::elems * 2 == 40960, "documented in the header");

MTC_ALL(MTC_SYNC, matmul_tc_)
MTC_ALL(MTC_ASYNC, matmul_tc_async_)
MTC_SYNC_W8(matmul_tc_f16_nn_v_w8, F16, false, false)
MTC_SYNC_W8(matmul_tc_f16_nt_v_w8, F16, false, true)
MTC_SYNC_W8(matmul_tc_f16_tn_v_w8, F16, true, false)
MTC_SYNC_W8(matmul_tc_f16_tt_v_w8, F16, true, true)
MTC_SYNC_W8(matmul_tc_bf16_nn_v_w8, BF16, false, false)
MTC_SYNC_W8(matmul_tc_bf16_nt_v_w8, BF16, false, true)
MTC_SYNC_W8(matmul_tc_bf16_tn_v_w8, BF16, true, false)
MTC_SYNC_W8(matmul_tc_bf16_tt_v_w8, BF16, true, true)

// ---- split-K reduction ------------------------------------------------------
// matmul_tc_splitk_sum(const float* W, float* C, int64 n, int S, int batch)
// matmul_tc_splitk_sum4(same)   (PyCUDA format "PPqii")
//   C[b*n + i] = (...((W[b,0,i] + W[b,1,i]) + W[b,2,i]) + ...) + W[b,S-1,i]
//   with W[b,s,i] at W[(b*S + s)*n + i]: the S partial products of a split-K matmul
//   (see minigrad/backend/cuda/ops_matmul.py), added in the fixed order s = 0..S-1, so
//   the result is the same bits every run (no atomics). S >= 1, n >= 1.
//   _sum4: float4 loads/stores; needs n % 4 == 0 and W, C 16-byte aligned.
//   Launch: block (256,1,1); grid (any x, any y <= 65535, 1): threads stride over the
//   n (or n/4) items of an entry along x and over the entries along y.
__device__ __forceinline__ void mtc_add(float& a, float b) { a += b; }
__device__ __forceinline__ void mtc_add(float4& a, const float4& b) {
    a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
}
template <class T>
__device__ __forceinline__ void mtc_splitk_sum(const T* __restrict__ W, T* __restrict__ C,
                                               long long n, int S, int batch) {
    for (int b = blockIdx.y; b < batch; b += gridDim.y) {
        const T* w = W + (long long)b * S * n;
        T* c = C + (long long)b * n;
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
             i += (long long)gridDim.x * blockDim.x) {
            T acc = w[i];
#pragma unroll 4
            for (int s = 1; s < S; ++s) mtc_add(acc, w[s * n + i]);
            c[i] = acc;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) matmul_tc_splitk_sum(
    const float* __restrict__ W, float* __restrict__ C, long long n, int S, int batch) {
    mtc_splitk_sum<float>(W, C, n, S, batch);
}
extern "C" __global__ void __launch_bounds__(256) matmul_tc_splitk_sum4(
    const float* __restrict__ W, float* __restrict__ C, long long n, int S, int batch) {
    mtc_splitk_sum<float4>(reinterpret_cast<const float4*>(W), reinterpret_cast<float4*>(C),
                           n / 4, S, batch);
}
