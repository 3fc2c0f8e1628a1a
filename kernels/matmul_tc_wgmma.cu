// minigrad-arch: sm_90a
// matmul_tc_wgmma.cu - Hopper (sm_90a) kernels of the matmul family: wgmma (warpgroup
// MMA) fed three ways.
//   matmul_tc_tma_*     TMA + wgmma, warp-specialized, persistent, 2-CTA clusters with TMA
//                       multicast: the sm_90 path of matmul_tc_async / matmul_tc_bf16_async.
//   matmul_tc_wgsync_*  synchronous copies + wgmma: the sm_90 path of matmul_tc /
//                       matmul_tc_bf16. Issue 4 ruling (the lead): "sync" means that the
//                       global->shared copies are synchronous - ld.global into registers,
//                       st.shared - with no cp.async and no TMA; the MMA instruction may be
//                       wgmma on sm_90(a), while mma.sync (matmul_tc.cu) stays the path on
//                       sm_80/89 and wherever these kernels' rules do not hold.
//   matmul_tc_wgmma_*   cp.async + wgmma (the first Hopper kernels): the fallback of the
//                       async ops when a tensor map is refused, and their split-K path.
//   matmul_int8_tma_*   the tma pipeline for matmul_int8 (W8A8): int8 A [M,K] and Bt
//                       [N,K], s32 accumulators, C = f32(acc) * scale (see the end).
//
// MATH  C[b] = A[b] . B[b], A: [M,K], B: [K,N] f16 or bf16, C: [M,N] f32, products summed
//   in f32 by wgmma.mma_async.sync.aligned.m64nNk16.f32.{f16,bf16}: the same function as
//   matmul_tc.cu (oracle A.astype(f32) @ B.astype(f32)). Any M, N, K >= 1: TMA fills
//   everything outside the tensor with zeros (rows, columns and the K tail), the
//   synchronous and cp.async loaders zero-fill explicitly; stores are predicated.
//   Layout letters as matmul_tc.cu: A 'n' A[m*lda+k], A 't' A[k*lda+m]; B 'n'
//   B[k*ldb+n], B 't' B[n*ldb+k] (a transposed view: nn.Linear's weight, Bt of dA).
//
// ENTRY POINTS (extern "C")
//   matmul_tc_tma_{f16,bf16}_{nn,nt,tn,tt}_n{256,128}c{2,1}   block tile 128 x BN, c2: a
//       cluster of 2 CTAs (__cluster_dims__(2,1,1)) stacked along M that share B
//   matmul_tc_wgsync_{f16,bf16}_{nn,nt,tn,tt}_{n256c2,n256c1,n128c1}   block tile 128 x BN,
//       c2: a cluster of 2 CTAs stacked along M that share B (each loads half of it)
//   matmul_tc_wgmma_{f16,bf16}_{nn,nt,tn,tt}_n{256,128}      block tile 128 x BN
//   matmul_int8_tma_nt_n{256,128}c{2,1}   int8, 'nt' only (s8 wgmma reads both operands
//       K-major); tensor maps of int8 elements (CU_TENSOR_MAP_DATA_TYPE_UINT8) with the
//       same 128-byte boxes: A {128 k, 128 m}, Bt {128 k, BN/CM n}; a stage covers 128 of
//       K (the same bytes as 64 f16), each m64nBNk32.s32.s8.s8 wgmma 32 of them; the
//       epilogue is matmul_int8.cu's (__int2float_rn, then __fmul_rn by scale: bit-exact).
//       Arguments: the tma ones, then float scale ("...iiiiiii" + "f").
//       MEASURED (H200, 2026-11-29, benchmarks/quant.py through minigrad, two rounds): 8192^3
//       0.848 / 0.868 ms per call (kernel 0.80 / 0.78 ms, ~1270-1300 TOPS) against
//       torch._int_mm 1.20 / 1.23 ms (1.41-1.42x) and matmul_int8_wgmma (cp.async) 1.21 ms;
//       4096^3 0.167 / 0.161 ms (kernel 0.103 ms) against 0.174 / 0.183 ms (1.05-1.13x).
//
// ARGUMENTS
//   tma (PyCUDA format "Q"*pad/8 + "Q"*48 + "Pqqiiiiiiiii"):
//     CUtensorMap tmA, tmB, tmC (128 B each, by value, __grid_constant__), float* C,
//     int64 ldc, strideC, int M, N, K, batch, batA, batB, group, cmap, kchunk.
//     cmap = 1: C is written by TMA stores through tmC (see the epilogue below; tmC is
//       ignored, and may be zeros, when cmap = 0).
//     kchunk > 0 (split-K in one launch): batch entry j is the K chunk [j*kchunk,
//       min(K, (j+1)*kchunk)) of one product, written to C + j*strideC; kchunk a multiple
//       of the K step (64 f16/bf16, 128 int8), batch = ceil(K / kchunk) (no empty chunk),
//       batA = batB = 0, the maps over the whole K (the last chunk's tail is TMA's zeros).
//     PADDING: a 64-byte-aligned parameter sits at a 64-byte-aligned constant-bank
//     address and sm_90 parameters start at bank offset 0x210, so tmA is at parameter
//     offset 48 (cubin .nv.info EIATTR_KPARAM_INFO). A launcher that
//     packs the parameter buffer itself (PyCUDA) must put 48 bytes before tmA; read the
//     offset from the cubin (minigrad/backend/cuda/ops_matmul.py: tma_pad, kparam_offsets).
//   wgsync (format "PPPqqqqqqiiiii"): A, B, C, lda, ldb, ldc, strideA, strideB, strideC,
//     M, N, K, batch, group.
//   wgmma (format "PPPqqqqqqiiii"): as matmul_tc.cu.
//   Batch strides in elements (0: the operand is shared by the batch); `group` = unit
//   rows per raster group (8 for tma, 16 for wgsync: measured).
//
// LAUNCH (host side; only on a device of compute capability 9.0: the cubin is sm_90a)
//   Legal only under the 16-byte rule of matmul_tc.cu's _v kernels (lda, ldb, strideA,
//   strideB multiples of 8 elements, A and B 16-byte aligned); M, N, K anything.
//   tma, wgsync: block (384,1,1) = 3 warpgroups. Dynamic shared memory MTW_WS_SMEM_N256 =
//     MTW_WS_SMEM_N128 = 215040 B (4 stages of 48 KB or 6 of 32 KB, barriers, 16 KB of
//     epilogue scratch 1024-aligned, 1 KB of alignment); raise the attribute first.
//     Persistent grid:
//     units = ceil(ceil(M/128)/CM) * ceil(N/BN) * batch (CM = cluster size),
//     grid = (CM * min(units, SMs / CM), 1, 1) (a multiple of CM; 66 2-CTA clusters of
//     these kernels were co-resident on a 132-SM H200: cuOccupancyMaxActiveClusters).
//   tma tensor maps (cuTensorMapEncodeTiled, 16-bit type, rank 3 = {contiguous dim,
//     other dim, batch}, byte strides {2*ld, 2*strideX or the whole matrix when
//     strideX = 0}, SWIZZLE_128B, OOB fill zeros, L2 promotion 256 B), boxes:
//       A 'n' {64 k, 128 m};  A 't' {64 m, 64 k};  B 't' {64 k, BN/CM n};  B 'n' {64 n, 64 k}.
//     batA / batB = 1 when the operand has a batch stride, else 0 (batch coordinate 0).
//     Where the driver refuses a map, use matmul_tc_wgmma_*.
//   Tile choice (measured on H200; ops_matmul.ws_tile): BN = 256 iff
//     1.8 * ceil(b256/SMs) < ceil(b128/SMs) (b = 128 x BN tiles, times batch), else 128;
//     CM = 2 except BN = 128 with N <= 512 (CM = 1).
//   wgmma: block (256,1,1), grid (ceil(M/128)*ceil(N/BN), 1, min(batch, 65535)), dynamic
//     shared memory MTW_SMEM = 197632 B.
//   C: any ldc >= N; float2 stores when ldc is even and C 8-byte aligned.
//
// ALGORITHM (tma, wgsync: one template, mtw::ws_gemm)
//   Warpgroup 0 produces, warpgroups 1 and 2 consume; each consumer computes 64 x BN of
//   the 128 x BN tile (one m64nBNk16 wgmma per 16 of K, BN/2 f32 accumulators per
//   thread); K advances 64 per stage. Shared memory holds a ring of S stages (A tile
//   16 KB + B tile BN*128 B) in the canonical 128-byte-swizzled wgmma layouts (a
//   128-byte row of 64 elements, 16-byte chunk j of row r at chunk j ^ (r % 8)):
//     K-major (A 'n', B 't'): rows = m (n), descriptor SBO 1024; k16 step j: +32 B.
//     MN-major (A 't', B 'n'): rows = k, 64-wide m (n) blocks 8 KB apart: LBO 8192,
//       SBO 1024; k16 step j: +2048 B; wgmma's transpose bit set. So no operand is ever
//       transposed in memory (the TMA boxes / copies keep the global layout).
//   Two mbarriers per stage: full (the producer's arrival + the transaction bytes for
//   TMA; 128 producer-thread arrivals for wgsync, + the peer's B half as transaction
//   bytes with CM = 2) and empty (one arrival per consumer
//   warpgroup per CTA of the cluster: 2 * CM). A consumer waits on full, issues its 4
//   wgmma, commits, waits for the previous stage's wgmma (wgmma.wait_group 1) and then
//   releases that stage (on every CTA of its cluster: mapa + mbarrier.arrive
//   .shared::cluster). The producer waits on empty, then fills the stage:
//     tma: one thread; arrive.expect_tx(48 KB / 32 KB), then the A box(es) into its own
//       CTA and, with CM = 2, its half of the B tile multicast to both CTAs (each CTA
//       reads 32 KB per stage from L2 instead of 48 KB for n256); setmaxnreg: producer 40,
//       consumers 232.
//     wgsync: all 128 threads; ld.global (16 B; element loads for a chunk that crosses
//       the end of a row) into registers, st.shared, in two halves per stage (12 chunks
//       per thread for n256, 8 for n128), pipelined: PARTS halves are loading while one
//       is stored (3 for n256, 6 for n128); arrive after the second half of a stage.
//       n256c2: a CTA loads its A tile and half of the B tile (columns rank*128..+128;
//       16 chunks per thread per stage, 4 halves in flight) and stores that half into
//       both CTAs: st.shared into its own, st.async.shared::cluster.mbarrier::
//       complete_tx::bytes into the peer's (a store of the thread's registers that counts
//       its bytes on the peer's full barrier; thread 0 of each producer posts
//       arrive.expect_tx(16 KB) for the bytes coming in). A release.cluster arrival after
//       plain st.shared::cluster stores would be MEMBAR.ALL.GPU in the producer loop,
//       which waits for the loads in flight (measured: 0.43-0.51 at 4096^3). The
//       consumers run fence.proxy.async (generic-proxy writes that wgmma reads) after
//       their full-barrier wait, so that no fence in the producer waits for loads in
//       flight; setmaxnreg: producer 184 / consumers 160 (n256), 240 / 128 (n128).
//   Persistent: CTA (cluster) c takes units c, c + grid/CM, ...; a unit's row of tiles
//   and column are ordered in groups of `group` unit rows (L2 reuse). The epilogue
//   stores the f32 tile while the producer is already loading the next unit's stages:
//   straight from registers (float2 stores, 8 rows per warp instruction), or, where K <=
//   1024 and N >= 512 (the stores outweigh the MMA), staged through 2 KB of shared memory
//   per warp and written as whole 128-byte row segments (store_acc_staged; H200, f16,
//   M = 16384, K = 384: N = 1152 49 -> 42 us, N = 1536 57 -> 52 us; N = 384 and long K
//   unchanged, so they keep the direct stores). In the TMA kernels, where the host gives
//   a map of C (cmap: the same rule, N % 4 == 0 - a 16-byte chunk cut by N was written
//   whole, past N -, ldc % 4 == 0, C 16-byte aligned; f32 {N, M, batch}, box {32, 8, 1},
//   128-byte swizzle), the staged blocks go out by TMA stores instead (store_acc_tma:
//   the warps do not issue the stores; H200, same shapes, in one call: N = 1152 42.1 ->
//   39.7-39.9 us, N = 1536 53.8 -> 50.3-50.7 (n128c1), 51.5 -> 50.4 (n256c2); always
//   using it was slower at N = 384, K = 384: 22.6 -> 25.1). Clusters: barrier.cluster
//   after the barrier init (so that no remote arrival or multicast meets an uninitialised
//   barrier) and before exit (so that none targets an exited CTA).
//   wgmma_* (cp.async): 256 threads load all stages with cp.async (src-size zero fill),
//   S-2 tiles in flight (S = 4 for n256, 6 for n128), one block barrier per K tile.
//
// MEASURED (H200, 2026-11-27, benchmarks/notes_matmul.md, session 2; ratios against
//   torch.mm(out_dtype=f32) on the same card in the same process, worst of 5 medians):
//   tma n256c2: 4096^3 705-731 TFLOP/s = 0.96 (nn, nt, tn; f16 and bf16); 8192^3 633-662
//     = 0.97-1.00. n256c1 (no multicast): 604-646 = 0.82-0.85 at 4096^3. wgmma n256
//     (cp.async): 503-565 = 0.69-0.74.
//   wgsync n256: 256-295 TFLOP/s = 0.35-0.46 (mma.sync 128x256 of matmul_tc.cu: 236-279)
//     with the unpipelined producer; the pipelined one (2026-11-28, H200): 4096^3 0.61-0.63
//     (nn), 0.54-0.59 (nt, tn); 8192^3 0.62-0.65. With 3 halves in flight (72 KB per SM
//     instead of 48; 2026-11-29, H200): 4096^3 0.59-0.69 through minigrad in nine rounds
//     (34 of 36 >= 0.60), 8192^3 0.61-0.73; standalone with rotated inputs 0.55-0.61 /
//     0.61-0.66 (the 2-half code 0.55-0.59 / 0.60-0.64 in the same call).
//     The bound (session 16, loads-only probe: 0.41 / 0.34 / 0.29 ms at 4096^3 with 1 / 2 /
//     3 halves in flight) is the bytes the producer's registers keep in flight, hence
//     n256c2 (2026-11-29, H200): standalone, same process, 4096^3 0.60-0.68 against
//     n256c1 0.55-0.58, 8192^3 0.62-0.68 as c1; through minigrad (one round) 4096^3
//     0.65-0.68, 8192^3 0.67-0.72. Tried and dropped: 2-CTA clusters sharing B with two
//     halves in flight (session 6: 0.36-0.50); L1 no-allocate / .cg loads, L2 prefetch,
//     raster groups 8/32 (no gain); two producer warpgroups (512 threads: ptxas then caps
//     every thread at 128 registers, too few for a 64x256 accumulator).
// RESOURCES (nvcc 13.0 -Xptxas -v): tma, wgsync 168 registers at entry (setmaxnreg
//   rebalances; ptxas allocates each warpgroup's code within its setmaxnreg value), no
//   spills, no stack; SASS: HGMMA.64x256x16.F32 / 64x128x16,
//   UTMALDG.3D(.MULTICAST), SYNCS.* (mbarrier), USETMAXREG, LDG.E.128 + STS.128 (wgsync).
//   wgmma: n256 176-180 regs, n128 111-120, no spills.
#include "common.cuh"
#include "wgmma.cuh"   // wgmma fences, descriptors, MgWgmma

