#include "adabldm/blend.hpp"

#include <algorithm>
#include <cmath>

namespace adabldm {

Tensor latent_keep_mask(const Image& trimap, int stride, const LatentMaskSettings& s) {
  if (trimap.channels != 1) throw Error("latent mask: expected a gray trimap");
  if (trimap.width != trimap.height || trimap.width % stride)
    throw Error("trimap " + std::to_string(trimap.width) + "x" + std::to_string(trimap.height) +
                ": expected a square image, a multiple of " + std::to_string(stride) + " px");
  const int n = trimap.width / stride, w = trimap.width;
  std::vector<uint8_t> defect(n * n, 0);
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) {
      if (s.keep_thin) {  // any pixel of the cell
        uint8_t hi = 0;
        for (int y = r * stride; y < (r + 1) * stride; ++y)
          for (int x = c * stride; x < (c + 1) * stride; ++x) hi = std::max(hi, trimap.pixels[y * w + x]);
        defect[r * n + c] = hi >= s.binarize_at;
      } else {  // nearest, OpenCV INTER_NEAREST indexing: src = floor(dst * scale)
        const int y = static_cast<int>(std::floor(static_cast<double>(r) * trimap.height / n));
        const int x = static_cast<int>(std::floor(static_cast<double>(c) * w / n));
        defect[r * n + c] = trimap.pixels[y * w + x] >= s.binarize_at;
      }
    }
  Tensor keep({1, 1, n, n}, 1.0f);
  const int lo = s.dilation > 1 ? -(s.dilation / 2) : 0, hi = s.dilation > 1 ? (s.dilation - 1) / 2 : 0;
  for (int r = 0; r < n; ++r)  // square dilation, centred as scipy.ndimage.binary_dilation
    for (int c = 0; c < n; ++c) {
      bool any = false;
      for (int dy = lo; dy <= hi && !any; ++dy)
        for (int dx = lo; dx <= hi && !any; ++dx) {
          const int y = r + dy, x = c + dx;
          any = y >= 0 && y < n && x >= 0 && x < n && defect[y * n + x];
        }
      if (any) keep.data[r * n + c] = 0.0f;
    }
  return keep;
}

namespace {

// out[b, c, p] = a[b, c, p] * m[b, 0, p] + b_[b, c, p] * (1 - m[b, 0, p])
Tensor masked_mix(const Tensor& a, const Tensor& other, const Tensor& m, const char* what) {
  if (a.shape != other.shape || a.shape.size() != 4 || m.shape.size() != 4 || m.shape[0] != a.shape[0] ||
      m.shape[1] != 1 || m.shape[2] != a.shape[2] || m.shape[3] != a.shape[3])
    throw Error(std::string(what) + ": tensors " + a.shape_str() + ", " + other.shape_str() + " and mask " +
                m.shape_str() + " do not fit");
  const int64_t batch = a.shape[0], ch = a.shape[1], hw = a.shape[2] * a.shape[3];
  Tensor out(a.shape);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t c = 0; c < ch; ++c)
      for (int64_t p = 0; p < hw; ++p) {
        const int64_t k = (b * ch + c) * hw + p;
        const float w = m.data[b * hw + p];
        out.data[k] = a.data[k] * w + other.data[k] * (1.0f - w);
      }
  return out;
}

}  // namespace

Tensor latent_blend(const Tensor& z, const Tensor& z_ok_t, const Tensor& m_keep) {
  return masked_mix(z_ok_t, z, m_keep, "latent blend");
}

Tensor pixel_blend(const Tensor& x0, const Tensor& x_ok, const Tensor& mask) {
  return masked_mix(x0, x_ok, mask, "pixel blend");
}

StagePlan stage_plan(int steps, double latent_fraction, double pixel_fraction) {
  if (!(0.0 <= latent_fraction && latent_fraction <= pixel_fraction && pixel_fraction <= 1.0))
    throw Error("stage fractions " + std::to_string(latent_fraction) + ", " + std::to_string(pixel_fraction) +
                ": expected 0 <= latent_start <= pixel_start <= 1");
  return {steps, static_cast<int>(std::nearbyint(latent_fraction * steps)),
          static_cast<int>(std::nearbyint(pixel_fraction * steps))};
}

std::optional<int> renoise_index(int i, int steps, Renoise mode) {
  if (mode == Renoise::Current) return i;
  if (i + 1 < steps) return i + 1;
  return std::nullopt;
}

}  // namespace adabldm
