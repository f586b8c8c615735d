// One WaveNet generation step, all layers, in one launch (Fast WaveNet: every layer reads
// its dilated past from a ring buffer, so a step costs O(layers)):
//
//   v     = t == 0 ? start : 2 tokens[t-1] / (levels-1) - 1
//   x     = in_b + sum_k in_w[k] v(t - (K-1-k))                        (R)
//   layer l, dilation d:
//     a   = [x(t-(K-1)d), ..., x(t-d), x, cond(t)]                     (K R + Cc)
//     z   = a @ conv_w[l] + conv_b[l];  h = tanh(z[:G]) sigmoid(z[G:]) (2G -> G)
//     o   = h @ out_w[l] + out_b[l];    x += o[:R];  skips += o[R:]    (R + S)
//   y     = relu(relu(skips) @ head_w1 + head_b1)                      (S)
//   logit = y @ head_w2 + head_b2                                      (levels)
//   tokens[t] = min(#{i : cdf_i <= u}, levels - 1),  cdf = cumsum(softmax(logit))
//
// Design: one thread block per sequence. The block keeps every activation in shared memory
// (a few KB), reads the weights from global memory (after the first sequences they sit in
// L2: 0.6 M parameters for 20 layers at R=64, S=128, 256 levels), and writes only the ring
// slots of this step, the sample and optionally the logits. Each thread owns output columns
// of a matrix-vector product and walks the input rows, so a warp's weight loads are one
// coalesced row segment (weights are stored input-major for this).
//
// Expected limit (an estimate, not a measurement): each block streams all weights through
// one SM per step, so batch 1 is bound by one SM's L2 bandwidth, roughly 10-25 us per
// sample for the 20-layer net (fp16/bf16 weights halve the bytes); throughput grows with
// the batch until every SM holds a block (B ~ number of SMs), then goes in waves. A
// persistent grid that keeps the weights resident in shared memory/registers across SMs and
// synchronises per layer would remove the per-step weight stream for small batches.
#include <cmath>

#include "artrt.h"
#include "device_utils.cuh"

