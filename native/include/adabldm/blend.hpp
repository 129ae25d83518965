// The blends and masks of the three-stage sampler (adabldm_ref.sampler, adabldm_ref.masks):
// pure functions on tensors.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "adabldm/image.hpp"
#include "adabldm/tensor.hpp"

namespace adabldm {

// Latent-mask settings (adabldm_ref.config.MaskConfig).
struct LatentMaskSettings {
  int binarize_at = 200;   // defect where the trimap is >= this
  int dilation = 5;        // square dilation side (<= 1: none)
  bool keep_thin = false;  // a cell is defect if any pixel is (else nearest resize)
};

// m_keep (1, 1, R/stride, R/stride): 1 = keep the OK latent (adabldm_ref.masks.latent_keep_mask).
Tensor latent_keep_mask(const Image& trimap, int stride, const LatentMaskSettings& s);

// z <- z_ok_t * m_keep + z * (1 - m_keep); m_keep broadcast over channels.
Tensor latent_blend(const Tensor& z, const Tensor& z_ok_t, const Tensor& m_keep);
// x_b = x0 * M + x_ok * (1 - M); M (1, 1, H, W) broadcast over channels.
Tensor pixel_blend(const Tensor& x0, const Tensor& x_ok, const Tensor& mask);

// Step indices where the stages start (adabldm_ref.sampler.StagePlan / stage_plan):
// round-half-even of fraction * steps, as Python's round.
struct StagePlan {
  int steps = 0, latent_start = 0, pixel_start = 0;
  bool latent_edit(int i) const { return latent_start <= i && i <= pixel_start; }
  bool pixel_edit(int i) const { return i >= pixel_start; }
};
StagePlan stage_plan(int steps, double latent_fraction, double pixel_fraction);

enum class Renoise { Next, Current };
// The step whose timestep the pixel-blended x0 is re-noised to after step i (none: clean).
std::optional<int> renoise_index(int i, int steps, Renoise mode);

}  // namespace adabldm
