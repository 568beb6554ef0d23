// Shared by the binding files: turning a Status into the Python exception it stands for.
#pragma once

#include <pybind11/pybind11.h>

#include "common.h"

namespace gptoss {

// Raises the Python exception for a non-ok status; returns normally for Ok.
//   InvalidArgument -> ValueError, OutOfMemory -> MemoryError, Unsupported -> NotImplementedError,
//   IoError -> OSError, DeviceError/Internal -> RuntimeError.
inline void throw_if_error(const Status& s) {
  if (s.ok()) return;
  PyObject* type = PyExc_RuntimeError;
  switch (s.code) {
    case StatusCode::InvalidArgument: type = PyExc_ValueError; break;
    case StatusCode::OutOfMemory: type = PyExc_MemoryError; break;
    case StatusCode::Unsupported: type = PyExc_NotImplementedError; break;
    case StatusCode::IoError: type = PyExc_OSError; break;
    default: break;
  }
  PyErr_SetString(type, s.message.c_str());
  throw pybind11::error_already_set();
}

void register_op_bindings(pybind11::module_& m);    // bindings_ops.cpp: per-op test entry points
void register_model_bindings(pybind11::module_& m); // bindings.cpp: the engine

}  // namespace gptoss