namespace artrt {
namespace {

// 256 threads: 2G = 256 (R = 128) and levels = 256 give every thread one column of the
// widest products; narrower products leave threads idle rather than splitting rows.
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

// sum_i a[i] w[i * ldw + col] for i < n: a in shared memory, w one column of a row-major
// (n, ldw) matrix. Four accumulators keep four independent loads in flight per thread.
template <typename T>
__device__ __forceinline__ float dot_column(const T* __restrict__ w, int ldw, int col,
                                            const float* __restrict__ a, int n) {
  float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    acc0 += a[i] * to_f32(w[static_cast<int64_t>(i) * ldw + col]);
    acc1 += a[i + 1] * to_f32(w[static_cast<int64_t>(i + 1) * ldw + col]);
    acc2 += a[i + 2] * to_f32(w[static_cast<int64_t>(i + 2) * ldw + col]);
    acc3 += a[i + 3] * to_f32(w[static_cast<int64_t>(i + 3) * ldw + col]);
  }
  for (; i < n; ++i) acc0 += a[i] * to_f32(w[static_cast<int64_t>(i) * ldw + col]);
  return (acc0 + acc1) + (acc2 + acc3);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Inverse-CDF sample of softmax(logit[0..n)) at u, by the 32 lanes of one warp; logit is
// overwritten with the probabilities. Lane i owns the consecutive levels [i c, (i+1) c).
__device__ int warp_inverse_cdf(float* logit, int n, float u, int lane) {
  float m = -INFINITY;
  for (int i = lane; i < n; i += 32) m = fmaxf(m, logit[i]);
  m = warp_max(m);
  float sum = 0.f;
  for (int i = lane; i < n; i += 32) {
    const float e = expf(logit[i] - m);
    logit[i] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  __syncwarp();
  const int chunk = (n + 31) / 32;
  const int lo = min(lane * chunk, n), hi = min(lo + chunk, n);
  float part = 0.f;
  for (int i = lo; i < hi; ++i) {
    logit[i] /= sum;
    part += logit[i];
  }
  float incl = part;  // inclusive scan of the lanes' parts
  for (int d = 1; d < 32; d <<= 1) {
    const float up = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += up;
  }
  float cdf = incl - part;
  int below = 0;  // levels of this lane whose cdf is <= u
  for (int i = lo; i < hi; ++i) {
    cdf += logit[i];
    below += cdf <= u;
  }
  for (int m = 16; m > 0; m >>= 1) below += __shfl_xor_sync(0xffffffffu, below, m);
  return min(below, n - 1);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
wavenet_step_kernel(WaveNetStepArgs p) {
  const int64_t t = (p.step != nullptr ? *p.step : 0) + p.offset;
  if (t >= p.length) return;  // the same for the whole block: no barrier is skipped by half

  const int R = static_cast<int>(p.res), G = static_cast<int>(p.gate);
  const int S = static_cast<int>(p.skip), K = static_cast<int>(p.kernel_size);
  const int Cc = static_cast<int>(p.cond_channels), V = static_cast<int>(p.levels);
  const int n_in = K * R + Cc;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t b = blockIdx.x;

  extern __shared__ float smem[];
  float* a = smem;           // (K R + Cc) taps of the layer input, then cond(t)
  float* x = a + n_in;       // (R) residual stream
  float* h = x + R;          // (G) gate output
  float* skips = h + G;      // (S)
  float* y = skips + S;      // (S) head hidden
  float* logit = y + S;      // (V)

  const T* in_w = static_cast<const T*>(p.in_w);
  const T* in_b = static_cast<const T*>(p.in_b);
  float* state = p.state + b * p.state_size;
  int64_t* tokens = p.tokens + b * p.length;

  float v;
  if (t == 0) {
    v = to_f32(static_cast<const T*>(p.start)[0]);
  } else {
    const float scale = static_cast<float>(2.0 / static_cast<double>(V - 1));
    v = __fsub_rn(__fmul_rn(static_cast<float>(tokens[t - 1]), scale), 1.f);
  }

  // input convolution: tap k sees v(t - (K-1-k)), kept in ring slot (t + k) mod (K-1)
  const int m0 = K - 1;
  for (int r = tid; r < R; r += nt) {
    float acc = to_f32(in_b[r]);
    for (int k = 0; k < m0; ++k) acc += to_f32(in_w[k * R + r]) * state[(t + k) % m0];
    x[r] = acc + to_f32(in_w[m0 * R + r]) * v;
  }
  if (Cc > 0) {
    const int64_t col = p.cond_length == 1 ? 0 : t;
    for (int c = tid; c < Cc; c += nt) {
      a[K * R + c] = p.cond[b * p.sc_b + c * p.sc_c + col * p.sc_t];
    }
  }
  for (int s = tid; s < S; s += nt) skips[s] = 0.f;
  __syncthreads();  // every thread has read the input ring
  if (tid == 0 && m0 > 0) state[t % m0] = v;

  const int ldc = 2 * G, ldo = R + S;
  for (int l = 0; l < p.layers; ++l) {
    const int d = p.meta[2 * l], slots = m0 * d;
    float* ring = state + p.meta[2 * l + 1];  // (slots, R)
    // taps: a[k R + r] = x(t - (K-1-k) d)[r]; slot of tap 0 is t mod slots, which receives
    // x(t) once the same thread has read it
    for (int r = tid; r < R; r += nt) {
      for (int k = 0; k < m0; ++k) {
        a[k * R + r] = ring[((t + slots - static_cast<int64_t>(m0 - k) * d) % slots) * R + r];
      }
      a[m0 * R + r] = x[r];
      if (slots > 0) ring[(t % slots) * R + r] = x[r];
    }
    __syncthreads();
    const T* cw = static_cast<const T*>(p.conv_w) + static_cast<int64_t>(l) * n_in * ldc;
    const T* cb = static_cast<const T*>(p.conv_b) + static_cast<int64_t>(l) * ldc;
    for (int g = tid; g < G; g += nt) {
      const float za = to_f32(cb[g]) + dot_column(cw, ldc, g, a, n_in);
      const float zb = to_f32(cb[G + g]) + dot_column(cw, ldc, G + g, a, n_in);
      h[g] = tanhf(za) * sigmoid(zb);
    }
    __syncthreads();
    const T* ow = static_cast<const T*>(p.out_w) + static_cast<int64_t>(l) * G * ldo;
    const T* ob = static_cast<const T*>(p.out_b) + static_cast<int64_t>(l) * ldo;
    for (int o = tid; o < ldo; o += nt) {
      const float out = to_f32(ob[o]) + dot_column(ow, ldo, o, h, G);
      if (o < R) {
        x[o] += out;
      } else {
        skips[o - R] += out;
      }
    }
    __syncthreads();
  }

  // head: relu -> 1x1 -> relu -> 1x1
  for (int s = tid; s < S; s += nt) skips[s] = fmaxf(skips[s], 0.f);
  __syncthreads();
  const T* w1 = static_cast<const T*>(p.head_w1);
  const T* b1 = static_cast<const T*>(p.head_b1);
  for (int o = tid; o < S; o += nt) {
    y[o] = fmaxf(to_f32(b1[o]) + dot_column(w1, S, o, skips, S), 0.f);
  }
  __syncthreads();
  const T* w2 = static_cast<const T*>(p.head_w2);
  const T* b2 = static_cast<const T*>(p.head_b2);
  for (int o = tid; o < V; o += nt) logit[o] = to_f32(b2[o]) + dot_column(w2, V, o, y, S);
  __syncthreads();
  if (p.logits != nullptr) {
    for (int o = tid; o < V; o += nt) p.logits[b * V + o] = logit[o];
    __syncthreads();  // the sampler below overwrites logit
  }
  if (tid < 32) {
    const int level = warp_inverse_cdf(logit, V, p.u[b * p.length + t], tid);
    if (tid == 0) tokens[t] = level;
  }
}

template <typename T>
cudaError_t launch(const WaveNetStepArgs& p, cudaStream_t stream) {
  const size_t floats = static_cast<size_t>(p.kernel_size * p.res + p.cond_channels + p.res +
                                            p.gate + 2 * p.skip + p.levels);
  const size_t smem = floats * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        wavenet_step_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  wavenet_step_kernel<T><<<static_cast<unsigned>(p.batch), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t wavenet_step(const WaveNetStepArgs& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  return dispatch_dtype(args.dtype, [&](auto storage) {
    return launch<typename decltype(storage)::type>(args, stream);
  });
}

}  // namespace artrt
