// Launchers of artrt's CUDA kernels. Torch-free: tensors cross as raw device pointers,
// sizes and strides in elements, and the stream as an integer handle.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace artrt {

// Storage dtypes understood by every launcher; the Python side maps torch dtypes to these.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Gate: kTanh is tanh(a) * sigmoid(b), kSigmoid is a * sigmoid(b).
enum class Act : int { kTanh = 0, kSigmoid = 1 };

// x is viewed as (O, 2C, S) with strides (sx_o, sx_c, sx_s); a = x[:, :C], b = x[:, C:].
// cond (nullptr for none) is read through (sc_o, sc_c, sc_s), 0 on broadcast dimensions.
struct GatedArgs {
  const void* x;
  const void* cond;
  int64_t o, c, s;
  int64_t sx_o, sx_c, sx_s;
  int64_t sc_o, sc_c, sc_s;
  DType dtype;
  Act act;
};

// out: contiguous (O, C, S).
cudaError_t gated_fwd(const GatedArgs& args, void* out, cudaStream_t stream);

// grad_out: contiguous (O, C, S); grad_x: contiguous (O, 2C, S).
cudaError_t gated_bwd(const GatedArgs& args, const void* grad_out, void* grad_x,
                      cudaStream_t stream);

}  // namespace artrt