namespace mtw {

typedef unsigned short u16;

constexpr int BM = 128, BK = 64, NT = 256, GROUP_M = 8;
// The sync (ld.global) warp-specialized kernels, per tile width: the setmaxnreg split and
// PARTS, the half stages the producer keeps in flight in its registers (48 data registers
// each for BN 256, 32 for BN 128). setmaxnreg.inc only takes registers that the block's
// own setmaxnreg.dec released, so 128 x PRODUCER + 256 x CONSUMER <= 384 x 168 (the
// registers a thread starts with): a split of 65536 hung (H200). The consumers keep 128
// (BN 256) / 64 f32 accumulators. Measured (H200, standalone, 4096^3 / 8192^3, ours /
// torch.mm): BN 256 with 2 parts (168 / 168) 0.49-0.59 / 0.56-0.64, with 3 parts 0.55-0.61
// / 0.61-0.66; BN 128 with 2 / 4 / 6 parts 0.38-0.42 / 0.44-0.50 / 0.46-0.51 at 4096^3
// (benchmarks/notes_matmul.md, session 15).
// A thread of the 384-thread warp-specialized kernels starts with 65536 / 384 registers,
// rounded down to setmaxnreg's multiple of 8.
constexpr int WS_ENTRY_REGS = 168;
#ifndef WS_LDG_N256_PRODUCER
#define WS_LDG_N256_PRODUCER 184
#define WS_LDG_N256_CONSUMER 160
#define WS_LDG_N256_PARTS 3
#endif
#ifndef WS_LDG_N128_PRODUCER
#define WS_LDG_N128_PRODUCER 240
#define WS_LDG_N128_CONSUMER 128
#define WS_LDG_N128_PARTS 6
#endif
// In a 2-CTA cluster (n256c2) a CTA loads its A and half of B: 16 chunks per thread per
// stage instead of 24, so the same registers hold 4 halves (2 stages, 64 KB per SM)
#ifndef WS_LDG_N256C2_PARTS
#define WS_LDG_N256C2_PARTS 4
#endif
template <int BN, int CM> struct LdgSplit {
    static_assert(CM == 1 || BN == 256, "the sync kernels' clusters are n256c2 only");
    static constexpr int PRODUCER = BN == 256 ? WS_LDG_N256_PRODUCER : WS_LDG_N128_PRODUCER;
    static constexpr int CONSUMER = BN == 256 ? WS_LDG_N256_CONSUMER : WS_LDG_N128_CONSUMER;
    static constexpr int PARTS = CM == 2 ? WS_LDG_N256C2_PARTS
                                         : BN == 256 ? WS_LDG_N256_PARTS : WS_LDG_N128_PARTS;
    static_assert(128 * PRODUCER + 256 * CONSUMER <= 384 * WS_ENTRY_REGS, "the block's registers");
};
constexpr int SMEM_BYTES = 4 * (BM * BK * 2 + 256 * BK * 2) + 1024;   // 197632
static_assert(SMEM_BYTES == 6 * (BM * BK * 2 + 128 * BK * 2) + 1024, "both tiles use the same");

// Per element type: k per 128-byte shared-memory row (a stage's K) and the accumulator.
template <class DT> struct Elem { static constexpr int KE = 64; typedef float Acc; };
template <> struct Elem<MgS8> { static constexpr int KE = 128; typedef int Acc; };

template <int BN> struct Cfg {
    static constexpr int A_BYTES = BM * BK * 2;
    static constexpr int B_BYTES = BN * BK * 2;
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr int STAGES = BN == 256 ? 4 : 6;        // as many as fit in 227 KB
    static constexpr int SMEM = STAGES * STAGE_BYTES + 1024;   // + 1 KB to align to 1024
};
static_assert(Cfg<256>::SMEM == SMEM_BYTES && Cfg<128>::SMEM == SMEM_BYTES, "");

// One thread's share of one operand tile: ROWS x COLS elements of the global operand
// (rows `ld` apart), copied as 16-byte chunks into the 128-byte-swizzled layout.
// K-major tiles are ROWS = 128|256 (m or n) x COLS = 64 (k); MN-major tiles are
// ROWS = 64 (k) x COLS = 128|256 (m or n), stored as COLS/64 blocks of ROWS x 128 B.
// Thread tid owns chunk column tid % CPR and rows tid / CPR + i * RSTEP.
template <int ROWS, int COLS, bool K_IS_COL>
struct Loader {
    static constexpr int CPR = COLS / 8;
    static constexpr int RSTEP = NT / CPR;
    static constexpr int P = ROWS / RSTEP;
    static_assert(NT % CPR == 0 && ROWS % RSTEP == 0, "");

