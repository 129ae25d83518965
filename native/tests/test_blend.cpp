// Blend invariants: what the latent and pixel blends keep, the latent mask (nearest cells,
// keep-thin cells, square dilation), the re-noise index and the noise tape's checks.
#include "adabldm/blend.hpp"
#include "adabldm/noise.hpp"
#include "adabldm/sampler.hpp"
#include "check.hpp"

using namespace adabldm;

namespace {

Tensor ramp(std::vector<int64_t> shape, float scale) {
  Tensor t(std::move(shape));
  for (size_t k = 0; k < t.data.size(); ++k) t.data[k] = scale * static_cast<float>(k % 13) - 1.0f;
  return t;
}

Image gray(int size, uint8_t fill) { return Image{size, size, 1, std::vector<uint8_t>(size * size, fill)}; }

}  // namespace

int main() {
  const Tensor z = ramp({1, 4, 4, 4}, 0.1f), z_ok = ramp({1, 4, 4, 4}, -0.2f);
  Tensor m({1, 1, 4, 4}, 0.0f);
  m.data[5] = 1.0f;  // keep the OK latent at cell (1, 1) only
  const Tensor blended = latent_blend(z, z_ok, m);
  for (int c = 0; c < 4; ++c)
    for (int p = 0; p < 16; ++p) {
      const int k = c * 16 + p;
      CHECK(blended.data[k] == (p == 5 ? z_ok.data[k] : z.data[k]));  // m_keep 1: OK latent; 0: generated
    }
  CHECK(latent_blend(z, z_ok, Tensor({1, 1, 4, 4}, 1.0f)).data == z_ok.data);
  CHECK(latent_blend(z, z_ok, Tensor({1, 1, 4, 4}, 0.0f)).data == z.data);

  const Tensor x0 = ramp({1, 3, 8, 8}, 0.15f), x_ok = ramp({1, 3, 8, 8}, 0.05f);
  Tensor mask({1, 1, 8, 8}, 0.0f);
  for (int p = 18; p < 22; ++p) mask.data[p] = 1.0f;
  const Tensor xb = pixel_blend(x0, x_ok, mask);
  for (int c = 0; c < 3; ++c)
    for (int p = 0; p < 64; ++p) {
      const int k = c * 64 + p;
      CHECK(xb.data[k] == (mask.data[p] > 0 ? x0.data[k] : x_ok.data[k]));  // outside M: the OK image exactly
    }
  CHECK_THROWS(pixel_blend(x0, x_ok, Tensor({1, 1, 4, 4})));
  CHECK_THROWS(latent_blend(z, ramp({1, 4, 8, 8}, 1.0f), m));

  // Latent mask of a 64 px trimap (stride 8 -> 8 x 8): one defect pixel at the sampled
  // position of cell (3, 4) -> that cell, dilated 5 x 5 -> rows 1..5, cols 2..6.
  Image tri = gray(64, 127);
  tri.pixels[24 * 64 + 32] = 255;
  LatentMaskSettings s;
  Tensor keep = latent_keep_mask(tri, 8, s);
  CHECK(keep.shape == (std::vector<int64_t>{1, 1, 8, 8}));
  int zeros = 0;
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 8; ++c) {
      const bool inside = r >= 1 && r <= 5 && c >= 2 && c <= 6;
      zeros += keep.data[r * 8 + c] == 0.0f;
      CHECK(keep.data[r * 8 + c] == (inside ? 0.0f : 1.0f));
    }
  CHECK(zeros == 25);
  // A thin defect off the sampled pixels vanishes with nearest cells, stays with keep_thin.
  Image thin = gray(64, 127);
  thin.pixels[27 * 64 + 35] = 255;
  s.dilation = 1;
  keep = latent_keep_mask(thin, 8, s);
  CHECK(std::count(keep.data.begin(), keep.data.end(), 0.0f) == 0);
  s.keep_thin = true;
  keep = latent_keep_mask(thin, 8, s);
  CHECK(std::count(keep.data.begin(), keep.data.end(), 0.0f) == 1 && keep.data[3 * 8 + 4] == 0.0f);
  // Below the threshold is not defect; no defect: keep everything.
  thin.pixels[27 * 64 + 35] = 199;
  keep = latent_keep_mask(thin, 8, s);
  CHECK(std::count(keep.data.begin(), keep.data.end(), 1.0f) == 64);
  CHECK_THROWS(latent_keep_mask(gray(60, 0), 8, s));

  // Re-noise: "next" to the following step, clean after the last; "current" to the same.
  CHECK(renoise_index(3, 10, Renoise::Next).value() == 4);
  CHECK(!renoise_index(9, 10, Renoise::Next).has_value());
  CHECK(renoise_index(9, 10, Renoise::Current).value() == 9);
  const StagePlan plan = stage_plan(50, 26.0 / 50, 45.0 / 50);
  CHECK(!plan.latent_edit(25) && plan.latent_edit(26) && plan.latent_edit(45) && !plan.latent_edit(46));
  CHECK(!plan.pixel_edit(44) && plan.pixel_edit(45) && plan.pixel_edit(49));
  CHECK_THROWS(stage_plan(50, 0.9, 0.5));

  // The tape: draws in order, a wrong shape or one draw too many is an error.
  Tensor tape({3, 4, 2, 2});
  for (size_t k = 0; k < tape.data.size(); ++k) tape.data[k] = static_cast<float>(k);
  TapeNoise noise(tape);
  CHECK(noise.randn({1, 4, 2, 2}).data[0] == 0.0f);
  CHECK(noise.randn({1, 4, 2, 2}).data[0] == 16.0f);
  CHECK_THROWS(noise.randn({1, 4, 3, 3}));
  CHECK(noise.randn({1, 4, 2, 2}).data[15] == 47.0f);
  CHECK_THROWS(noise.randn({1, 4, 2, 2}));
  // The runner's own generator: seeded, reproducible, roughly standard normal.
  SeededNoise a(7), b(7);
  const Tensor na = a.randn({1, 4, 32, 32}), nb = b.randn({1, 4, 32, 32});
  CHECK(na.data == nb.data);
  double mean = 0, var = 0;
  for (float v : na.data) mean += v;
  mean /= na.data.size();
  for (float v : na.data) var += (v - mean) * (v - mean);
  var /= na.data.size();
  CHECK(std::fabs(mean) < 0.1 && std::fabs(var - 1.0) < 0.1);
  return check::finish("test_blend");
}
