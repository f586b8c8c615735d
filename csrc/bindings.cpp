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
}
