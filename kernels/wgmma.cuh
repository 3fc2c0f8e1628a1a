// wgmma.cuh - the Hopper warpgroup MMA (wgmma, sm_90a) helpers shared by
// matmul_tc_wgmma.cu, matmul_int8.cu and weight_quant.cuh (matmul_int4.cu, qkv_project.cu):
// the fence / commit / wait of an asynchronous wgmma group, the proxy fence that makes
// generic-proxy shared-memory writes visible to it, the shared-memory matrix descriptor
// and the m64nNk16 (f16, bf16 -> f32) and m64nNk32 (s8 -> s32) instructions.
//
// Everything here exists only when compiling for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL): a file
// built for another arch sees none of it, and guards its own wgmma kernels the same way.
#pragma once

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// ---- ordering ----
// Before the first wgmma that reads registers written by ordinary instructions.
__device__ __forceinline__ void mg_wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
// Close the group of wgmma issued since the last commit.
__device__ __forceinline__ void mg_wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Wait until at most N committed groups of this warpgroup are still running.
template <int N> __device__ __forceinline__ void mg_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}
// Shared-memory writes of the generic proxy (st.shared, cp.async) -> visible to wgmma,
// which reads through the async proxy. On sm_90 this is MEMBAR.ALL.CTA +
// FENCE.VIEW.ASYNC.S (SASS): it waits for the thread's own memory operations in flight.
__device__ __forceinline__ void mg_fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keeps the compiler from moving accesses to an accumulator array (f32 or s32) across wgmma
// instructions (which read and write it asynchronously).
template <int N> __device__ __forceinline__ void mg_reg_fence(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i]) :: "memory");
}
template <int N> __device__ __forceinline__ void mg_reg_fence(int (&r)[N]) {   // s32 (s8 wgmma)
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i]) :: "memory");
}

// ---- operands ----
// Shared-memory matrix descriptor, 128-byte swizzle (mode 1 in bits 62-63): start address,
// leading and stride byte offsets (LBO, SBO), each in 16-byte units. A K-major tile of
// 128-byte rows has SBO = 1024 (8 rows); its LBO is not used (16).
__device__ __forceinline__ unsigned long long mg_wgmma_desc(unsigned saddr, unsigned lbo,
                                                            unsigned sbo) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4)
         | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16)
         | ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32)
         | (1ull << 62);
}

// ---- instructions ----
// The accumulator operand lists: "%0, ..., %N-1" and the N constraints K(d[i]).
#define MG_WG_REGS64 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                \
    "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                        \
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                        \
    "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define MG_WG_REGS128 MG_WG_REGS64 ","                                                         \
    "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"                        \
    "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"                        \
    "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"            \
    "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
#define MG_WG_ACC8(K, d, i) K(d[(i)]), K(d[(i) + 1]), K(d[(i) + 2]), K(d[(i) + 3]),             \
    K(d[(i) + 4]), K(d[(i) + 5]), K(d[(i) + 6]), K(d[(i) + 7])
#define MG_WG_ACC32(K, d, i) MG_WG_ACC8(K, d, (i)), MG_WG_ACC8(K, d, (i) + 8),                  \
    MG_WG_ACC8(K, d, (i) + 16), MG_WG_ACC8(K, d, (i) + 24)
#define MG_WG_ACC64(K, d) MG_WG_ACC32(K, d, 0), MG_WG_ACC32(K, d, 32)
#define MG_WG_ACC128(K, d) MG_WG_ACC64(K, d), MG_WG_ACC32(K, d, 64), MG_WG_ACC32(K, d, 96)

// The operands after the accumulators (R of them): A and B descriptors, scale-d, TA, TB.
#define MG_WG_HEAD128 "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
#define MG_WG_TAIL128 "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
#define MG_WG_HEAD64 "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
#define MG_WG_TAIL64 "}, %64, %65, p, 1, 1, %67, %68;\n}\n"

struct MgF16 {};
struct MgBF16 {};
struct MgS8 {};     // int8 operands, s32 accumulators, k32 per instruction, K-major only

// d (64 x N f32, R = N/2 per thread) += A (64 x 16) . B (16 x N), A and B in shared memory
// (descriptors da, db); scale_d 0 overwrites d instead. TA / TB: the transpose bits (1: the
// operand is MN-major in shared memory). run() is one wgmma instruction.
template <int N, class DT, int TA, int TB> struct MgWgmma;
#define MG_WGMMA_F32(N, R, DT, TY)                                                             \
    template <int TA, int TB> struct MgWgmma<N, DT, TA, TB> {                                  \
        static __device__ __forceinline__ void run(float (&d)[R], unsigned long long da,       \
                                                   unsigned long long db, int scale_d = 1) {   \
            asm volatile(MG_WG_HEAD##R                                                         \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {"      \
                         MG_WG_REGS##R MG_WG_TAIL##R                                           \
                         : MG_WG_ACC##R("+f", d)                                               \
                         : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB));                  \
        }                                                                                      \
    };
MG_WGMMA_F32(256, 128, MgF16, "f16")
MG_WGMMA_F32(256, 128, MgBF16, "bf16")
MG_WGMMA_F32(128, 64, MgF16, "f16")
MG_WGMMA_F32(128, 64, MgBF16, "bf16")

// d (64 x N s32) += A (64 x 32 s8) . B (32 x N s8), both K-major (s8 has no transpose
// bits): the same shared-memory bytes per instruction (32 per row) as one f16 k16 step.
#define MG_WG_TAIL128_S8 "}, %128, %129, p;\n}\n"
#define MG_WG_TAIL64_S8 "}, %64, %65, p;\n}\n"
#define MG_WGMMA_S32(N, R)                                                                     \
    template <> struct MgWgmma<N, MgS8, 0, 0> {                                                \
        static __device__ __forceinline__ void run(int (&d)[R], unsigned long long da,         \
                                                   unsigned long long db, int scale_d = 1) {   \
            asm volatile(MG_WG_HEAD##R                                                         \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k32.s32.s8.s8 {"              \
                         MG_WG_REGS##R MG_WG_TAIL##R##_S8                                      \
                         : MG_WG_ACC##R("+r", d)                                               \
                         : "l"(da), "l"(db), "r"(scale_d));                                    \
        }                                                                                      \
    };
MG_WGMMA_S32(256, 128)
MG_WGMMA_S32(128, 64)

// d (64 x 256 s32, 128 per thread) += A (64 x 32 s8) . B (32 x 256 s8), both K-major in
// shared memory (descriptors a, b).
__device__ __forceinline__ void mg_wgmma_s8_m64n256k32(int (&d)[128], unsigned long long a,
                                                       unsigned long long b) {
    asm volatile(MG_WG_HEAD128
                 "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {" MG_WG_REGS128
                 "}, %128, %129, p;\n}\n"
                 : MG_WG_ACC128("+r", d)
                 : "l"(a), "l"(b), "r"(1));
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL
