// Helpers shared by artrt's kernels: storage <-> fp32 conversion (the kernels do their math
// in fp32) and the dispatch of a launcher on the storage dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "artrt.h"

namespace artrt {

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The storage type of a DType, passed to a dispatched launcher as a value.
template <typename T> struct Storage { using type = T; };

// launch(Storage<T>{}) with T float, __half or __nv_bfloat16 as dtype says; an unknown dtype
// is cudaErrorInvalidValue.
template <typename Launch>
cudaError_t dispatch_dtype(DType dtype, Launch&& launch) {
  switch (dtype) {
    case DType::kFloat32: return launch(Storage<float>{});
    case DType::kFloat16: return launch(Storage<__half>{});
    case DType::kBFloat16: return launch(Storage<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace artrt
