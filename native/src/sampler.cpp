#include "adabldm/sampler.hpp"

namespace adabldm {
namespace {

// Row `r` of (2, n, d) embeddings repeated `times` times: (times, n, d).
Tensor repeat_row(const Tensor& embeddings, int64_t r, int64_t times) {
  Tensor row = slice_rows(embeddings, r, 1), out = row;
  for (int64_t k = 1; k < times; ++k) out = cat_rows(out, row);
  return out;
}

}  // namespace

GuidedEps::GuidedEps(Network* unet_control, Network* controlnet, Network* unet, const Tensor& embeddings,
                     const Tensor& hint, double guidance, double control_scale)
    : unet_control_(unet_control), controlnet_(controlnet), unet_(unet),
      text_ctx_(cat_rows(slice_rows(embeddings, 1, 1), slice_rows(embeddings, 0, 1))),  // [empty, prompt]
      control_ctx_(repeat_row(embeddings, 1, 2)),  // the ControlNet gets the empty prompt in both halves
      hint2_(cat_rows(hint, hint)),
      control_scale_({}, static_cast<float>(control_scale)),
      guidance_(static_cast<float>(guidance)) {
  if (embeddings.shape.size() != 3 || embeddings.shape[0] != 2)
    throw Error("text embeddings of shape " + embeddings.shape_str() + ": expected (2, 77, d), prompt then empty");
  if (!unet_control_ && !(controlnet_ && unet_)) throw Error("GuidedEps needs unet_control or controlnet + unet");
}

Tensor GuidedEps::operator()(const Tensor& z, float t) {
  const Tensor zz = cat_rows(z, z), timestep({}, t);
  Tensor eps;
  if (unet_control_) {
    eps = unet_control_->infer({{"sample", &zz}, {"timestep", &timestep}, {"text_ctx", &text_ctx_},
                                {"control_ctx", &control_ctx_}, {"hint", &hint2_}, {"control_scale", &control_scale_}})
              .at("eps");
  } else {  // split graphs: the ControlNet's residuals feed the UNet
    Outputs residuals = controlnet_->infer({{"sample", &zz}, {"timestep", &timestep}, {"control_ctx", &control_ctx_},
                                            {"hint", &hint2_}, {"control_scale", &control_scale_}});
    Feed feed{{"sample", &zz}, {"timestep", &timestep}, {"text_ctx", &text_ctx_}};
    for (const auto& [name, r] : residuals) feed.emplace(name, &r);
    eps = unet_->infer(feed).at("eps");
  }
  // eps_uncond + guidance * (eps_cond - eps_uncond), unconditional rows first
  const int64_t half = eps.numel() / 2;
  Tensor out(z.shape);
  for (int64_t k = 0; k < half; ++k) {
    const float u = eps.data[k], c = eps.data[half + k];
    out.data[k] = u + guidance_ * (c - u);
  }
  return out;
}

Tensor Codec::encode(const Tensor& x, const Tensor& noise) {
  return encoder_->infer({{"image", &x}, {"noise", &noise}}).at("latent");
}

Tensor Codec::decode(const Tensor& z) { return decoder_->infer({{"latent", &z}}).at("image"); }

Tensor sample_blended(GuidedEps& eps, Codec& codec, const Tensor& z_t, const DdimTable& table,
                      const SamplerSettings& s, const BlendTargets& targets, NoiseSource& noise,
                      const std::function<void(int)>& callback) {
  if (table.steps() != s.steps)
    throw Error("DDIM table of " + std::to_string(table.steps()) + " steps, sampler settings have " +
                std::to_string(s.steps));
  const StagePlan plan = stage_plan(s.steps, s.latent_start, s.pixel_start);
  const std::vector<int64_t> shape = z_t.shape;
  Tensor z = z_t, pred_x0;
  for (int i = 0; i < s.steps; ++i) {
    const DdimRow& row = table.rows[i];
    if (s.blend && plan.latent_edit(i)) {
      const Tensor z_ok_t = add_noise(row, targets.z_ok, noise.randn(shape));
      z = latent_blend(z, z_ok_t, targets.m_keep);  // latent blend
    }
    Tensor z_prev;
    ddim_update(row, z, eps(z, row.t), z_prev, pred_x0);
    z = std::move(z_prev);
    if (s.blend && plan.pixel_edit(i)) {
      const Tensor x_b = pixel_blend(codec.decode(pred_x0), targets.x_ok, targets.mask);  // pixel blend
      const Tensor z0_b = codec.encode(x_b, noise.randn(shape));
      const std::optional<int> j = renoise_index(i, s.steps, s.renoise);
      z = j ? add_noise(table.rows[*j], z0_b, noise.randn(shape)) : z0_b;
    }
    if (callback) callback(i);
  }
  return z;
}

int noise_draws(const SamplerSettings& s) {
  int n = 2;  // z_T, then the OK image's encoder noise
  if (!s.blend) return n;
  const StagePlan plan = stage_plan(s.steps, s.latent_start, s.pixel_start);
  for (int i = 0; i < s.steps; ++i) {
    n += plan.latent_edit(i);
    if (plan.pixel_edit(i)) n += 1 + (renoise_index(i, s.steps, s.renoise) ? 1 : 0);
  }
  return n;
}

}  // namespace adabldm
