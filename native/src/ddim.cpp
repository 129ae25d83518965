#include "adabldm/ddim.hpp"

#include <cmath>

namespace adabldm {

std::vector<float> alphas_cumprod(const SchedulerSettings& s) {
  const int n = s.num_train_timesteps;
  std::vector<float> ac(n);
  double prod = 1.0;
  for (int i = 0; i < n; ++i) {
    const double f = n > 1 ? static_cast<double>(i) / (n - 1) : 0.0;
    float beta;
    if (s.beta_schedule == "scaled_linear") {
      const double r = std::sqrt(s.beta_start) + f * (std::sqrt(s.beta_end) - std::sqrt(s.beta_start));
      beta = static_cast<float>(static_cast<float>(r) * static_cast<float>(r));
    } else if (s.beta_schedule == "linear") {
      beta = static_cast<float>(s.beta_start + f * (s.beta_end - s.beta_start));
    } else {
      throw Error("scheduler beta_schedule '" + s.beta_schedule + "': the runner implements scaled_linear and linear");
    }
    prod *= static_cast<double>(1.0f - beta);
    ac[i] = static_cast<float>(prod);
  }
  return ac;
}

std::vector<int> ddim_timesteps(const SchedulerSettings& s, int steps) {
  const int n = s.num_train_timesteps;
  if (steps < 1 || steps > n)
    throw Error("DDIM steps " + std::to_string(steps) + ": expected 1.." + std::to_string(n));
  std::vector<int> ts(steps);
  if (s.timestep_spacing == "leading") {
    const int ratio = n / steps;
    for (int i = 0; i < steps; ++i) ts[i] = (steps - 1 - i) * ratio + s.steps_offset;
  } else if (s.timestep_spacing == "trailing") {
    const double ratio = static_cast<double>(n) / steps;
    for (int i = 0; i < steps; ++i) ts[i] = static_cast<int>(std::nearbyint(n - i * ratio)) - 1;
  } else if (s.timestep_spacing == "linspace") {
    for (int i = 0; i < steps; ++i) {
      const double v = steps > 1 ? static_cast<double>(n - 1) * (steps - 1 - i) / (steps - 1) : 0.0;
      ts[i] = static_cast<int>(std::nearbyint(v));
    }
  } else {
    throw Error("scheduler timestep_spacing '" + s.timestep_spacing + "': expected leading, trailing or linspace");
  }
  return ts;
}

DdimTable ddim_table(const SchedulerSettings& s, int steps) {
  if (s.prediction_type != "epsilon")
    throw Error("scheduler prediction_type '" + s.prediction_type + "': the runner implements epsilon");
  if (s.clip_sample) throw Error("scheduler clip_sample true: the runner implements clip_sample false");
  const std::vector<float> ac = alphas_cumprod(s);
  const float final_alpha = s.set_alpha_to_one ? 1.0f : ac[0];
  const std::vector<int> timesteps = ddim_timesteps(s, steps);  // checks steps
  const int stride = s.num_train_timesteps / steps;  // diffusers' prev_timestep offset
  DdimTable table;
  for (int t : timesteps) {
    const int prev = t - stride;
    const float a_t = ac.at(t), a_prev = prev >= 0 ? ac.at(prev) : final_alpha;
    table.rows.push_back({static_cast<float>(t), std::sqrt(a_t), std::sqrt(1.0f - a_t), std::sqrt(a_prev),
                          std::sqrt(1.0f - a_prev)});
  }
  return table;
}

Tensor add_noise(const DdimRow& row, const Tensor& x0, const Tensor& noise) {
  if (x0.shape != noise.shape) throw Error("add_noise: x0 " + x0.shape_str() + ", noise " + noise.shape_str());
  Tensor out(x0.shape);
  for (size_t k = 0; k < out.data.size(); ++k) out.data[k] = row.sqrt_a * x0.data[k] + row.sqrt_1ma * noise.data[k];
  return out;
}

void ddim_update(const DdimRow& row, const Tensor& z, const Tensor& eps, Tensor& z_prev, Tensor& pred_x0) {
  if (z.shape != eps.shape) throw Error("DDIM step: z " + z.shape_str() + ", eps " + eps.shape_str());
  pred_x0 = Tensor(z.shape);
  z_prev = Tensor(z.shape);
  for (size_t k = 0; k < z.data.size(); ++k) {
    const float x0 = (z.data[k] - row.sqrt_1ma * eps.data[k]) / row.sqrt_a;
    pred_x0.data[k] = x0;
    z_prev.data[k] = row.sqrt_a_prev * x0 + row.sqrt_1ma_prev * eps.data[k];
  }
}

}  // namespace adabldm
