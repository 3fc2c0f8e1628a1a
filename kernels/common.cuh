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
