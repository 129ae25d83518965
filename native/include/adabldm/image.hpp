// PNG in and out through libpng's simplified API, and the pixel <-> tensor conversions
// of the Python pipeline (adabldm_ref.pipeline.to_tensor / to_uint8).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "adabldm/tensor.hpp"

namespace adabldm {

struct Image {
  int width = 0, height = 0, channels = 0;  // channels: 1 (gray) or 3 (RGB)
  std::vector<uint8_t> pixels;              // row-major, interleaved
};

// Reads any PNG as gray (channels 1) or RGB (channels 3).
Image read_png(const std::string& path, int channels);
// Writes an 8-bit gray or RGB PNG atomically.
void write_png(const std::string& path, const Image& image);

// RGB uint8 (H, W, 3) -> (1, 3, H, W) float32 in [-1, 1]: v / 127.5 - 1.
Tensor rgb_to_tensor(const Image& rgb);
// (1, 3, H, W) float in [-1, 1] -> RGB uint8: round((clamp(x, -1, 1) + 1) * 127.5).
Image tensor_to_rgb(const Tensor& x);
// Gray uint8 -> (1, 1, H, W) float32 with 1 where the pixel is > 0 (the binary mask M).
Tensor mask_to_tensor(const Image& gray);
// Gray trimap (0 / 127 / 255) -> the ControlNet hint (1, 3, H, W) in [0, 1] (v / 255).
Tensor trimap_to_hint(const Image& gray);

}  // namespace adabldm
