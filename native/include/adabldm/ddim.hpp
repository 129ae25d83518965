// The DDIM table: timesteps and the four coefficients per step, derived from the
// manifest's scheduler settings as diffusers' DDIMScheduler does (set_timesteps, step with
// eta 0, add_noise). Mirrors adabldm_ref.sampler.ddim_schedule. DDIM: Song et al., 2010.02502.
#pragma once

#include <vector>

#include "adabldm/manifest.hpp"
#include "adabldm/tensor.hpp"

namespace adabldm {

struct DdimRow {
  float t;            // timestep t_i
  float sqrt_a;       // sqrt(alphas_cumprod[t])
  float sqrt_1ma;     // sqrt(1 - alphas_cumprod[t])
  float sqrt_a_prev;  // sqrt(alphas_cumprod[t - T / S]) (final alpha past the start)
  float sqrt_1ma_prev;
};

struct DdimTable {
  std::vector<DdimRow> rows;
  int steps() const { return static_cast<int>(rows.size()); }
};

// alphas_cumprod over the training timesteps (float32 as diffusers keeps them).
std::vector<float> alphas_cumprod(const SchedulerSettings& s);
// The inference timesteps of `steps` steps for the schedule's spacing, descending.
std::vector<int> ddim_timesteps(const SchedulerSettings& s, int steps);
// Error for settings the runner does not implement (v-prediction, clip_sample, ...).
DdimTable ddim_table(const SchedulerSettings& s, int steps);

// q_sample(x0, t_i) = sqrt(a_t) x0 + sqrt(1 - a_t) noise.
Tensor add_noise(const DdimRow& row, const Tensor& x0, const Tensor& noise);
// One DDIM update (eta 0) from z and the guided eps: z_prev and pred_x0 (engine/step.py).
void ddim_update(const DdimRow& row, const Tensor& z, const Tensor& eps, Tensor& z_prev, Tensor& pred_x0);

}  // namespace adabldm
