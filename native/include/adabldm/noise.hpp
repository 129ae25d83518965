// Where the sampler's standard normal noise comes from: a tape the Python side wrote
// (adabldm-run --dump-noise: exact parity) or the runner's own seeded generator.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>

#include "adabldm/tensor.hpp"

namespace adabldm {

class NoiseSource {
 public:
  virtual ~NoiseSource() = default;
  // The next draw, of `shape` ((1, 4, h, w) for one sample).
  virtual Tensor randn(const std::vector<int64_t>& shape) = 0;
};

// Draws read in order from an (N, 4, h, w) tape; Error when a draw's shape differs or the
// tape runs out (the runner and the writer disagree on the noise order).
class TapeNoise : public NoiseSource {
 public:
  explicit TapeNoise(Tensor tape, std::string origin = "noise tape");
  Tensor randn(const std::vector<int64_t>& shape) override;
  int64_t used() const { return next_; }
  int64_t size() const { return tape_.shape.empty() ? 0 : tape_.shape[0]; }

 private:
  Tensor tape_;
  std::string origin_;
  int64_t next_ = 0;
};

// std::mt19937_64 seeded by the sample's seed with std::normal_distribution<float>: the
// runner's own noise (not the same numbers as torch's generator).
class SeededNoise : public NoiseSource {
 public:
  explicit SeededNoise(uint64_t seed) : engine_(seed) {}
  Tensor randn(const std::vector<int64_t>& shape) override;

 private:
  std::mt19937_64 engine_;
  std::normal_distribution<float> normal_{0.0f, 1.0f};
};

}  // namespace adabldm
