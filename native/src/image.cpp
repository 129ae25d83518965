#include "adabldm/image.hpp"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace adabldm {

Image read_png(const std::string& path, int channels) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&png, path.c_str()))
    throw Error("cannot read PNG " + path + ": " + png.message);
  png.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  Image image{static_cast<int>(png.width), static_cast<int>(png.height), channels, {}};
  image.pixels.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, image.pixels.data(), 0, nullptr)) {
    const std::string msg = png.message;
    png_image_free(&png);
    throw Error("cannot decode PNG " + path + ": " + msg);
  }
  return image;
}

void write_png(const std::string& path, const Image& image) {
  if (image.channels != 1 && image.channels != 3)
    throw Error("PNG of " + std::to_string(image.channels) + " channels: expected 1 or 3");
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = image.channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  const std::string tmp = path + ".tmp";
  if (!png_image_write_to_file(&png, tmp.c_str(), 0, image.pixels.data(), 0, nullptr))
    throw Error("cannot write PNG " + tmp + ": " + png.message);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error("cannot rename " + tmp + " to " + path);
}

Tensor rgb_to_tensor(const Image& rgb) {
  if (rgb.channels != 3) throw Error("expected an RGB image");
  const int64_t h = rgb.height, w = rgb.width, hw = h * w;
  Tensor x({1, 3, h, w});
  for (int64_t p = 0; p < hw; ++p)
    for (int c = 0; c < 3; ++c) x.data[c * hw + p] = static_cast<float>(rgb.pixels[p * 3 + c]) / 127.5f - 1.0f;
  return x;
}

Image tensor_to_rgb(const Tensor& x) {
  if (x.shape.size() != 4 || x.shape[0] != 1 || x.shape[1] != 3)
    throw Error("image tensor of shape " + x.shape_str() + ": expected (1, 3, H, W)");
  const int64_t h = x.shape[2], w = x.shape[3], hw = h * w;
  Image rgb{static_cast<int>(w), static_cast<int>(h), 3, std::vector<uint8_t>(hw * 3)};
  for (int64_t p = 0; p < hw; ++p)
    for (int c = 0; c < 3; ++c) {
      const float v = (std::clamp(x.data[c * hw + p], -1.0f, 1.0f) + 1.0f) * 127.5f;
      rgb.pixels[p * 3 + c] = static_cast<uint8_t>(std::nearbyint(v));  // half to even, as torch.round
    }
  return rgb;
}

Tensor mask_to_tensor(const Image& gray) {
  if (gray.channels != 1) throw Error("expected a gray mask");
  Tensor m({1, 1, gray.height, gray.width});
  for (size_t p = 0; p < gray.pixels.size(); ++p) m.data[p] = gray.pixels[p] > 0 ? 1.0f : 0.0f;
  return m;
}

Tensor trimap_to_hint(const Image& gray) {
  if (gray.channels != 1) throw Error("expected a gray trimap");
  const int64_t hw = static_cast<int64_t>(gray.pixels.size());
  Tensor hint({1, 3, gray.height, gray.width});
  for (int c = 0; c < 3; ++c)
    for (int64_t p = 0; p < hw; ++p) hint.data[c * hw + p] = static_cast<float>(gray.pixels[p]) / 255.0f;
  return hint;
}

}  // namespace adabldm