    const u16* g;
    const u16* p;          // global address of chunk 0 of the current tile
    long long ld;
    int row, col, row_lim, col_lim;
    int r0;                // tile row of chunk 0
    unsigned cbase;        // byte offset of the thread's 64-element block (MN-major tiles)
    int cc;                // 16-byte chunk within the 128-byte row (before swizzle)

    __device__ __forceinline__ void init(const u16* g_, long long ld_, int row0_, int col0_,
                                         int row_lim_, int col_lim_, int tid_) {
        g = g_; ld = ld_; row_lim = row_lim_; col_lim = col_lim_;
        r0 = tid_ / CPR;
        const int ch = tid_ % CPR;
        row = row0_ + r0;
        col = col0_ + ch * 8;
        cbase = (ch >> 3) * (ROWS * 128);
        cc = ch & 7;
        p = g + (long long)row * ld + col;
    }
    __device__ __forceinline__ void advance() {
        if (K_IS_COL) { col += BK; p += BK; }
        else          { row += BK; p += (long long)BK * ld; }
    }
    __device__ __forceinline__ void copy(unsigned sbase) const {
        const int nc = min(max(col_lim - col, 0), 8);
#pragma unroll
        for (int i = 0; i < P; ++i) {
            const int r = r0 + i * RSTEP;              // tile row (swizzle phase r % 8)
            const int n = row + i * RSTEP < row_lim ? nc : 0;
            const u16* src = n > 0 ? p + i * RSTEP * ld : g;
            mg_cp_async16(sbase + cbase + r * 128 + ((cc ^ (r & 7)) << 4), src, n * 2);
        }
    }
};

// Epilogue: accumulator i of thread (warp w4 of its warpgroup, lane) is row
// 16*w4 + lane/4 + 8*((i>>1)&1), col 8*(i>>2) + 2*(lane&3) + (i&1) of the
// warpgroup's 64 x BN tile, whose top-left is (r0, n0).
__device__ __forceinline__ float out_value(float v, float) { return v; }
__device__ __forceinline__ float out_value(int v, float scale) { return mg_int8_out(v, scale); }
template <int BN, class T>
__device__ __forceinline__ void store_acc(float* Cb, long long ldc, int M, int N, int r0, int n0,
                                          int wtid, const T (&acc)[BN / 2], float scale = 1.f) {
    const bool pair = ((ldc & 1) == 0) && ((reinterpret_cast<unsigned long long>(Cb) & 7) == 0);
    const int lane = wtid & 31, w4 = wtid >> 5;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = r0 + w4 * 16 + (lane >> 2) + 8 * h;
        if (row >= M) continue;
        float* crow = Cb + (long long)row * ldc;
#pragma unroll
        for (int q = 0; q < BN / 8; ++q) {
            const int col = n0 + q * 8 + (lane & 3) * 2;
            mg_store2(crow, col, N, pair, out_value(acc[4 * q + 2 * h], scale),
                      out_value(acc[4 * q + 2 * h + 1], scale));
        }
    }
}

// The warp-specialized kernels' epilogue goes through shared memory: a warp's 16 rows x
// 32 columns of f32 at a time are written to its 2 KB of scratch (16-byte chunk c of row r
// at chunk c ^ (r % 8): the accumulator layout's 8 rows per store then fall in distinct
// banks) and read back as whole 128-byte row segments, so that each st.global.v4 writes 4
// full 128-byte lines. Stored straight from the accumulator layout, each float2 store
// touched 8 rows' sectors: at M = 16384, N = 1536, K = 384 the store alone took 52 us of
// the product's 58 (2 TB/s; the MMA alone 21 us). Columns past N, rows past M are skipped;
// without 16-byte alignment (ldc % 4, C) the row segment goes out in float2 or floats.
#ifndef MTW_STAGED_MAX_KT
#define MTW_STAGED_MAX_KT 16      // K steps of 128 bytes: K <= 1024 (16-bit), 2048 (int8)
#endif
#ifndef MTW_STAGED_MIN_N
#define MTW_STAGED_MIN_N 512
#endif
template <int BN, class T>
__device__ __forceinline__ void store_acc_staged(float* Cb, long long ldc, int M, int N, int r0,
                                                 int n0, int wtid, const T (&acc)[BN / 2],
                                                 float scale, unsigned scratch) {
    const unsigned long long cb = reinterpret_cast<unsigned long long>(Cb);
    const bool quad = ((ldc & 3) == 0) && ((cb & 15) == 0);
    const bool pair = ((ldc & 1) == 0) && ((cb & 7) == 0);
    const int lane = wtid & 31, w4 = wtid >> 5;
    const int rw = r0 + w4 * 16;                      // this warp's first row
#pragma unroll
    for (int c = 0; c < BN / 32; ++c) {              // columns [32c, 32c + 32) of the tile
        __syncwarp();                                 // the last chunk's reads are done
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = (lane >> 2) + 8 * h;
#pragma unroll
            for (int qq = 0; qq < 4; ++qq) {
                const int q = 4 * c + qq, col = 8 * qq + 2 * (lane & 3);
                const unsigned at = scratch + r * 128 + ((((col >> 2) ^ (r & 7))) << 4) +
                                    (col & 3) * 4;
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" :: "r"(at),
                             "f"(out_value(acc[4 * q + 2 * h], scale)),
                             "f"(out_value(acc[4 * q + 2 * h + 1], scale)) : "memory");
            }
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; ++i) {                 // 4 rows of 128 bytes per instruction
            const int r = 4 * i + (lane >> 3), ch = lane & 7;
            float4 v;
            asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                         : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                         : "r"(scratch + r * 128 + ((ch ^ (r & 7)) << 4)) : "memory");
            const int row = rw + r, col = n0 + 32 * c + 4 * ch;
            if (row >= M || col >= N) continue;
            float* p = Cb + (long long)row * ldc + col;
            if (quad && col + 3 < N) {
                *reinterpret_cast<float4*>(p) = v;
            } else {
                mg_store2(p, 0, N - col, pair, v.x, v.y);
                if (col + 2 < N) mg_store2(p, 2, N - col, pair, v.z, v.w);
            }
        }
    }
}

