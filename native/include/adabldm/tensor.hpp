// Dense float32 tensors in C order: what every part of the native runner passes around.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace adabldm {

// A runtime failure of the runner (bad file, network error): the program exits 1.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Tensor {
  std::vector<int64_t> shape;  // {} is a scalar (one element)
  std::vector<float> data;     // C order, size == numel()

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s, float fill = 0.0f);
  Tensor(std::vector<int64_t> s, std::vector<float> values);

  int64_t numel() const;
  std::string shape_str() const;  // "(1, 4, 32, 32)"
};

int64_t numel_of(const std::vector<int64_t>& shape);
std::string shape_str(const std::vector<int64_t>& shape);

// Rows [first, first + count) of the leading axis.
Tensor slice_rows(const Tensor& t, int64_t first, int64_t count);
// Two tensors of the same trailing shape stacked along the leading axis (a, b).
Tensor cat_rows(const Tensor& a, const Tensor& b);

}  // namespace adabldm
