// Entry points for long shard lists that skip the dispatcher's per-tensor argument conversion:
// plain CPython functions that unpack lists of tensors directly and read each tensor's metadata once
// per call. Each checks what the public op's Python validation checks and raises on the first
// problem, before anything is written (the caller then takes the ordinary route, which words the error).
#pragma once

#include <Python.h>

namespace fastunlearn {

PyMethodDef* fast_path_methods();

}  // namespace fastunlearn