template <class DT, bool AT, bool BT, int BN>
__device__ __forceinline__ void gemm(const u16* __restrict__ A, const u16* __restrict__ B,
                                     float* __restrict__ C, long long lda, long long ldb,
                                     long long ldc, long long sA, long long sB, long long sC,
                                     int M, int N, int K, int batch, unsigned char* smem_raw) {
    using CF = Cfg<BN>;
    constexpr int S = CF::STAGES;
    const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127;
    // stage s: A at base + s*STAGE_BYTES, B right after; base aligned to 1024 B
    const unsigned sraw = mg_smem_addr(smem_raw);
    const unsigned sbase = (sraw + 1023u) & ~1023u;
    int m0, n0;
    mg_tile_origin(M, N, BM, BN, GROUP_M, m0, n0);
    const int KT = (K + BK - 1) / BK;

    for (int bat = blockIdx.z; bat < batch; bat += gridDim.z) {
        Loader<AT ? BK : BM, AT ? BM : BK, !AT> la;
        Loader<BT ? BN : BK, BT ? BK : BN, BT> lb;
        if (AT) la.init(A + bat * sA, lda, 0, m0, K, M, tid);
        else    la.init(A + bat * sA, lda, m0, 0, M, K, tid);
        if (BT) lb.init(B + bat * sB, ldb, n0, 0, N, K, tid);
        else    lb.init(B + bat * sB, ldb, 0, n0, K, N, tid);

        float acc[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;

#pragma unroll
        for (int s = 0; s < S - 2; ++s) {
            if (s < KT) {
                la.copy(sbase + s * CF::STAGE_BYTES);
                lb.copy(sbase + s * CF::STAGE_BYTES + CF::A_BYTES);
                la.advance();
                lb.advance();
            }
            mg_cp_async_commit();
        }
        for (int kt = 0; kt < KT; ++kt) {
            mg_cp_async_wait<S - 3>();     // this thread's chunks of tile kt have landed
            mg_fence_proxy_async();           // make them visible to the tensor cores
            __syncthreads();               // everyone's; and wgmma(kt-2) is done everywhere
            const unsigned sa = sbase + (kt % S) * CF::STAGE_BYTES;
            const unsigned sb = sa + CF::A_BYTES;
            mg_reg_fence(acc);
            mg_wgmma_fence();
#pragma unroll
            for (int j = 0; j < BK / 16; ++j) {
                const unsigned long long da = AT
                    ? mg_wgmma_desc(sa + wg * (BK * 128) + j * 2048, 8192, 1024) // MN: m block wg
                    : mg_wgmma_desc(sa + wg * (64 * 128) + j * 32, 16, 1024);    // K: rows 64 wg..
                const unsigned long long db = BT
                    ? mg_wgmma_desc(sb + j * 32, 16, 1024)                        // K-major
                    : mg_wgmma_desc(sb + j * 2048, BK * 128, 1024);               // MN: 64-n blocks
                MgWgmma<BN, DT, AT ? 1 : 0, BT ? 0 : 1>::run(acc, da, db);
            }
            mg_wgmma_commit();
            mg_reg_fence(acc);
            if (kt + S - 2 < KT) {         // refill the stage of tile kt-2
                const unsigned st = sbase + ((kt + S - 2) % S) * CF::STAGE_BYTES;
                la.copy(st);
                lb.copy(st + CF::A_BYTES);
                la.advance();
                lb.advance();
            }
            mg_cp_async_commit();
            mg_wgmma_wait<1>();
        }
        mg_wgmma_wait<0>();
        mg_reg_fence(acc);

        store_acc<BN>(C + bat * sC, ldc, M, N, m0 + wg * 64, n0, wtid, acc);
        __syncthreads();   // shared memory is reused by the next batch entry
    }
}


// =====================================================================================
// Warp-specialized, persistent kernels: matmul_tc_tma_* (TMA loads) and
// matmul_tc_wgsync_* (synchronous ld.global -> st.shared loads). See the header.
// =====================================================================================
struct __align__(64) TmaDesc { unsigned long long v[16]; };   // a CUtensorMap, by value

constexpr int WS_THREADS = 384;   // warpgroup 0 produces, warpgroups 1 and 2 consume

template <int BN> struct WsCfg {
    static constexpr int A_BYTES = BM * BK * 2;                   // 16 KB
    static constexpr int B_BYTES = BN * BK * 2;                   // 32 / 16 KB
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr int STAGES = BN == 256 ? 4 : 6;              // as many as fit in 227 KB
    static constexpr int BAR_OFF = STAGES * STAGE_BYTES;          // full[S] then empty[S]
    // epilogue scratch, 2 KB per consumer warp, 1024-byte aligned (the C box's swizzle)
    static constexpr int EPI_OFF = (BAR_OFF + 16 * STAGES + 1023) / 1024 * 1024;
    static constexpr int EPI_BYTES = 8 * 2048;
    static constexpr int SMEM = 1024 + EPI_OFF + EPI_BYTES;       // + 1 KB to align to 1024
};
static_assert(WsCfg<256>::SMEM == 215040 && WsCfg<128>::SMEM == 215040, "documented");
static_assert(WsCfg<128>::SMEM <= 232448 && WsCfg<256>::SMEM <= 232448, "227 KB per block");

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}
// arrive on the barrier at the same shared offset in CTA `cta` of this cluster
__device__ __forceinline__ void mbar_arrive_cta(unsigned bar, unsigned cta) {
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
                 "mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n"
                 :: "r"(bar), "r"(cta) : "memory");
}
// the address of shared-memory offset `a` in CTA `cta` of this cluster
__device__ __forceinline__ unsigned cluster_addr(unsigned a, unsigned cta) {
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(cta));
    return r;
}
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
                 :: "r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void tma_load(unsigned dst, const TmaDesc* map, unsigned bar,
                                         int c0, int c1, int c2) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4, %5}], [%2];\n"
                 :: "r"(dst), "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2) : "memory");
}
// the same box written at offset `dst` of every CTA in `mask`, each CTA's barrier at `bar`
__device__ __forceinline__ void tma_load_mc(unsigned dst, const TmaDesc* map, unsigned bar,
                                            int c0, int c1, int c2, unsigned short mask) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 ".multicast::cluster [%0], [%1, {%3, %4, %5}], [%2], %6;\n"
                 :: "r"(dst), "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "h"(mask)
                 : "memory");
}
// C's box {32 columns, 8 rows, 1} from shared memory at src, clipped to the tensor
__device__ __forceinline__ void tma_store(const TmaDesc* map, unsigned src, int c0, int c1,
                                          int c2) {
    asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group"
                 " [%0, {%1, %2, %3}], [%4];\n"
                 :: "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(src) : "memory");
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// until at most N of this thread's stores still read shared memory / none is in flight
template <int N> __device__ __forceinline__ void tma_store_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" :: "n"(N) : "memory");
}
__device__ __forceinline__ void tma_store_wait_all() {
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// The TMA kernels' epilogue where the staged rule holds and the host gave a map of C
// (cmap: f32, {N, M, batch}, box {32, 8, 1}, 128-byte swizzle). Each 8-row x 32-column
// block of a warp's 16 x BN rows goes into one of two 1 KB halves of the warp's 2 KB
// scratch, laid out as that box is in shared memory (16-byte chunk c of row r at chunk
// c ^ r: also bank-conflict-free for the accumulator layout's 8 rows per store), and out
// by one TMA store. The warp does not wait for the write: it fills the other half, and
// after the tile it goes on to the next unit's wgmma while the TMA unit writes, so the
// stores overlap the MMA instead of following it (store_acc_staged's st.global.v4 issue
// from the same warps). A half is refilled once the store that read it has read it
// (wait_group.read 1: the other half's store may still be reading). The map clips rows
// past M and columns past N.
template <int BN, class T>
__device__ __forceinline__ void store_acc_tma(const TmaDesc* map, int bat, int M, int N, int r0,
                                              int n0, int wtid, const T (&acc)[BN / 2],
                                              float scale, unsigned scratch) {
    const int lane = wtid & 31, rw = r0 + (wtid >> 5) * 16;   // this warp's first row
    const int r = lane >> 2;                                  // its row in each block
    if (rw >= M) return;
#pragma unroll
    for (int c = 0; c < BN / 32; ++c) {              // columns [32c, 32c + 32) of the tile
        if (n0 + 32 * c >= N) break;
#pragma unroll
        for (int h = 0; h < 2; ++h) {                 // rows [8h, 8h + 8) of the warp's 16
            const unsigned buf = scratch + h * 1024;
            if (lane == 0) tma_store_wait_read<1>();
            __syncwarp();
#pragma unroll
            for (int qq = 0; qq < 4; ++qq) {
                const int q = 4 * c + qq, col = 8 * qq + 2 * (lane & 3);
                const unsigned at = buf + r * 128 + (((col >> 2) ^ r) << 4) + (col & 3) * 4;
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" :: "r"(at),
                             "f"(out_value(acc[4 * q + 2 * h], scale)),
                             "f"(out_value(acc[4 * q + 2 * h + 1], scale)) : "memory");
            }
            mg_fence_proxy_async();                   // these writes -> the TMA unit's reads
            __syncwarp();
            if (lane == 0) {
                if (rw + 8 * h < M) tma_store(map, buf, n0 + 32 * c, rw + 8 * h, bat);
                else tma_store_wait_read<0>();    // no store from half 1: the next block
            }                                     // refills half 0, whose store may still
                                                  // be reading it (wait_read 1 would pass)
        }
    }
}
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
__device__ __forceinline__ void cluster_sync() {   // every thread of the cluster
    asm volatile("barrier.cluster.arrive.release;\n"
                 "barrier.cluster.wait.acquire;\n" ::: "memory");
}
template <int R> __device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(R));
}
template <int R> __device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(R));
}
// from the WS_ENTRY_REGS registers a thread of the warp-specialized kernels starts with to R
template <int R> __device__ __forceinline__ void setmaxnreg_to() {
    if constexpr (R > WS_ENTRY_REGS) setmaxnreg_inc<R>();
    else                   setmaxnreg_dec<R>();
}

