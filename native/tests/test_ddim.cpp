// The DDIM table, stage plans and noise-draw counts against what the Python side computes
// (ddim_expected.json, written by make_ddim_expected.py from adabldm_ref.sampler).
#include <fstream>
#include <nlohmann/json.hpp>

#include "adabldm/ddim.hpp"
#include "adabldm/sampler.hpp"
#include "check.hpp"

using namespace adabldm;

int main() {
  std::ifstream in(ADABLDM_TEST_DATA "/ddim_expected.json");
  const auto expected = nlohmann::json::parse(in);
  double worst = 0.0;
  for (const auto& e : expected.at("tables")) {
    const SchedulerSettings s = scheduler_from_json_text(e.at("settings").dump());
    const int steps = e.at("steps").get<int>();
    const DdimTable table = ddim_table(s, steps);
    const std::string where = e.at("scheduler").get<std::string>() + " steps " + std::to_string(steps);
    CHECK_MSG(table.steps() == steps, where);
    for (int i = 0; i < steps; ++i) {
      const DdimRow& r = table.rows[i];
      CHECK_MSG(r.t == e.at("timesteps")[i].get<float>(), where + " t_" + std::to_string(i));
      const float got[4] = {r.sqrt_a, r.sqrt_1ma, r.sqrt_a_prev, r.sqrt_1ma_prev};
      for (int k = 0; k < 4; ++k) {
        const double want = e.at("coef")[i][k].get<double>();
        worst = std::max(worst, std::fabs(got[k] - want) / std::max(std::fabs(want), 1e-12));
        CHECK_MSG(check::close(got[k], want, 2e-6), where + " coef[" + std::to_string(i) + "][" + std::to_string(k) + "]");
      }
    }
    if (e.contains("alphas_cumprod_at")) {
      const auto ac = alphas_cumprod(s);
      for (const auto& [t, v] : e.at("alphas_cumprod_at").items())
        CHECK_MSG(check::close(ac.at(std::stoi(t)), v.get<double>(), 2e-6), where + " alphas_cumprod[" + t + "]");
    }
  }
  std::printf("DDIM coefficients: worst relative difference to Python %.2e\n", worst);
  for (const auto& p : expected.at("stage_plans")) {
    SamplerSettings s;
    s.steps = p.at("steps").get<int>();
    s.renoise = p.at("renoise").get<std::string>() == "current" ? Renoise::Current : Renoise::Next;
    const StagePlan plan = stage_plan(s.steps, s.latent_start, s.pixel_start);
    const std::string where = "steps " + std::to_string(s.steps) + " " + p.at("renoise").get<std::string>();
    CHECK_MSG(plan.latent_start == p.at("latent_start").get<int>(), where);
    CHECK_MSG(plan.pixel_start == p.at("pixel_start").get<int>(), where);
    CHECK_MSG(noise_draws(s) == p.at("noise_draws").get<int>(), where);
  }
  // The step itself: z_prev from pred_x0 and eps, and add_noise as q_sample.
  const DdimTable t = ddim_table(SchedulerSettings{}, 50);
  Tensor z({1, 1, 1, 2}, std::vector<float>{0.5f, -1.0f}), eps({1, 1, 1, 2}, std::vector<float>{0.1f, 0.2f}), z_prev, x0;
  ddim_update(t.rows[10], z, eps, z_prev, x0);
  for (int k = 0; k < 2; ++k) {
    CHECK(check::close(x0.data[k], (z.data[k] - t.rows[10].sqrt_1ma * eps.data[k]) / t.rows[10].sqrt_a, 1e-6));
    const Tensor back = add_noise(t.rows[10], x0, eps);  // q_sample of pred_x0 with the same eps gives z back
    CHECK(check::close(back.data[k], z.data[k], 1e-5, 1e-6));
  }
  SchedulerSettings v;
  v.prediction_type = "v_prediction";
  CHECK_THROWS(ddim_table(v, 50));
  SchedulerSettings karras;
  karras.beta_schedule = "squaredcos_cap_v2";
  CHECK_THROWS(ddim_table(karras, 50));
  CHECK_THROWS(ddim_table(SchedulerSettings{}, 0));
  return check::finish("test_ddim");
}
