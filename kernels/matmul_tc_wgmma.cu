// minigrad-arch: sm_90a
// matmul_tc_wgmma.cu - Hopper (sm_90a) path of the ops matmul_tc_async and
// matmul_tc_bf16_async: cp.async multi-stage pipeline + wgmma (warpgroup MMA).
//
// MATH  C[b] = A[b] . B[b], A: [M,K], B: [K,N] f16 or bf16, C: [M,N] f32, products summed
//   in f32 by wgmma.mma_async.sync.aligned.m64nNk16.f32.{f16,bf16}: the same function
//   as matmul_tc.cu (oracle A.astype(f32) @ B.astype(f32)). Any M, N, K >= 1: rows,
//   columns and the K tail past the edges are zero-filled by cp.async (src-size) and
//   stores are predicated.
//
// ENTRY POINTS (extern "C"; same arguments, same layout letters as matmul_tc.cu)
//   matmul_tc_wgmma_{f16,bf16}_{nn,nt,tn,tt}_n256   block tile 128 x 256, 4 stages
//   matmul_tc_wgmma_{f16,bf16}_{nn,nt,tn,tt}_n128   block tile 128 x 128, 6 stages
//   Layout letters: A 'n' A[m*lda+k], A 't' A[k*lda+m]; B 'n' B[k*ldb+n], B 't' B[n*ldb+k].
//
// ARGUMENTS (PyCUDA format "PPPqqqqqqiiii"), as matmul_tc.cu:
//   const u16* A, const u16* B, float* C, int64 lda, ldb, ldc, int64 strideA, strideB,
//   strideC (batch strides in elements; 0 allowed for A or B), int M, N, K, batch.
//
// LAUNCH (host side)
//   Only on a device of compute capability 9.0 (the cubin is sm_90a).
//   block = (256,1,1); grid = (ceil(M/128) * ceil(N/BN), 1, min(batch, 65535)).
//   Dynamic shared memory MTW_SMEM = 197632 B for both tiles (4 x 48 KB or 6 x 32 KB,
//   + 1 KB to align the stages to 1024 B, which the 128-byte swizzle needs); raise
//   CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES to 197632 first.
//   Legal only when the 16-byte rule holds (same as matmul_tc.cu's _v): lda, ldb,
//   strideA, strideB multiples of 8 elements and A, B 16-byte aligned. Otherwise use
//   matmul_tc_async_*_s from matmul_tc.cu. M, N, K need not be multiples of anything.
//   Tile choice (measured on H200): n128 when N <= 128; otherwise n256 iff
//   1.8 * ceil(b256 / SMs) <= ceil(b128 / SMs), b256 = ceil(M/128)*ceil(N/256)*batch
//   and b128 = ceil(M/128)*ceil(N/128)*batch blocks (i.e. fewer wave-quantised units
//   of work, a 128x256 block counting 1.8 of a 128x128 one). Both give the same numbers.
//   C: any ldc >= N; float2 stores when ldc is even and C 8-byte aligned.
//
// ALGORITHM AND TILES
//   256 threads = 2 warpgroups; warpgroup w computes rows [64w, 64w+64) of the
//   128 x BN block tile with one m64nBNk16 wgmma per 16 of K (BN/2 f32 accumulators
//   per thread: 128 for n256). K advances 64 per stage. All 256 threads load: each
//   K tile is 128x64 of A plus 64xBN of B, copied as 16-byte cp.async.cg chunks into
//   the canonical 128-byte-swizzled wgmma layouts (a 128-byte row of 64 elements,
//   16-byte chunk j of row r stored at chunk j ^ (r % 8), 8 rows = one 1 KB atom):
//     K-major  (A 'n', B 't'): smem row = one m (or n), 64 k;        descriptor
//              SBO = 1024 (next 8 rows), LBO unused; k16 step j: start + 32 j bytes.
//     MN-major (A 't', B 'n'): smem row = one k, 64 m (or n); blocks of 64 m/n are
//              8 KB apart: LBO = 8192 (next 64 m/n), SBO = 1024 (next 8 k);
//              k16 step j: start + 2048 j bytes; wgmma's transpose bit set.
//   The copy keeps each operand's global layout, so no operand is ever transposed in
//   memory: the wgmma transpose bits (f16/bf16 only) absorb the layout.
//   Pipeline (S stages, S-2 tiles in flight while one is computed, one barrier per
//   K tile):
//     wait for tile kt (cp.async.wait_group S-3), fence.proxy.async (cp.async writes
//     are generic-proxy, wgmma reads async-proxy), __syncthreads;
//     issue 4 wgmma on stage kt, commit;
//     refill stage (kt-2) % S with tile kt+S-2: the barrier proves every warpgroup
//     passed wgmma.wait_group 1 in iteration kt-1, i.e. wgmma(kt-2) is done reading it;
//     wgmma.wait_group 1 (wgmma(kt-1) done, wgmma(kt) may still run).
//   So the tensor cores always have the next tile's wgmma queued behind the current
//   one, and global loads are issued ~2 (n256) or ~4 (n128) K tiles ahead.
//   Blocks are ordered in groups of 8 block-rows (GROUP_M) for L2 reuse.
//   Why not TMA: a tensor map per operand must be encoded on the host
//   (cuTensorMapEncodeTiled) and passed as a 128-byte __grid_constant__ parameter,
//   which the PyCUDA launch path does not do; cp.async needs nothing from the host
//   and handles any edge with src-size zero fill.
//
// MEASURED (H200, 2026-11-27, benchmarks/notes_matmul.md): 4096^3 f16 n256 484-551
//   TFLOP/s (66-74% of cuBLAS f32-out 731-743), 8192^3 465-474 (71-74% of 632-667).
//   Likely limits (inferred from rates, no profiler run): a 128x256 block gets 85 flop
//   per byte read from L2, and 5-7 TB/s of L2->SM traffic means 480-600 TFLOP/s;
//   cuBLAS gets past that with 2-block clusters and TMA multicast (one L2 read feeds
//   two SMs). Only ~2 K tiles are in flight per block. A warp-specialized variant
//   (producer warpgroup + mbarriers, persistent or not) measured 5-15% slower; a
//   192x256 block does not fit (a 512-thread block compiles to 128 registers/thread
//   whatever setmaxnreg asks, and 128 accumulators need more).
// RESOURCES (nvcc 13.0 -Xptxas -v): n256 176-180 regs, n128 111-120 regs, no spills;
//   SASS: HGMMA.64x256x16 / 64x128x16, LDGSTS.E.BYPASS.128.ZFILL, no local memory.
#include "common.cuh"

