// Fused gated activations, forward and backward:
//   tanh gate:    y = tanh(a) sigmoid(b),  a, b = halves of (x + cond) along channels
//   sigmoid gate: y = a sigmoid(b)
// One thread per output element, math in fp32, backward recomputes the activations.
#include "artrt.h"
#include "device_utils.cuh"

namespace artrt {
namespace {

// 256 threads: full occupancy on sm_80/sm_90 for a kernel of this register count.
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float z) { return 1.f / (1.f + __expf(-z)); }

// Position of output element i of the contiguous (O, C, S) output, and the inputs a and b.
template <typename T, typename Index>
struct Loaded {
  Index o, ch, j;
  float a, b;
};

template <typename T, typename Index>
__device__ __forceinline__ Loaded<T, Index> load_ab(const GatedArgs& p, Index i) {
  Loaded<T, Index> l;
  const Index row = i / static_cast<Index>(p.s);
  l.j = i - row * static_cast<Index>(p.s);
  l.o = row / static_cast<Index>(p.c);
  l.ch = row - l.o * static_cast<Index>(p.c);
  const T* x = static_cast<const T*>(p.x);
  const int64_t xa = l.o * p.sx_o + l.ch * p.sx_c + l.j * p.sx_s;
  l.a = to_f32(x[xa]);
  l.b = to_f32(x[xa + p.c * p.sx_c]);
  if (p.cond != nullptr) {
    const T* cond = static_cast<const T*>(p.cond);
    const int64_t ca = l.o * p.sc_o + l.ch * p.sc_c + l.j * p.sc_s;
    l.a += to_f32(cond[ca]);
    l.b += to_f32(cond[ca + p.c * p.sc_c]);
  }
  return l;
}

template <typename T, typename Index>
__global__ void gated_fwd_kernel(GatedArgs p, T* __restrict__ out, Index n) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Loaded<T, Index> l = load_ab<T, Index>(p, i);
    const float sb = sigmoid(l.b);
    const float y = p.act == Act::kTanh ? tanhf(l.a) * sb : l.a * sb;
    out[i] = from_f32<T>(y);
  }
}

template <typename T, typename Index>
__global__ void gated_bwd_kernel(GatedArgs p, const T* __restrict__ grad_out,
                                 T* __restrict__ grad_x, Index n) {
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Loaded<T, Index> l = load_ab<T, Index>(p, i);
    const float g = to_f32(grad_out[i]);
    const float sb = sigmoid(l.b);
    float da, db;
    if (p.act == Act::kTanh) {
      // dy/da = sb (1 - t^2), dy/db = t sb (1 - sb)
      const float t = tanhf(l.a);
      da = g * sb * (1.f - t * t);
      db = g * t * sb * (1.f - sb);
    } else {
      // dy/da = sb, dy/db = a sb (1 - sb)
      da = g * sb;
      db = g * l.a * sb * (1.f - sb);
    }
    const int64_t ga = (static_cast<int64_t>(l.o) * 2 * p.c + l.ch) * p.s + l.j;
    grad_x[ga] = from_f32<T>(da);
    grad_x[ga + p.c * p.s] = from_f32<T>(db);
  }
}

int num_blocks(int64_t n) {
  // A grid-stride loop covers the rest; 65535 * 256 threads saturate any current GPU.
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);
}

template <typename T>
cudaError_t launch(const GatedArgs& p, const void* grad_out, void* dst, cudaStream_t stream) {
  const int64_t n = p.o * p.c * p.s;
  if (n == 0) return cudaSuccess;
  const int blocks = num_blocks(n);
  // 32-bit indexing when every element index fits: the divisions are several times cheaper.
  const bool small = n < (int64_t{1} << 31) && p.o * 2 * p.c * p.s < (int64_t{1} << 31);
  if (grad_out == nullptr) {
    if (small) {
      gated_fwd_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(
          p, static_cast<T*>(dst), static_cast<int32_t>(n));
    } else {
      gated_fwd_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(p, static_cast<T*>(dst), n);
    }
  } else {
    const T* g = static_cast<const T*>(grad_out);
    if (small) {
      gated_bwd_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(
          p, g, static_cast<T*>(dst), static_cast<int32_t>(n));
    } else {
      gated_bwd_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(p, g, static_cast<T*>(dst), n);
    }
  }
  return cudaGetLastError();
}

cudaError_t dispatch(const GatedArgs& p, const void* grad_out, void* dst, cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto storage) {
    return launch<typename decltype(storage)::type>(p, grad_out, dst, stream);
  });
}

}  // namespace

cudaError_t gated_fwd(const GatedArgs& args, void* out, cudaStream_t stream) {
  return dispatch(args, nullptr, out, stream);
}

cudaError_t gated_bwd(const GatedArgs& args, const void* grad_out, void* grad_x,
                      cudaStream_t stream) {
  return dispatch(args, grad_out, grad_x, stream);
}

}  // namespace artrt
