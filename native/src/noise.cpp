#include "adabldm/noise.hpp"

#include <algorithm>

namespace adabldm {

TapeNoise::TapeNoise(Tensor tape, std::string origin) : tape_(std::move(tape)), origin_(std::move(origin)) {
  if (tape_.shape.size() < 2) throw Error(origin_ + " of shape " + tape_.shape_str() + ": expected (N, 4, h, w)");
}

Tensor TapeNoise::randn(const std::vector<int64_t>& shape) {
  // One sample's draw: shape (1, *row) where row is the tape's trailing shape.
  const std::vector<int64_t> row(tape_.shape.begin() + 1, tape_.shape.end());
  if (shape.size() != row.size() + 1 || shape[0] != 1 || !std::equal(row.begin(), row.end(), shape.begin() + 1))
    throw Error(origin_ + ": a draw of shape " + shape_str(shape) + " from a tape of rows " + shape_str(row));
  if (next_ >= size())
    throw Error(origin_ + " has " + std::to_string(size()) +
                " draws and the sampler asks for more: it was written for other sampler settings");
  return slice_rows(tape_, next_++, 1);
}

Tensor SeededNoise::randn(const std::vector<int64_t>& shape) {
  Tensor t(shape);
  for (float& v : t.data) v = normal_(engine_);
  return t;
}

}  // namespace adabldm
