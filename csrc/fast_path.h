// Entry points for long shard lists that skip the dispatcher's per-tensor argument conversion:
// plain CPython functions that unpack a list of tensors directly. Each checks what the public op's
// Python validation checks and raises on the first problem (the caller then words the error).
#pragma once

#include <Python.h>

namespace fastunlearn {

PyMethodDef* fast_path_methods();

}  // namespace fastunlearn
