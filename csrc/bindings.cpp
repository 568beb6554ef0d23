// pybind11 module gpt_oss_c._core. Checks inputs, forwards, turns Status into exceptions; no math.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "backend.h"
#include "bindings_common.h"
#include "engine.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "gpt_oss_c compiled core: engine, CPU and CUDA backends";
  m.def("build_info", [] {
    gptoss::BuildInfo b = gptoss::build_info();
    py::dict d;
    d["version"] = b.version;
    d["compiler"] = b.compiler;
    d["cuda"] = b.cuda;
    d["cuda_archs"] = b.cuda_archs;
    d["cpu_simd"] = b.simd;
    d["threads"] = b.threads;
    return d;
  });
  m.def("cuda_available", &gptoss::cuda_available);
  gptoss::register_op_bindings(m);
}
