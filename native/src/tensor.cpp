#include "adabldm/tensor.hpp"

#include <algorithm>
#include <sstream>

namespace adabldm {

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

Tensor::Tensor(std::vector<int64_t> s, float fill) : shape(std::move(s)), data(numel_of(shape), fill) {}

Tensor::Tensor(std::vector<int64_t> s, std::vector<float> values) : shape(std::move(s)), data(std::move(values)) {
  if (static_cast<int64_t>(data.size()) != numel_of(shape))
    throw Error("tensor of shape " + adabldm::shape_str(shape) + " given " + std::to_string(data.size()) +
                " values");
}

int64_t Tensor::numel() const { return numel_of(shape); }
std::string Tensor::shape_str() const { return adabldm::shape_str(shape); }

Tensor slice_rows(const Tensor& t, int64_t first, int64_t count) {
  if (t.shape.empty() || first < 0 || first + count > t.shape[0])
    throw Error("rows " + std::to_string(first) + ".." + std::to_string(first + count) + " of a tensor of shape " +
                t.shape_str());
  std::vector<int64_t> shape = t.shape;
  shape[0] = count;
  const int64_t row = t.numel() / t.shape[0];
  return Tensor(shape, std::vector<float>(t.data.begin() + first * row, t.data.begin() + (first + count) * row));
}

Tensor cat_rows(const Tensor& a, const Tensor& b) {
  if (a.shape.empty() || a.shape.size() != b.shape.size() ||
      !std::equal(a.shape.begin() + 1, a.shape.end(), b.shape.begin() + 1))
    throw Error("cannot stack tensors of shapes " + a.shape_str() + " and " + b.shape_str());
  std::vector<int64_t> shape = a.shape;
  shape[0] += b.shape[0];
  std::vector<float> data(a.data);
  data.insert(data.end(), b.data.begin(), b.data.end());
  return Tensor(shape, std::move(data));
}

}  // namespace adabldm
