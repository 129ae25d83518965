// The three-stage blended DDIM of adabldm_ref.sampler.sample_blended, over exported
// networks: guidance as one 2B UNet+ControlNet call, the latent blend before the step in
// the latent window, decode-blend-encode-renoise after it in the pixel window.
#pragma once

#include <functional>
#include <memory>

#include "adabldm/blend.hpp"
#include "adabldm/ddim.hpp"
#include "adabldm/network.hpp"
#include "adabldm/noise.hpp"

namespace adabldm {

// adabldm_ref.config.SamplerConfig (eta is 0: deterministic DDIM only).
struct SamplerSettings {
  int steps = 50;
  double guidance = 9.0;
  double control_scale = 1.0;
  double latent_start = 26.0 / 50.0;
  double pixel_start = 45.0 / 50.0;
  Renoise renoise = Renoise::Next;
  bool blend = true;
};

// eps(z, t) with classifier-free guidance: the UNet with its ControlNet (one folded
// network, or the two split ones) on the batch [z, z], unconditional rows first.
class GuidedEps {
 public:
  // embeddings (2, 77, d): the prompt's, then the empty prompt's; hint (1, 3, H, W).
  GuidedEps(Network* unet_control, Network* controlnet, Network* unet, const Tensor& embeddings, const Tensor& hint,
            double guidance, double control_scale);
  Tensor operator()(const Tensor& z, float t);

 private:
  Network *unet_control_, *controlnet_, *unet_;
  Tensor text_ctx_, control_ctx_, hint2_, control_scale_;
  float guidance_;
};

// The scaled VAE as two networks: latent = encoder(image, noise), image = decoder(latent).
class Codec {
 public:
  Codec(Network* encoder, Network* decoder) : encoder_(encoder), decoder_(decoder) {}
  Tensor encode(const Tensor& x, const Tensor& noise);
  Tensor decode(const Tensor& z);

 private:
  Network *encoder_, *decoder_;
};

// What blending keeps of the OK image (adabldm_ref.sampler.BlendTargets), one sample.
struct BlendTargets {
  Tensor z_ok;    // (1, 4, h, w)
  Tensor m_keep;  // (1, 1, h, w), 1 = keep the OK latent
  Tensor x_ok;    // (1, 3, H, W) in [-1, 1]
  Tensor mask;    // (1, 1, H, W), 1 = defect
};

// z_0 from z_T; `callback(i)` after each step.
Tensor sample_blended(GuidedEps& eps, Codec& codec, const Tensor& z_t, const DdimTable& table,
                      const SamplerSettings& s, const BlendTargets& targets, NoiseSource& noise,
                      const std::function<void(int)>& callback = {});

// The randn draws of one sample in the order the sampler makes them (z_T, the OK image's
// encoder noise, then the loop's): the length of a noise tape.
int noise_draws(const SamplerSettings& s);

}  // namespace adabldm
