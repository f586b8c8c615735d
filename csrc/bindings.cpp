// Python bindings of artrt's CUDA kernels (the module artrt._C). Torch-free: every tensor is a
// device pointer (int), sizes and strides are in elements, the stream is cudaStream_t as int.
// The Python layer (artrt.ops) validates tensors; this layer checks what it can see (codes,
// sizes, null pointers) and turns every CUDA error into a RuntimeError that names the call.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "artrt.h"

namespace py = pybind11;

namespace {

void check(cudaError_t err, const char* where) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("artrt._C.") + where + ": CUDA error " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

artrt::GatedArgs gated_args(uintptr_t x, uintptr_t cond, int64_t o, int64_t c, int64_t s,
                            int64_t sx_o, int64_t sx_c, int64_t sx_s, int64_t sc_o,
                            int64_t sc_c, int64_t sc_s, int dtype, int act) {
  if (dtype < 0 || dtype > 2) {
    throw std::invalid_argument("dtype code must be 0 (float32), 1 (float16) or 2 (bfloat16), got " +
                                std::to_string(dtype));
  }
  if (act < 0 || act > 1) {
    throw std::invalid_argument("act must be 0 (tanh) or 1 (sigmoid), got " + std::to_string(act));
  }
  if (o < 0 || c < 0 || s < 0) {
    throw std::invalid_argument("sizes must be non-negative, got o=" + std::to_string(o) +
                                " c=" + std::to_string(c) + " s=" + std::to_string(s));
  }
  if (o * c * s > 0 && x == 0) throw std::invalid_argument("x is a null pointer");
  return artrt::GatedArgs{as_ptr(x), as_ptr(cond), o, c, s, sx_o, sx_c, sx_s, sc_o, sc_c, sc_s,
                          static_cast<artrt::DType>(dtype), static_cast<artrt::Act>(act)};
}

void set_device(int device, const char* where) { check(cudaSetDevice(device), where); }

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

std::string size_text(const char* name, int64_t v) {
  return std::string(name) + "=" + std::to_string(v);
}

std::pair<int, std::string> device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls report their own
    return {0, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err)};
  }
  return {n, n > 0 ? "ok" : "no CUDA device"};
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "artrt CUDA kernels (torch-free; pointers, sizes and streams as integers)";

  m.def("device_count", &device_count,
        "(count, message): CUDA devices visible to this extension's runtime; "
        "count is 0 and message says why when there is none.");
  m.def("runtime_version", []() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  }, "CUDA runtime version this extension was linked with (e.g. 13000).");

  m.def("gated_fwd",
        [](uintptr_t x, uintptr_t cond, uintptr_t out, int64_t o, int64_t c, int64_t s,
           int64_t sx_o, int64_t sx_c, int64_t sx_s, int64_t sc_o, int64_t sc_c, int64_t sc_s,
           int dtype, int act, int device, uintptr_t stream) {
          const artrt::GatedArgs args =
              gated_args(x, cond, o, c, s, sx_o, sx_c, sx_s, sc_o, sc_c, sc_s, dtype, act);
          if (o * c * s > 0 && out == 0) throw std::invalid_argument("out is a null pointer");
          set_device(device, "gated_fwd");
          check(artrt::gated_fwd(args, as_ptr(out), reinterpret_cast<cudaStream_t>(stream)),
                "gated_fwd");
        },
        py::arg("x"), py::arg("cond"), py::arg("out"), py::arg("o"), py::arg("c"), py::arg("s"),
        py::arg("sx_o"), py::arg("sx_c"), py::arg("sx_s"), py::arg("sc_o"), py::arg("sc_c"),
        py::arg("sc_s"), py::arg("dtype"), py::arg("act"), py::arg("device"), py::arg("stream"),
        "Gated activation forward: out (O, C, S) contiguous from x (O, 2C, S) and cond.");

  m.def("gated_bwd",
        [](uintptr_t x, uintptr_t cond, uintptr_t grad_out, uintptr_t grad_x, int64_t o,
           int64_t c, int64_t s, int64_t sx_o, int64_t sx_c, int64_t sx_s, int64_t sc_o,
           int64_t sc_c, int64_t sc_s, int dtype, int act, int device, uintptr_t stream) {
          const artrt::GatedArgs args =
              gated_args(x, cond, o, c, s, sx_o, sx_c, sx_s, sc_o, sc_c, sc_s, dtype, act);
          if (o * c * s > 0 && (grad_out == 0 || grad_x == 0)) {
            throw std::invalid_argument("grad_out or grad_x is a null pointer");
          }
          set_device(device, "gated_bwd");
          check(artrt::gated_bwd(args, as_ptr(grad_out), as_ptr(grad_x),
                                 reinterpret_cast<cudaStream_t>(stream)),
                "gated_bwd");
        },
        py::arg("x"), py::arg("cond"), py::arg("grad_out"), py::arg("grad_x"), py::arg("o"),
        py::arg("c"), py::arg("s"), py::arg("sx_o"), py::arg("sx_c"), py::arg("sx_s"),
        py::arg("sc_o"), py::arg("sc_c"), py::arg("sc_s"), py::arg("dtype"), py::arg("act"),
        py::arg("device"), py::arg("stream"),
        "Gated activation backward: grad_x (O, 2C, S) contiguous from grad_out (O, C, S).");

  m.def("wavenet_step",
        [](uintptr_t start, uintptr_t in_w, uintptr_t in_b, uintptr_t conv_w, uintptr_t conv_b,
           uintptr_t out_w, uintptr_t out_b, uintptr_t head_w1, uintptr_t head_b1,
           uintptr_t head_w2, uintptr_t head_b2, uintptr_t meta, uintptr_t state,
           uintptr_t tokens, uintptr_t u, uintptr_t step, uintptr_t cond, uintptr_t logits,
           int64_t batch, int64_t length, int64_t state_size, int64_t layers, int64_t res,
           int64_t gate, int64_t skip, int64_t kernel_size, int64_t cond_channels,
           int64_t cond_length, int64_t levels, int64_t sc_b, int64_t sc_c, int64_t sc_t,
           int64_t offset, int dtype, int device, uintptr_t stream) {
          require(dtype >= 0 && dtype <= 2, "dtype code must be 0 (float32), 1 (float16) or "
                                            "2 (bfloat16), got " + std::to_string(dtype));
          require(batch >= 0 && batch < (int64_t{1} << 31),
                  "batch must be in [0, 2^31), got " + size_text("batch", batch));
          require(length >= 1 && layers >= 1 && res >= 1 && gate >= 1 && skip >= 1 &&
                      levels >= 2 && cond_channels >= 0 && cond_length >= 1 && offset >= 0 &&
                      state_size >= 0 && kernel_size >= 1 && kernel_size <= 8,
                  "sizes out of range (length, layers, res, gate, skip >= 1, levels >= 2, "
                  "kernel_size in 1..8, cond_channels, state_size, offset >= 0, cond_length "
                  ">= 1), got " + size_text("length", length) + " " + size_text("layers", layers) +
                      " " + size_text("res", res) + " " + size_text("gate", gate) + " " +
                      size_text("skip", skip) + " " + size_text("levels", levels) + " " +
                      size_text("kernel_size", kernel_size) + " " +
                      size_text("cond_channels", cond_channels) + " " +
                      size_text("cond_length", cond_length) + " " + size_text("offset", offset));
          require(state_size >= kernel_size - 1,
                  "state_size must hold at least the input ring, got " +
                      size_text("state_size", state_size));
          for (const auto& [ptr, name] : {std::pair<uintptr_t, const char*>{start, "start"},
                                         {in_w, "in_w"}, {in_b, "in_b"}, {conv_w, "conv_w"},
                                         {conv_b, "conv_b"}, {out_w, "out_w"}, {out_b, "out_b"},
                                         {head_w1, "head_w1"}, {head_b1, "head_b1"},
                                         {head_w2, "head_w2"}, {head_b2, "head_b2"},
                                         {meta, "meta"}, {tokens, "tokens"}, {u, "u"}}) {
            require(batch == 0 || ptr != 0, std::string(name) + " is a null pointer");
          }
          require(batch == 0 || state_size == 0 || state != 0, "state is a null pointer");
          require(batch == 0 || cond_channels == 0 || cond != 0,
                  "cond is a null pointer but cond_channels=" + std::to_string(cond_channels));
          const artrt::WaveNetStepArgs args{
              as_ptr(start), as_ptr(in_w), as_ptr(in_b), as_ptr(conv_w), as_ptr(conv_b),
              as_ptr(out_w), as_ptr(out_b), as_ptr(head_w1), as_ptr(head_b1), as_ptr(head_w2),
              as_ptr(head_b2), static_cast<const int32_t*>(as_ptr(meta)),
              static_cast<float*>(as_ptr(state)), static_cast<int64_t*>(as_ptr(tokens)),
              static_cast<const float*>(as_ptr(u)), static_cast<const int64_t*>(as_ptr(step)),
              static_cast<const float*>(as_ptr(cond)), static_cast<float*>(as_ptr(logits)),
              batch, length, state_size, layers, res, gate, skip, kernel_size, cond_channels,
              cond_length, levels, sc_b, sc_c, sc_t, offset, static_cast<artrt::DType>(dtype)};
          set_device(device, "wavenet_step");
          check(artrt::wavenet_step(args, reinterpret_cast<cudaStream_t>(stream)),
                "wavenet_step");
        },
        py::arg("start"), py::arg("in_w"), py::arg("in_b"), py::arg("conv_w"), py::arg("conv_b"),
        py::arg("out_w"), py::arg("out_b"), py::arg("head_w1"), py::arg("head_b1"),
        py::arg("head_w2"), py::arg("head_b2"), py::arg("meta"), py::arg("state"),
        py::arg("tokens"), py::arg("u"), py::arg("step"), py::arg("cond"), py::arg("logits"),
        py::arg("batch"), py::arg("length"), py::arg("state_size"), py::arg("layers"),
        py::arg("res"), py::arg("gate"), py::arg("skip"), py::arg("kernel_size"),
        py::arg("cond_channels"), py::arg("cond_length"), py::arg("levels"), py::arg("sc_b"),
        py::arg("sc_c"), py::arg("sc_t"), py::arg("offset"), py::arg("dtype"),
        py::arg("device"), py::arg("stream"),
        "One WaveNet generation step of all layers for `batch` sequences: updates the ring "
        "buffers in `state`, writes the sample to tokens[:, t] and optionally the logits "
        "(B, levels); t = *step + offset (step may be 0 for none).");
}