namespace mtw {

typedef unsigned short u16;

constexpr int BM = 128, BK = 64, NT = 256, GROUP_M = 8;
constexpr int SMEM_BYTES = 4 * (BM * BK * 2 + 256 * BK * 2) + 1024;   // 197632
static_assert(SMEM_BYTES == 6 * (BM * BK * 2 + 128 * BK * 2) + 1024, "both tiles use the same");

template <int BN> struct Cfg {
    static constexpr int A_BYTES = BM * BK * 2;
    static constexpr int B_BYTES = BN * BK * 2;
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr int STAGES = BN == 256 ? 4 : 6;        // as many as fit in 227 KB
    static constexpr int SMEM = STAGES * STAGE_BYTES + 1024;   // + 1 KB to align to 1024
};
static_assert(Cfg<256>::SMEM == SMEM_BYTES && Cfg<128>::SMEM == SMEM_BYTES, "");

struct F16 {};
struct BF16 {};
template <int N, class DT, int TA, int TB> struct Wgmma;

// wgmma wrappers (operand lists generated: BN/2 f32 accumulators in, out)
#define MTW_WGMMA_256(DT, TY)                                                                                                      \
    template <int TA, int TB> struct Wgmma<256, DT, TA, TB> {                                                                      \
        static __device__ __forceinline__ void run(float (&d)[128], unsigned long long da,                                         \
                                                   unsigned long long db) {                                                        \
            asm volatile(                                                                                                          \
                "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                                                      \
                "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " {"                                                      \
                "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                                           \
                "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                                                 \
                "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                                                 \
                "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"                                                 \
                "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"                                                 \
                "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"                                                 \
                "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"                                     \
                "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"                                  \
                "}, %128, %129, p, 1, 1, %131, %132;\n}\n"                                                                         \
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])                   \
                  , "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])           \
                  , "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])         \
                  , "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])         \
                  , "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])         \
                  , "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])         \
                  , "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55])         \
                  , "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])         \
                  , "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71])         \
                  , "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])         \
                  , "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])         \
                  , "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])         \
                  , "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103])     \
                  , "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]) \
                  , "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]) \
                  , "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127]) \
                : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));                                                                     \
        }                                                                                                                          \
    };
#define MTW_WGMMA_128(DT, TY)                                                                                              \
    template <int TA, int TB> struct Wgmma<128, DT, TA, TB> {                                                              \
        static __device__ __forceinline__ void run(float (&d)[64], unsigned long long da,                                  \
                                                   unsigned long long db) {                                                \
            asm volatile(                                                                                                  \
                "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                               \
                "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {"                                              \
                "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                                   \
                "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                                         \
                "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                                         \
                "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"                                          \
                "}, %64, %65, p, 1, 1, %67, %68;\n}\n"                                                                     \
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])           \
                  , "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])   \
                  , "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]) \
                  , "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
                  , "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]) \
                  , "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]) \
                  , "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]) \
                  , "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
                : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));                                                             \
        }                                                                                                                  \
    };

