// Files: .npy and PNG round trips, the pixel <-> tensor conversions, the manifest reader's
// errors, and the network boundary's feed checks.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "adabldm/image.hpp"
#include "adabldm/manifest.hpp"
#include "adabldm/network.hpp"
#include "adabldm/npy.hpp"
#include "check.hpp"

using namespace adabldm;
namespace fs = std::filesystem;

int main() {
  const fs::path dir = fs::temp_directory_path() / ("adabldm_test_io_" + std::to_string(::getpid()));
  fs::create_directories(dir);

  Tensor t({2, 3, 4});
  for (size_t k = 0; k < t.data.size(); ++k) t.data[k] = 0.5f * static_cast<float>(k) - 3.0f;
  write_npy((dir / "t.npy").string(), t);
  const Tensor back = read_npy((dir / "t.npy").string());
  CHECK(back.shape == t.shape && back.data == t.data);
  write_npy((dir / "s.npy").string(), Tensor({}, 2.5f));
  CHECK(read_npy((dir / "s.npy").string()).shape.empty());
  std::ofstream((dir / "bad.npy").string()) << "not numpy";
  CHECK_THROWS(read_npy((dir / "bad.npy").string()));
  CHECK_THROWS(read_npy((dir / "missing.npy").string()));

  Image rgb{5, 4, 3, {}};
  for (int k = 0; k < 5 * 4 * 3; ++k) rgb.pixels.push_back(static_cast<uint8_t>(k * 4));
  write_png((dir / "rgb.png").string(), rgb);
  const Image rgb2 = read_png((dir / "rgb.png").string(), 3);
  CHECK(rgb2.width == 5 && rgb2.height == 4 && rgb2.pixels == rgb.pixels);
  const Tensor x = rgb_to_tensor(rgb);
  CHECK(x.shape == (std::vector<int64_t>{1, 3, 4, 5}));
  CHECK(x.data[0] == -1.0f && x.data[20] == 4.0f / 127.5f - 1.0f);  // channel 1 of pixel 0 (planes of 20)
  CHECK(tensor_to_rgb(x).pixels == rgb.pixels);  // uint8 -> [-1, 1] -> uint8 is exact
  Tensor half({1, 3, 1, 1}, std::vector<float>{-2.0f, 2.0f, 1.0f / 255.0f});
  const Image h = tensor_to_rgb(half);  // clamped; 128.0 rounds to 128
  CHECK(h.pixels[0] == 0 && h.pixels[1] == 255 && h.pixels[2] == 128);
  Image g{2, 2, 1, {0, 127, 255, 3}};
  CHECK(mask_to_tensor(g).data == (std::vector<float>{0, 1, 1, 1}));
  CHECK(trimap_to_hint(g).data[2] == 1.0f && trimap_to_hint(g).data.size() == 12);
  CHECK_THROWS(read_png((dir / "t.npy").string(), 3));

  CHECK_THROWS(read_manifest((dir / "nowhere").string()));
  std::ofstream((dir / "manifest.json").string()) << R"({"format_version": 99})";
  CHECK_THROWS(read_manifest(dir.string()));

  NetworkSpec spec{"net", {{"sample", {Dim{-1, "B2"}, Dim{4, ""}}, "float32"}, {"timestep", {}, "float32"}}, {}};
  Tensor s2({2, 4}), ts(std::vector<int64_t>{}), wrong({2, 5});
  check_feed(spec, {{"sample", &s2}, {"timestep", &ts}});
  CHECK_THROWS(check_feed(spec, {{"sample", &wrong}, {"timestep", &ts}}));
  CHECK_THROWS(check_feed(spec, {{"sample", &s2}}));
  CHECK_THROWS(check_feed(spec, {{"sample", &s2}, {"timestep", &ts}, {"extra", &ts}}));
  NetworkSpec two{"net", {{"a", {Dim{-1, "B"}}, "float32"}, {"b", {Dim{-1, "B"}}, "float32"}}, {}};
  Tensor a2({2}), b3({3});
  CHECK_THROWS(check_feed(two, {{"a", &a2}, {"b", &b3}}));  // one symbol, two sizes
  fs::remove_all(dir);
  return check::finish("test_io");
}
