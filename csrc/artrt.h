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

// One WaveNet generation step of every layer (Fast WaveNet), see wavenet_step.cu. Weights
// (dtype) are contiguous and input-major: in_w (K, R), conv_w (L, K R + Cc, 2G), out_w
// (L, G, R + S), head_w1 (S, S), head_w2 (S, V); meta (L, 2) int32 holds each layer's
// dilation and ring offset in a state row. state (B, state_size) float32, tokens (B, T)
// int64 and u (B, T) float32 are contiguous; cond (B, Cc, cond_length) float32 is read
// through (sc_b, sc_c, sc_t) (column 0 when cond_length == 1, else column t); logits
// (B, V) float32 or nullptr. The position is t = *step + offset (step may be nullptr).
struct WaveNetStepArgs {
  const void* start;
  const void* in_w;
  const void* in_b;
  const void* conv_w;
  const void* conv_b;
  const void* out_w;
  const void* out_b;
  const void* head_w1;
  const void* head_b1;
  const void* head_w2;
  const void* head_b2;
  const int32_t* meta;
  float* state;
  int64_t* tokens;
  const float* u;
  const int64_t* step;
  const float* cond;
  float* logits;
  int64_t batch, length, state_size, layers, res, gate, skip, kernel_size, cond_channels,
      cond_length, levels;
  int64_t sc_b, sc_c, sc_t;
  int64_t offset;
  DType dtype;
};

cudaError_t wavenet_step(const WaveNetStepArgs& args, cudaStream_t stream);

}  // namespace artrt