MTW_WGMMA_256(F16, "f16")
MTW_WGMMA_256(BF16, "bf16")
MTW_WGMMA_128(F16, "f16")
MTW_WGMMA_128(BF16, "bf16")

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
template <int N, class T> __device__ __forceinline__ void reg_fence(T (&r)[N]) {
#pragma unroll   // keeps the compiler from moving accumulator accesses across wgmma
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i]) :: "memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle (mode 1 in bits 62-63).
__device__ __forceinline__ unsigned long long desc(unsigned saddr, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4)
         | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16)
         | ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32)
         | (1ull << 62);
}

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
template <int BN>
__device__ __forceinline__ void store_acc(float* Cb, long long ldc, int M, int N, int r0, int n0,
                                          int wtid, const float (&acc)[BN / 2]) {
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
            const float v0 = acc[4 * q + 2 * h], v1 = acc[4 * q + 2 * h + 1];
            if (pair && col + 1 < N) {
                *reinterpret_cast<float2*>(crow + col) = make_float2(v0, v1);
            } else {
                if (col < N) crow[col] = v0;
                if (col + 1 < N) crow[col + 1] = v1;
            }
        }
    }
}

// Block -> (tile row, tile col), grouped by GROUP_M block-rows for L2 reuse.
template <int BN>
__device__ __forceinline__ void tile_coords(int M, int N, int& m0, int& n0) {
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int pid = blockIdx.x, width = GROUP_M * tiles_n;
    const int first_m = (pid / width) * GROUP_M;
    const int gsz = min(tiles_m - first_m, GROUP_M);
    m0 = (first_m + (pid % width) % gsz) * BM;
    n0 = ((pid % width) / gsz) * BN;
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
    tile_coords<BN>(M, N, m0, n0);
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
            fence_proxy_async();           // make them visible to the tensor cores
            __syncthreads();               // everyone's; and wgmma(kt-2) is done everywhere
            const unsigned sa = sbase + (kt % S) * CF::STAGE_BYTES;
            const unsigned sb = sa + CF::A_BYTES;
            reg_fence(acc);
            wgmma_fence();
#pragma unroll
            for (int j = 0; j < BK / 16; ++j) {
                const unsigned long long da = AT
                    ? desc(sa + wg * (BK * 128) + j * 2048, 8192, 1024)   // MN-major: 64-m block wg
                    : desc(sa + wg * (64 * 128) + j * 32, 16, 1024);      // K-major: rows 64wg..
                const unsigned long long db = BT
                    ? desc(sb + j * 32, 16, 1024)                          // K-major
                    : desc(sb + j * 2048, BK * 128, 1024);                 // MN-major, 64-n blocks
                Wgmma<BN, DT, AT ? 1 : 0, BT ? 0 : 1>::run(acc, da, db);
            }
            wgmma_commit();
            reg_fence(acc);
            if (kt + S - 2 < KT) {         // refill the stage of tile kt-2
                const unsigned st = sbase + ((kt + S - 2) % S) * CF::STAGE_BYTES;
                la.copy(st);
                lb.copy(st + CF::A_BYTES);
                la.advance();
                lb.advance();
            }
            mg_cp_async_commit();
            wgmma_wait<1>();
        }
        wgmma_wait<0>();
        reg_fence(acc);

        store_acc<BN>(C + bat * sC, ldc, M, N, m0 + wg * 64, n0, wtid, acc);
        __syncthreads();   // shared memory is reused by the next batch entry
    }
}

}  // namespace mtw

extern __shared__ __align__(1024) unsigned char mtw_dyn_smem[];

#define MTW_ENTRY(NAME, DT, AT, BT, BN)                                                        \
    extern "C" __global__ void __launch_bounds__(mtw::NT, 1) NAME(                             \
        const unsigned short* __restrict__ A, const unsigned short* __restrict__ B,            \
        float* __restrict__ C, long long lda, long long ldb, long long ldc, long long sA,      \
        long long sB, long long sC, int M, int N, int K, int batch) {                          \
        mtw::gemm<mtw::DT, AT, BT, BN>(A, B, C, lda, ldb, ldc, sA, sB, sC, M, N, K, batch,      \
                                       mtw_dyn_smem);                                          \
    }
#define MTW_TILE(BN)                                                                           \
    MTW_ENTRY(matmul_tc_wgmma_f16_nn_n##BN, F16, false, false, BN)                             \
    MTW_ENTRY(matmul_tc_wgmma_f16_nt_n##BN, F16, false, true, BN)                              \
    MTW_ENTRY(matmul_tc_wgmma_f16_tn_n##BN, F16, true, false, BN)                              \
    MTW_ENTRY(matmul_tc_wgmma_f16_tt_n##BN, F16, true, true, BN)                               \
    MTW_ENTRY(matmul_tc_wgmma_bf16_nn_n##BN, BF16, false, false, BN)                           \
    MTW_ENTRY(matmul_tc_wgmma_bf16_nt_n##BN, BF16, false, true, BN)                            \
    MTW_ENTRY(matmul_tc_wgmma_bf16_tn_n##BN, BF16, true, false, BN)                            \
    MTW_ENTRY(matmul_tc_wgmma_bf16_tt_n##BN, BF16, true, true, BN)

// Dynamic shared memory every matmul_tc_wgmma_* launch must request.
#define MTW_SMEM (mtw::SMEM_BYTES)

MTW_TILE(256)
MTW_TILE(128)