// Work unit u -> (batch entry, this CTA's tile origin m0, n0). A unit is CM tiles
// stacked along M (one per CTA of the cluster, same n0: they share the B tile).
// Units are ordered in groups of `group` unit-rows for L2 reuse.
template <int BN, int CM> struct Sched {
    int units_m, units_n, per_batch, group;
    __device__ __forceinline__ void init(int M, int N, int group_) {
        const int tiles_m = (M + BM - 1) / BM;
        units_m = (tiles_m + CM - 1) / CM;
        units_n = (N + BN - 1) / BN;
        per_batch = units_m * units_n;
        group = max(group_, 1);
    }
    __device__ __forceinline__ void coords(int u, unsigned rank, int& bat, int& m0, int& n0) const {
        bat = u / per_batch;
        const int r = u - bat * per_batch;
        int um, un;
        mg_grouped_tile(r, units_m, units_n, group, um, un);
        m0 = (um * CM + (int)rank) * BM;
        n0 = un * BN;
    }
};

// One operand tile over the 128 producer threads, as 16-byte chunks (synchronous
// loads): ROWS x COLS elements of the global operand (rows `ld` apart), stored like the
// TMA boxes: COLS/64 blocks of ROWS x 128 B, 128-byte swizzle. Thread t owns chunk
// column t % CPR of rows t / CPR + i * RSTEP.
template <int ROWS, int COLS> struct LdgTile {
    static constexpr int CPR = COLS / 8, RSTEP = 128 / CPR, P = ROWS / RSTEP;
    static_assert(128 % CPR == 0 && ROWS % RSTEP == 0 && RSTEP % 4 == 0, "");
    int r0, ch;
    __device__ __forceinline__ void init(int t) { r0 = t / CPR; ch = t % CPR; }
    // chunk i of this thread: loaded (zero fill outside the operand) / stored
    __device__ __forceinline__ uint4 fetch_one(int i, const u16* g, long long ld, int row0,
                                               int col0, int row_lim, int col_lim) const {
        const int col = col0 + ch * 8;
        const int nc = min(max(col_lim - col, 0), 8);
        const int row = row0 + r0 + i * RSTEP;
        const int n = row < row_lim ? nc : 0;
        const u16* src = g + (long long)row * ld + col;
        if (n == 8) return __ldg(reinterpret_cast<const uint4*>(src));
        unsigned w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int e = 0; e < 8; ++e)
            if (e < n) w[e >> 1] |= (unsigned)src[e] << (16 * (e & 1));
        return make_uint4(w[0], w[1], w[2], w[3]);
    }
    __device__ __forceinline__ unsigned offset(int i) const {
        // the swizzle (ch ^ r) % 8 of row r = r0 + i * RSTEP, written so that only the
        // thread's constant (ch ^ r0) % 8 is computed at run time: i * RSTEP % 8 is 0 or 4,
        // and adding 4 modulo 8 flips bit 2 (the compiler otherwise holds one address per
        // chunk in registers: 60-88 B of spills in the producer with 3 parts in flight)
        return (ch >> 3) * (ROWS * 128) + (r0 + i * RSTEP) * 128
             + ((((ch ^ r0) & 7) ^ ((i * RSTEP) & 7)) << 4);
    }
    __device__ __forceinline__ void stash_one(int i, unsigned sbase, uint4 v) const {
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n"
                     :: "r"(sbase + offset(i)), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                     : "memory");
    }
    // the same chunk into another CTA of the cluster (cbase: mapa of its tile), counted
    // in the transaction bytes of that CTA's barrier cbar (mapa of it)
    __device__ __forceinline__ void stash_one_peer(int i, unsigned cbase, uint4 v,
                                                   unsigned cbar) const {
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32"
                     " [%0], {%1, %2, %3, %4}, [%5];\n"
                     :: "r"(cbase + offset(i)), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w),
                        "r"(cbar) : "memory");
    }
};

struct WsArgs {
    const TmaDesc* tmA; const TmaDesc* tmB;     // TMA kernels
    const u16* A; const u16* B;                 // sync kernels
    float* C;
    long long lda, ldb, ldc, sA, sB, sC;
    int M, N, K, batch, batA, batB, group;
    float scale;                                // int8: C = f32(acc) * scale
    const TmaDesc* tmC;                         // TMA kernels: C's map, used when cmap
    int cmap;                                   // 1: the epilogue stores through tmC
    int kchunk;                                 // TMA kernels, split-K: batch entry j is
                                                // K chunk [j*kchunk, (j+1)*kchunk) of one
                                                // product (slab j of C); 0: a batch
};

// A unit's K steps: all of K, or (kchunk) its batch entry's chunk of it, from k_first
__device__ __forceinline__ int unit_k_steps(const WsArgs& a, int bat, int KE, int& k_first) {
    if (!a.kchunk) { k_first = 0; return (a.K + KE - 1) / KE; }
    k_first = bat * a.kchunk;
    return (min(a.kchunk, a.K - k_first) + KE - 1) / KE;
}

