// NumPy .npy files (format 1.0/2.0/3.0), float32 little-endian C order only: the noise,
// embeddings and latents the Python side writes and reads.
#pragma once

#include <string>

#include "adabldm/tensor.hpp"

namespace adabldm {

// Reads a '<f4' C-order array; Error names the file and what it holds instead.
Tensor read_npy(const std::string& path);
// Writes a '<f4' array (format 1.0) atomically (temporary file, then rename).
void write_npy(const std::string& path, const Tensor& t);
// Writes ``bytes`` to ``path`` atomically: a reader sees the old file or the whole new one.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace adabldm