// Producer, TMA: one thread. Boxes (host-encoded, 3-d maps {inner, outer, batch}):
// A 'n' 64 k x 128 m; A 't' 64 m x 64 k (two per tile); B 't' 64 k x BN/CM n (one per
// CTA, multicast to the cluster); B 'n' 64 n x 64 k (BN/64/CM per CTA, multicast).
template <bool AT, bool BT, int BN, int CM, int KE>
__device__ __forceinline__ void produce_tma(const WsArgs& a, const Sched<BN, CM>& sc,
                                            unsigned sbase, unsigned rank, int units,
                                            int unit0, int ustep) {
    using CF = WsCfg<BN>;
    constexpr int S = CF::STAGES;
    constexpr unsigned short MASK = (1u << CM) - 1;
    const unsigned full0 = sbase + CF::BAR_OFF, empty0 = full0 + 8 * S;
    asm volatile("prefetch.tensormap [%0];\n" :: "l"(a.tmA) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" :: "l"(a.tmB) : "memory");
    int s = 0;
    unsigned ph = 0;
    for (int u = unit0; u < units; u += ustep) {
        int bat, m0, n0;
        sc.coords(u, rank, bat, m0, n0);
        const int ba = bat * a.batA, bb = bat * a.batB;   // (0 and 0 with kchunk)
        int k_first;
        const int KT = unit_k_steps(a, bat, KE, k_first);
        for (int kt = 0; kt < KT; ++kt) {
            mbar_wait(empty0 + 8 * s, ph ^ 1);          // every consumer of the cluster is done
            const unsigned full = full0 + 8 * s;
            mbar_expect_tx(full, CF::STAGE_BYTES);      // own A + all of B (peer's half too)
            const unsigned sa = sbase + s * CF::STAGE_BYTES, sb = sa + CF::A_BYTES;
            const int k0 = k_first + kt * KE;           // (KE elements = 128 bytes of K)
            if (!AT) {
                tma_load(sa, a.tmA, full, k0, m0, ba);
            } else {
                tma_load(sa, a.tmA, full, m0, k0, ba);
                tma_load(sa + 8192, a.tmA, full, m0 + 64, k0, ba);
            }
            if (BT) {
                constexpr int R = BN / CM;
                if (CM == 1) tma_load(sb, a.tmB, full, k0, n0, bb);
                else tma_load_mc(sb + rank * R * 128, a.tmB, full, k0, n0 + (int)rank * R, bb, MASK);
            } else {
                constexpr int NB = BN / 64 / CM;
#pragma unroll
                for (int h = 0; h < NB; ++h) {
                    const int blk = (int)rank * NB + h;
                    if (CM == 1) tma_load(sb + blk * 8192, a.tmB, full, n0 + 64 * blk, k0, bb);
                    else tma_load_mc(sb + blk * 8192, a.tmB, full, n0 + 64 * blk, k0, bb, MASK);
                }
            }
            if (++s == S) { s = 0; ph ^= 1; }
        }
    }
}

// Producer, synchronous: the 128 threads of warpgroup 0 copy each stage with ld.global
// (16 B) into registers and st.shared, in two halves (A and the first B chunks, then the
// rest: 12 chunks per thread for BN 256, 8 for BN 128), software-pipelined so that the
// next NP = LdgSplit<BN, CM>::PARTS halves are loading while one is stored. Half g:
//     (g even: wait(empty s)); store half g; (g odd: arrive(full s)); load half g + NP
//     into the registers half g came from
// (NP = 3: 144 registers of data for BN 256; NP = 6: 192 for BN 128; NP = 4: 128 for
// n256c2, whose stages carry half of B: see LdgPipe and the header). Interior stages
// (the whole 128 x BN x 64 box inside M, N, K) load through one running pointer per
// operand with compile-time chunk offsets; boundary stages take LdgTile's predicated
// element loads. The proxy fence that makes
// the stores visible to wgmma is done by the consumers after their full-barrier wait: on
// sm_90 fence.proxy.async is MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC.S (SASS), and the MEMBAR
// would make the producer wait for the next stage's loads. Measured (H200): 4096^3
// 0.54-0.63 of cuBLAS against 0.35-0.39 for the unpipelined producer (one stage loaded,
// waited for, stored, fenced); splitting a stage into 3, 6 or 8 parts was slower, and
// so was a third half in flight until the registers for it were there (setmaxnreg above)
// and its st.shared addresses stopped spilling (LdgTile::stash_one; benchmarks/
// notes_matmul.md, sessions 5 and 15).
template <bool AT, bool BT, int BN, int CM>
struct LdgPipe {
    // a CTA loads B's columns [rank * BW, rank * BW + BW) of the tile: all of them alone,
    // its half in a 2-CTA cluster (the CTAs stack along M and share B), and stores them at
    // the same place in every CTA of the cluster. That half is contiguous in both B
    // layouts (BW rows of 128 B K-major, BW / 64 blocks of 8 KB MN-major): at byte
    // rank * BW * 128 of the B tile.
    static constexpr int BW = BN / CM;
    using LA = LdgTile<AT ? BK : BM, AT ? BM : BK>;
    using LB = LdgTile<BT ? BW : BK, BT ? BK : BW>;
    static constexpr int PA = LA::P, H = (LA::P + LB::P) / 2;      // chunks per half
    static_assert((LA::P + LB::P) % 2 == 0, "");
    struct Cursor {                 // the stage being loaded: unit u, K tile kt
        int u, kt, bat, m0, n0;     // (n0: of this CTA's B columns)
        bool inner;                 // its box lies inside the operands
        const char* pa;             // this thread's chunk 0 of A / of B in it
        const char* pb;
    };
    const WsArgs& a;
    const Sched<BN, CM>& sc;
    LA la;
    LB lb;
    unsigned rank;
    int units, ustep, KT;
    long long rowA, rowB, ktA, ktB; // bytes between a thread's chunks / between K tiles

    __device__ __forceinline__ LdgPipe(const WsArgs& a_, const Sched<BN, CM>& sc_,
                                       unsigned rank_, int units_, int ustep_, int KT_, int t)
        : a(a_), sc(sc_), rank(rank_), units(units_), ustep(ustep_), KT(KT_) {
        la.init(t);
        lb.init(t);
        rowA = 2LL * LA::RSTEP * a.lda;
        rowB = 2LL * LB::RSTEP * a.ldb;
        ktA = AT ? 2LL * BK * a.lda : 2LL * BK;
        ktB = BT ? 2LL * BK : 2LL * BK * a.ldb;
    }
    __device__ __forceinline__ void begin(Cursor& c, int u) const {
        c.u = u;
        c.kt = 0;
        if (u >= units) return;
        sc.coords(u, rank, c.bat, c.m0, c.n0);
        c.n0 += (int)rank * BW;
        const int ar = AT ? 0 : c.m0, ac = AT ? c.m0 : 0;      // A tile origin (row, col)
        const int br = BT ? c.n0 : 0, bc = BT ? 0 : c.n0;
        c.pa = reinterpret_cast<const char*>(a.A + c.bat * a.sA + (long long)(ar + la.r0) * a.lda
                                             + ac + la.ch * 8);
        c.pb = reinterpret_cast<const char*>(a.B + c.bat * a.sB + (long long)(br + lb.r0) * a.ldb
                                             + bc + lb.ch * 8);
        c.inner = c.m0 + BM <= a.M && c.n0 + BW <= a.N && BK <= a.K;
    }
    __device__ __forceinline__ void advance(Cursor& c) const {
        if (++c.kt == KT) { begin(c, c.u + ustep); return; }
        c.pa += ktA;
        c.pb += ktB;
        c.inner = c.m0 + BM <= a.M && c.n0 + BW <= a.N && (c.kt + 1) * BK <= a.K;
    }
    // half `h` (0 or 1, a constant at every call) of stage c into v
    __device__ __forceinline__ void fetch(int h, uint4 (&v)[H], const Cursor& c) const {
        if (c.u >= units) return;
        if (c.inner) {
#pragma unroll
            for (int j = 0; j < H; ++j) {
                const int q = h * H + j;
                v[j] = q < PA ? __ldg(reinterpret_cast<const uint4*>(c.pa + q * rowA))
                              : __ldg(reinterpret_cast<const uint4*>(c.pb + (q - PA) * rowB));
            }
            return;
        }
        const u16* Ab = a.A + c.bat * a.sA;
        const u16* Bb = a.B + c.bat * a.sB;
        const int k0 = c.kt * BK;
#pragma unroll
        for (int j = 0; j < H; ++j) {
            const int q = h * H + j;
            if (q < PA) v[j] = AT ? la.fetch_one(q, Ab, a.lda, k0, c.m0, a.K, a.M)
                                  : la.fetch_one(q, Ab, a.lda, c.m0, k0, a.M, a.K);
            else        v[j] = BT ? lb.fetch_one(q - PA, Bb, a.ldb, c.n0, k0, a.N, a.K)
                                  : lb.fetch_one(q - PA, Bb, a.ldb, k0, c.n0, a.K, a.N);
        }
    }
    // half h of the stage at sa, its B chunks also into the other CTA of a cluster
    __device__ __forceinline__ void stash(int h, const uint4 (&v)[H], unsigned sa,
                                          unsigned full) const {
        const unsigned sb = sa + WsCfg<BN>::A_BYTES + rank * BW * 128;
        const unsigned peer = CM > 1 ? cluster_addr(sb, rank ^ 1u) : 0u;
        const unsigned pbar = CM > 1 ? cluster_addr(full, rank ^ 1u) : 0u;
#pragma unroll
        for (int j = 0; j < H; ++j) {
            const int q = h * H + j;
            if (q < PA) {
                la.stash_one(q, sa, v[j]);
            } else {
                lb.stash_one(q - PA, sb, v[j]);
                if (CM > 1) lb.stash_one_peer(q - PA, peer, v[j], pbar);
            }
        }
    }
};

template <bool AT, bool BT, int BN, int CM>
__device__ __forceinline__ void produce_ldg(const WsArgs& a, const Sched<BN, CM>& sc,
                                            unsigned sbase, unsigned rank, int units,
                                            int unit0, int ustep, int KT, int t) {
    static_assert(CM == 1 || CM == 2, "");
    using CF = WsCfg<BN>;
    using PP = LdgPipe<AT, BT, BN, CM>;
    constexpr int S = CF::STAGES;
    const unsigned full0 = sbase + CF::BAR_OFF, empty0 = full0 + 8 * S;
    const PP pp(a, sc, rank, units, ustep, KT, t);
    const int stages = unit0 < units ? (units - unit0 + ustep - 1) / ustep * KT : 0;
    // NP half stages in flight: part g (stage g / 2, half g % 2) lives in v[g % NP]; a pass
    // of the loop covers a whole number of stages and of NP, so every index is a constant
    constexpr int NP = LdgSplit<BN, CM>::PARTS, PASS = NP % 2 ? 2 * NP : NP;
    uint4 v[NP][PP::H];
    typename PP::Cursor next;
    pp.begin(next, unit0);
#pragma unroll
    for (int p = 0; p < NP; ++p) {
        pp.fetch(p & 1, v[p], next);
        if (p & 1) pp.advance(next);
    }
    int s = 0;
    unsigned ph = 0;
    for (int g0 = 0; g0 < 2 * stages; g0 += PASS) {
#pragma unroll
        for (int q = 0; q < PASS; ++q) {
            if (g0 + q >= 2 * stages) break;
            const unsigned sa = sbase + s * CF::STAGE_BYTES;
            if (!(q & 1)) mbar_wait(empty0 + 8 * s, ph ^ 1);   // every consumer of the cluster
            pp.stash(q & 1, v[q % NP], sa, full0 + 8 * s);
            if (q & 1) {
                // with a peer: its B half arrives as transaction bytes on this barrier
                if (CM > 1 && t == 0) mbar_expect_tx(full0 + 8 * s, PP::BW * 128);
                else mbar_arrive(full0 + 8 * s);
                if (++s == S) { s = 0; ph ^= 1; }
            }
            pp.fetch((q + NP) & 1, v[q % NP], next);     // part g0 + q + NP
            if ((q + NP) & 1) pp.advance(next);
        }
    }
}

// A consumer warpgroup's arrival on a stage's empty barrier in every CTA of its cluster:
// with CM = 2 the peer's producer also writes this CTA's stage (its half of B, by TMA
// multicast or st.async), so it waits for both CTAs' consumers.
template <int CM>
__device__ __forceinline__ void release_stage(unsigned empty) {
    if (CM == 1) mbar_arrive(empty);
    else for (int r = 0; r < CM; ++r) mbar_arrive_cta(empty, r);
}

// Consumer warpgroup cw (0 or 1): rows [64 cw, 64 cw + 64) of each 128 x BN tile, one
// m64nBNk16 wgmma per 16 of K; releases a stage once the wgmma that read it is done
// (wgmma.wait_group 1 after issuing the next); then the f32 tile goes out by one of the
// three epilogues (store_acc, store_acc_staged, store_acc_tma).
template <class DT, bool AT, bool BT, int BN, int CM, bool TMA>
__device__ __forceinline__ void consume(const WsArgs& a, const Sched<BN, CM>& sc,
                                        unsigned sbase, unsigned rank, int units, int unit0,
                                        int ustep, int KT, int cw, int wtid) {
    using CF = WsCfg<BN>;
    constexpr int S = CF::STAGES;
    const unsigned full0 = sbase + CF::BAR_OFF, empty0 = full0 + 8 * S;
    typename Elem<DT>::Acc acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0;
    // the staged epilogue where the output's stores outweigh its MMA (see store_acc_staged)
    const bool staged = KT <= MTW_STAGED_MAX_KT && a.N >= MTW_STAGED_MIN_N;
    int s = 0;
    unsigned ph = 0;
    for (int u = unit0; u < units; u += ustep) {
        int bat, m0, n0, k_first;
        sc.coords(u, rank, bat, m0, n0);
        const int unit_kt = TMA ? unit_k_steps(a, bat, Elem<DT>::KE, k_first) : KT;
        int sprev = 0;
        for (int kt = 0; kt < unit_kt; ++kt) {
            mbar_wait(full0 + 8 * s, ph);
            if (!TMA) mg_fence_proxy_async();       // the producers' st.shared -> wgmma's reads
            const unsigned sa = sbase + s * CF::STAGE_BYTES, sb = sa + CF::A_BYTES;
            mg_reg_fence(acc);
            mg_wgmma_fence();
#pragma unroll
            for (int j = 0; j < BK / 16; ++j) {
                const unsigned long long da = AT
                    ? mg_wgmma_desc(sa + cw * 8192 + j * 2048, 8192, 1024)  // MN: 64-m block cw
                    : mg_wgmma_desc(sa + cw * 8192 + j * 32, 16, 1024);     // K-major: rows 64cw..
                const unsigned long long db = BT
                    ? mg_wgmma_desc(sb + j * 32, 16, 1024)                  // K-major
                    : mg_wgmma_desc(sb + j * 2048, 8192, 1024);             // MN: 64-n blocks
                MgWgmma<BN, DT, AT ? 1 : 0, BT ? 0 : 1>::run(acc, da, db, (kt | j) ? 1 : 0);
            }
            mg_wgmma_commit();
            mg_reg_fence(acc);
            mg_wgmma_wait<1>();                     // the wgmma of the previous stage is done
            if (kt > 0 && wtid == 0) release_stage<CM>(empty0 + 8 * sprev);
            sprev = s;
            if (++s == S) { s = 0; ph ^= 1; }
        }
        mg_wgmma_wait<0>();
        mg_reg_fence(acc);
        if (wtid == 0) release_stage<CM>(empty0 + 8 * sprev);
        const unsigned scratch = sbase + CF::EPI_OFF + (wtid >> 5) * 2048 + cw * 8192;
        if (TMA && a.cmap)
            store_acc_tma<BN>(a.tmC, bat, a.M, a.N, m0 + cw * 64, n0, wtid, acc, a.scale,
                              scratch);
        else if (staged)
            store_acc_staged<BN>(a.C + bat * a.sC, a.ldc, a.M, a.N, m0 + cw * 64, n0, wtid, acc,
                                 a.scale, scratch);
        else
            store_acc<BN>(a.C + bat * a.sC, a.ldc, a.M, a.N, m0 + cw * 64, n0, wtid, acc, a.scale);
    }
    // the last stores must have read the scratch before the CTA's shared memory goes
    if (TMA && a.cmap && (wtid & 31) == 0) tma_store_wait_all();
}

template <class DT, bool AT, bool BT, int BN, int CM, bool TMA>
__device__ __forceinline__ void ws_gemm(const WsArgs& a, unsigned char* smem_raw) {
    using CF = WsCfg<BN>;
    constexpr int S = CF::STAGES;
    const int tid = threadIdx.x;
    const unsigned sbase = (mg_smem_addr(smem_raw) + 1023u) & ~1023u;
    const unsigned full0 = sbase + CF::BAR_OFF, empty0 = full0 + 8 * S;
    const unsigned rank = CM > 1 ? cluster_rank() : 0u;
    if (tid == 0) {
        for (int s = 0; s < S; ++s) {
            mbar_init(full0 + 8 * s, TMA ? 1 : 128);   // sync: every producer thread
            mbar_init(empty0 + 8 * s, 2 * CM);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (CM > 1) cluster_sync(); else __syncthreads();
    Sched<BN, CM> sc;
    sc.init(a.M, a.N, a.group);
    const int units = sc.per_batch * a.batch;
    constexpr int KE = Elem<DT>::KE;
    const int KT = ((a.kchunk ? min(a.K, a.kchunk) : a.K) + KE - 1) / KE;   // (of a whole chunk)
    const int unit0 = blockIdx.x / CM, ustep = gridDim.x / CM;
    if (tid < 128) {
        if constexpr (TMA) {
            setmaxnreg_dec<40>();
            if (tid == 0) produce_tma<AT, BT, BN, CM, KE>(a, sc, sbase, rank, units, unit0, ustep);
        } else {
            setmaxnreg_to<LdgSplit<BN, CM>::PRODUCER>();
            produce_ldg<AT, BT, BN, CM>(a, sc, sbase, rank, units, unit0, ustep, KT, tid);
        }
    } else {
        if constexpr (TMA) setmaxnreg_inc<232>();
        else               setmaxnreg_to<LdgSplit<BN, CM>::CONSUMER>();
        consume<DT, AT, BT, BN, CM, TMA>(a, sc, sbase, rank, units, unit0, ustep, KT,
                                   (tid >> 7) - 1, tid & 127);
    }
    if (CM > 1) cluster_sync();
}
}  // namespace mtw

extern __shared__ __align__(1024) unsigned char mtw_dyn_smem[];

#define MTW_ENTRY(NAME, DT, AT, BT, BN)                                                        \
    extern "C" __global__ void __launch_bounds__(mtw::NT, 1) NAME(                             \
        const unsigned short* __restrict__ A, const unsigned short* __restrict__ B,            \
        float* __restrict__ C, long long lda, long long ldb, long long ldc, long long sA,      \
        long long sB, long long sC, int M, int N, int K, int batch) {                          \
        mtw::gemm<DT, AT, BT, BN>(A, B, C, lda, ldb, ldc, sA, sB, sC, M, N, K, batch,      \
                                       mtw_dyn_smem);                                          \
    }
#define MTW_TILE(BN)                                                                           \
    MTW_ENTRY(matmul_tc_wgmma_f16_nn_n##BN, MgF16, false, false, BN)                           \
    MTW_ENTRY(matmul_tc_wgmma_f16_nt_n##BN, MgF16, false, true, BN)                            \
    MTW_ENTRY(matmul_tc_wgmma_f16_tn_n##BN, MgF16, true, false, BN)                            \
    MTW_ENTRY(matmul_tc_wgmma_f16_tt_n##BN, MgF16, true, true, BN)                             \
    MTW_ENTRY(matmul_tc_wgmma_bf16_nn_n##BN, MgBF16, false, false, BN)                         \
    MTW_ENTRY(matmul_tc_wgmma_bf16_nt_n##BN, MgBF16, false, true, BN)                          \
    MTW_ENTRY(matmul_tc_wgmma_bf16_tn_n##BN, MgBF16, true, false, BN)                          \
    MTW_ENTRY(matmul_tc_wgmma_bf16_tt_n##BN, MgBF16, true, true, BN)

// Dynamic shared memory every matmul_tc_wgmma_* launch must request.
#define MTW_SMEM (mtw::SMEM_BYTES)

MTW_TILE(256)
MTW_TILE(128)

// ---- warp-specialized entries ----
#define MTW_TMA_ENTRY(NAME, DT, AT, BT, BN, CM, ATTR)                                         \
    extern "C" __global__ void __launch_bounds__(mtw::WS_THREADS, 1) ATTR NAME(               \
        const __grid_constant__ mtw::TmaDesc tmA, const __grid_constant__ mtw::TmaDesc tmB,  \
        const __grid_constant__ mtw::TmaDesc tmC, float* __restrict__ C, long long ldc,       \
        long long sC, int M, int N, int K, int batch, int batA, int batB, int group,          \
        int cmap, int kchunk) {                                                               \
        const mtw::WsArgs a{&tmA, &tmB, nullptr, nullptr, C, 0, 0, ldc, 0, 0, sC,             \
                            M, N, K, batch, batA, batB, group, 1.f, &tmC, cmap, kchunk};      \
        mtw::ws_gemm<DT, AT, BT, BN, CM, true>(a, mtw_dyn_smem);                         \
    }
#define MTW_SYNC_ENTRY(NAME, DT, AT, BT, BN, CM, ATTR)                                         \
    extern "C" __global__ void __launch_bounds__(mtw::WS_THREADS, 1) ATTR NAME(               \
        const unsigned short* __restrict__ A, const unsigned short* __restrict__ B,           \
        float* __restrict__ C, long long lda, long long ldb, long long ldc, long long sA,     \
        long long sB, long long sC, int M, int N, int K, int batch, int group) {              \
        const mtw::WsArgs a{nullptr, nullptr, A, B, C, lda, ldb, ldc, sA, sB, sC,             \
                            M, N, K, batch, 1, 1, group, 1.f, nullptr, 0, 0};                 \
        mtw::ws_gemm<DT, AT, BT, BN, CM, false>(a, mtw_dyn_smem);                        \
    }
#define MTW_CLUSTER2 __cluster_dims__(2, 1, 1)
#define MTW_NOATTR
// the eight entries (dtype x layout) of one warp-specialized family and tile
#define MTW_WS_SET(ENTRY, FAM, SUF, BN, CM, ATTR)                                              \
    ENTRY(matmul_tc_##FAM##_f16_nn_##SUF, MgF16, false, false, BN, CM, ATTR)                   \
    ENTRY(matmul_tc_##FAM##_f16_nt_##SUF, MgF16, false, true, BN, CM, ATTR)                    \
    ENTRY(matmul_tc_##FAM##_f16_tn_##SUF, MgF16, true, false, BN, CM, ATTR)                    \
    ENTRY(matmul_tc_##FAM##_f16_tt_##SUF, MgF16, true, true, BN, CM, ATTR)                     \
    ENTRY(matmul_tc_##FAM##_bf16_nn_##SUF, MgBF16, false, false, BN, CM, ATTR)                 \
    ENTRY(matmul_tc_##FAM##_bf16_nt_##SUF, MgBF16, false, true, BN, CM, ATTR)                  \
    ENTRY(matmul_tc_##FAM##_bf16_tn_##SUF, MgBF16, true, false, BN, CM, ATTR)                  \
    ENTRY(matmul_tc_##FAM##_bf16_tt_##SUF, MgBF16, true, true, BN, CM, ATTR)
#define MTW_TMA_SET(SUF, BN, CM, ATTR) MTW_WS_SET(MTW_TMA_ENTRY, tma, SUF, BN, CM, ATTR)
#define MTW_SYNC_SET(SUF, BN, CM, ATTR) MTW_WS_SET(MTW_SYNC_ENTRY, wgsync, SUF, BN, CM, ATTR)

MTW_TMA_SET(n256c2, 256, 2, MTW_CLUSTER2)
MTW_TMA_SET(n256c1, 256, 1, MTW_NOATTR)
MTW_TMA_SET(n128c2, 128, 2, MTW_CLUSTER2)
MTW_TMA_SET(n128c1, 128, 1, MTW_NOATTR)

// matmul_int8 (W8A8, one scale) on the same pipeline: A int8 [M, K] row-major, B given as
// Bt int8 [N, K] ('nt'; s8 wgmma reads both operands K-major), 128 k per stage (the same
// 128-byte rows), s32 accumulators stored as f32(acc) * scale. Arguments: the tma ones,
// then float scale.
#define MTW_TMA_S8_ENTRY(NAME, BN, CM, ATTR)                                                  \
    extern "C" __global__ void __launch_bounds__(mtw::WS_THREADS, 1) ATTR NAME(               \
        const __grid_constant__ mtw::TmaDesc tmA, const __grid_constant__ mtw::TmaDesc tmB,  \
        const __grid_constant__ mtw::TmaDesc tmC, float* __restrict__ C, long long ldc,       \
        long long sC, int M, int N, int K, int batch, int batA, int batB, int group,          \
        int cmap, int kchunk, float scale) {                                                  \
        const mtw::WsArgs a{&tmA, &tmB, nullptr, nullptr, C, 0, 0, ldc, 0, 0, sC,             \
                            M, N, K, batch, batA, batB, group, scale, &tmC, cmap, kchunk};    \
        mtw::ws_gemm<MgS8, false, true, BN, CM, true>(a, mtw_dyn_smem);                        \
    }
MTW_TMA_S8_ENTRY(matmul_int8_tma_nt_n256c2, 256, 2, MTW_CLUSTER2)
MTW_TMA_S8_ENTRY(matmul_int8_tma_nt_n256c1, 256, 1, MTW_NOATTR)
MTW_TMA_S8_ENTRY(matmul_int8_tma_nt_n128c2, 128, 2, MTW_CLUSTER2)
MTW_TMA_S8_ENTRY(matmul_int8_tma_nt_n128c1, 128, 1, MTW_NOATTR)

MTW_SYNC_SET(n256c2, 256, 2, MTW_CLUSTER2)
MTW_SYNC_SET(n256c1, 256, 1, MTW_NOATTR)
MTW_SYNC_SET(n128c1, 128, 1, MTW_NOATTR)

// Dynamic shared memory of the warp-specialized kernels (host: raise the attribute first).
#define MTW_WS_SMEM_N256 (mtw::WsCfg<256>::SMEM)   // 215040
#define MTW_WS_SMEM_N128 (mtw::WsCfg<128>::SMEM)   // 215040
