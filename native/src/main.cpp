// adabldm-native: one sample's blended sampler over a bundle's networks, without Python.
// Usage errors exit 2, runtime failures exit 1 (the message names the value and what was
// expected). Adaptation (stage 4) stays in the Python runtime.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "adabldm/image.hpp"
#include "adabldm/npy.hpp"
#include "adabldm/sampler.hpp"

namespace fs = std::filesystem;
using namespace adabldm;

namespace {

const char* kHelp = R"(Usage: adabldm-native --bundle DIR --sample DIR --out DIR [options]

Runs stages 1-3 of AdaBLDM (three-stage blended DDIM with classifier-free guidance) for
one sample over a bundle's networks and writes OUT/blended.png (the pre-adaptation image),
OUT/latent.npy (the final latent, (1, 4, h, w) float32) and OUT/run.json (timings).
With --sample DUMP, a folder of sample folders (adabldm-run --dump-noise DUMP), it runs
each into OUT/NAME/, loading the networks once; a rerun skips the samples already written.
Online decoder adaptation is not done here: it stays in the Python runtime.
Exit codes: 0 done; 1 error (the samples written before it are kept); 2 usage.

Inputs:
  --bundle DIR          bundle written by adabldm-export (manifest.json, onnx/)
  --sample DIR          a sample folder of adabldm-run --dump-noise: sample.json (settings),
                        ok.png, trimap.png, mask.png, embeddings.npy, noise.npy; or the
                        dump folder holding them (NNNN/), to run every sample
  --ok PNG              OK image at the bundle's resolution (default: SAMPLE/ok.png)
  --trimap PNG          trimap 0/127/255 (default: SAMPLE/trimap.png)
  --mask PNG            defect mask M, > 0 = defect (default: SAMPLE/mask.png)
  --latent-mask NPY     m_keep (h, w) float32 (default: derived from the trimap as Python does)
  --embeddings NPY      text embeddings (2, 77, d): the prompt's, then the empty prompt's
                        (default: SAMPLE/embeddings.npy; the runner has no tokenizer)
  --noise NPY           noise tape (N, 4, h, w) in the sampler's draw order (default: SAMPLE/noise.npy)
  --seed N              draw noise from the runner's own generator (std::mt19937_64) instead
Sampler (default: SAMPLE/sample.json, else the reference settings):
  --steps N  --guidance G  --control-scale S  --latent-start F  --pixel-start F
  --renoise next|current  --no-blend  --keep-thin  --binarize-at N  --latent-dilation N
Runtime:
  --backend NAME        onnxruntime, openvino or tensorrt, where compiled in (default: the first)
  --threads N           intra-op threads (default: the runtime's)
  --cuda-device N       CUDA device for tensorrt (default 0)
  --repeat N            sample N times (timing; the same result each time)
  --out DIR             output folder (created)
  --quiet               no per-step progress on stderr
  --version, -h/--help
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::map<std::string, std::string> values;
  std::map<std::string, bool> flags;
  bool has(const std::string& k) const { return values.count(k) > 0; }
  std::string get(const std::string& k, const std::string& fallback = "") const {
    auto it = values.find(k);
    return it == values.end() ? fallback : it->second;
  }
};

Args parse_args(int argc, char** argv) {
  static const std::vector<std::string> valued = {
      "bundle", "sample", "out", "ok", "trimap", "mask", "latent-mask", "embeddings", "noise", "seed", "steps",
      "guidance", "control-scale", "latent-start", "pixel-start", "renoise", "binarize-at", "latent-dilation",
      "backend", "threads", "cuda-device", "repeat"};
  static const std::vector<std::string> flags = {"no-blend", "keep-thin", "quiet", "help", "version"};
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "-h") k = "--help";
    if (k.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + k + "'");
    k = k.substr(2);
    if (std::find(flags.begin(), flags.end(), k) != flags.end()) {
      a.flags[k] = true;
    } else if (std::find(valued.begin(), valued.end(), k) != valued.end()) {
      if (i + 1 >= argc) throw UsageError("--" + k + " needs a value");
      a.values[k] = argv[++i];
    } else {
      throw UsageError("unknown option --" + k + " (see --help)");
    }
  }
  return a;
}

double to_number(const std::string& key, const std::string& v) {
  try {
    size_t used = 0;
    const double x = std::stod(v, &used);
    if (used == v.size() && std::isfinite(x)) return x;
  } catch (const std::exception&) {
  }
  throw UsageError("--" + key + " '" + v + "': expected a finite number");
}

int to_int(const std::string& key, const std::string& v, int lo) {
  const double x = to_number(key, v);
  if (x != static_cast<int>(x) || x < lo)
    throw UsageError("--" + key + " '" + v + "': expected an integer >= " + std::to_string(lo));
  return static_cast<int>(x);
}

struct Settings {
  SamplerSettings sampler;
  LatentMaskSettings masks;
  std::string identity;  // the model the embeddings came from ("" if unknown)
};

void read_sample_json(const nlohmann::json& j, const std::string& file, Settings& s) {
  const auto& sm = j.at("sampler");
  if (sm.value("eta", 0.0) != 0.0) throw Error(file + ": sampler eta != 0; the runner implements deterministic DDIM");
  s.sampler.steps = sm.at("steps").get<int>();
  s.sampler.guidance = sm.at("guidance").get<double>();
  s.sampler.control_scale = sm.at("control_scale").get<double>();
  s.sampler.latent_start = sm.at("latent_start").get<double>();
  s.sampler.pixel_start = sm.at("pixel_start").get<double>();
  s.sampler.renoise = sm.at("renoise").get<std::string>() == "current" ? Renoise::Current : Renoise::Next;
  s.sampler.blend = sm.at("blend").get<bool>();
  const auto& mk = j.at("masks");
  s.masks.binarize_at = mk.at("binarize_at").get<int>();
  s.masks.dilation = mk.at("latent_dilation").get<int>();
  s.masks.keep_thin = mk.at("keep_thin").get<bool>();
  s.identity = j.value("identity", "");
}

// A sample's settings: its sample.json (``folder`` "": the reference defaults), then the
// command line's overrides.
Settings read_settings(const Args& a, const std::string& folder) {
  Settings s;
  const std::string file = folder.empty() ? "" : folder + "/sample.json";
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) throw Error("sample folder " + folder + " has no sample.json (written by adabldm-run --dump-noise)");
    try {
      read_sample_json(nlohmann::json::parse(in), file, s);
    } catch (const nlohmann::json::exception& e) {  // malformed, or a key missing: name the file
      throw Error(file + ": not a sample record of adabldm-run --dump-noise (" + e.what() + ")");
    }
  }
  if (a.has("steps")) s.sampler.steps = to_int("steps", a.get("steps"), 2);
  if (a.has("guidance")) s.sampler.guidance = to_number("guidance", a.get("guidance"));
  if (a.has("control-scale")) s.sampler.control_scale = to_number("control-scale", a.get("control-scale"));
  if (a.has("latent-start")) s.sampler.latent_start = to_number("latent-start", a.get("latent-start"));
  if (a.has("pixel-start")) s.sampler.pixel_start = to_number("pixel-start", a.get("pixel-start"));
  if (a.has("renoise")) {
    const std::string r = a.get("renoise");
    if (r != "next" && r != "current") throw UsageError("--renoise '" + r + "': expected next or current");
    s.sampler.renoise = r == "current" ? Renoise::Current : Renoise::Next;
  }
  if (a.flags.count("no-blend")) s.sampler.blend = false;
  if (a.flags.count("keep-thin")) s.masks.keep_thin = true;
  if (a.has("binarize-at")) s.masks.binarize_at = to_int("binarize-at", a.get("binarize-at"), 0);
  if (a.has("latent-dilation")) s.masks.dilation = to_int("latent-dilation", a.get("latent-dilation"), 0);
  const double lo = s.sampler.latent_start, hi = s.sampler.pixel_start;
  if (!(0.0 <= lo && lo <= hi && hi <= 1.0))  // SamplerConfig's check
    throw UsageError("stage fractions --latent-start " + std::to_string(lo) + ", --pixel-start " + std::to_string(hi) +
                     ": expected 0 <= latent start <= pixel start <= 1");
  return s;
}

void check_size(const Image& im, int resolution, const std::string& what) {
  if (im.width != resolution || im.height != resolution)
    throw Error(what + " " + std::to_string(im.width) + "x" + std::to_string(im.height) + " does not match the bundle's " +
                std::to_string(resolution) + "x" + std::to_string(resolution));
}

// (2, 77, d) with the d and token count of the denoiser's text_ctx input: checked here, by
// name, before GuidedEps slices it.
void check_embeddings(const Tensor& e, const Manifest& m, const std::string& path) {
  const std::string net = m.networks.count("unet_control") ? "unet_control" : "unet";
  for (const TensorSpec& t : m.networks.at(net).spec.inputs) {
    if (t.name != "text_ctx") continue;
    const bool ok = e.shape.size() == 3 && e.shape[0] == 2 && t.shape.size() == 3 && e.shape[1] == t.shape[1].size &&
                    e.shape[2] == t.shape[2].size;
    if (!ok)
      throw Error("text embeddings " + path + " of shape " + e.shape_str() + ": expected (2, " +
                  std::to_string(t.shape[1].size) + ", " + std::to_string(t.shape[2].size) +
                  "), the prompt's then the empty prompt's, from this bundle's text encoder");
  }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Where one sample's inputs come from: its folder of adabldm-run --dump-noise, overridden
// file by file by --ok, --trimap, ... (a single sample only).
struct SampleSource {
  const Args& a;
  std::string folder;  // "" without --sample
  std::string path(const std::string& key, const std::string& file) const {
    if (a.has(key)) return a.get(key);
    if (folder.empty()) throw UsageError("--" + key + " is needed without --sample");
    return folder + "/" + file;
  }
};

const std::vector<std::string> kInputOptions = {"ok", "trimap", "mask", "latent-mask", "embeddings", "noise", "seed"};

bool is_sample_folder(const fs::path& dir) { return fs::is_regular_file(dir / "sample.json"); }

// The sample folders of --sample: the folder itself, or, for a dump root (DUMP/NNNN/ of
// adabldm-run --dump-noise), its sub-folders that hold a sample.json, in name order.
std::vector<std::string> sample_folders(const Args& a) {
  if (!a.has("sample")) return {""};
  const fs::path root = a.get("sample");
  if (!fs::is_directory(root)) throw UsageError("--sample " + root.string() + ": no such folder");
  if (is_sample_folder(root)) return {root.string()};
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && is_sample_folder(entry.path())) found.push_back(entry.path().string());
  std::sort(found.begin(), found.end());
  if (found.empty())
    throw Error("--sample " + root.string() + " holds no sample.json, nor sub-folders with one (write them with"
                " adabldm-run --dump-noise DIR)");
  for (const std::string& key : kInputOptions)
    if (a.has(key))
      throw UsageError("--" + key + " gives one sample's input; --sample " + root.string() + " is a folder of " +
                       std::to_string(found.size()) + " samples, each with its own");
  return found;
}

struct Networks {
  std::unique_ptr<Network> unet_control, controlnet, unet, encoder, decoder;
};

Networks load_networks(const Manifest& m, const BackendOptions& opts) {
  const bool split = !m.networks.count("unet_control");
  Networks n;
  if (split) {
    n.controlnet = make_network(m, "controlnet", opts, 2);
    n.unet = make_network(m, "unet", opts, 2);
  } else {
    n.unet_control = make_network(m, "unet_control", opts, 2);
  }
  n.encoder = make_network(m, "vae_encoder", opts, 1);
  n.decoder = make_network(m, "vae_decoder", opts, 1);
  return n;
}

// Samples one sample ``repeat`` times and writes out/blended.png and out/latent.npy (the
// first run's); returns its record: settings, noise and per-run timings.
nlohmann::json run_sample(const SampleSource& src, const Settings& st, const Manifest& m, Networks& nets,
                          const std::string& out, int repeat, bool quiet) {
  const SamplerSettings& s = st.sampler;
  if (!st.identity.empty() && st.identity != m.identity)
    throw Error("the sample's embeddings come from model " + st.identity + ", the bundle is model " + m.identity +
                "; dump the sample with this bundle (adabldm-run --bundle " + m.root + " --dump-noise DIR)");
  const int r = m.resolution;
  const Image ok = read_png(src.path("ok", "ok.png"), 3), trimap = read_png(src.path("trimap", "trimap.png"), 1),
              mask = read_png(src.path("mask", "mask.png"), 1);
  check_size(ok, r, "OK image");
  check_size(trimap, r, "trimap");
  check_size(mask, r, "mask");
  const std::string embeddings_path = src.path("embeddings", "embeddings.npy");
  const Tensor embeddings = read_npy(embeddings_path);
  check_embeddings(embeddings, m, embeddings_path);
  const int stride = r / static_cast<int>(m.latent_shape.at(1));
  Tensor m_keep = latent_keep_mask(trimap, stride, st.masks);
  if (src.a.has("latent-mask")) {
    Tensor given = read_npy(src.a.get("latent-mask"));
    if (given.numel() != m_keep.numel())
      throw Error("latent mask " + src.a.get("latent-mask") + " of shape " + given.shape_str() + ", expected " +
                  m_keep.shape_str());
    m_keep.data = given.data;
  }
  const std::vector<int64_t> latent = {1, m.latent_shape[0], m.latent_shape[1], m.latent_shape[2]};
  const int draws = noise_draws(s);
  std::optional<Tensor> tape;
  if (!src.a.has("seed")) {
    const std::string tape_path = src.path("noise", "noise.npy");
    tape = read_npy(tape_path);
    if (tape->shape.size() != 4 || !std::equal(latent.begin() + 1, latent.end(), tape->shape.begin() + 1))
      throw Error("noise tape " + tape_path + " of shape " + tape->shape_str() + ": expected (draws, " +
                  std::to_string(latent[1]) + ", " + std::to_string(latent[2]) + ", " + std::to_string(latent[3]) +
                  "), this bundle's latent per draw");
    if (tape->shape[0] != draws)
      throw Error("noise tape " + tape_path + " of shape " + tape->shape_str() + " has " +
                  std::to_string(tape->shape[0]) + " draws; these sampler settings draw " + std::to_string(draws) +
                  " (dump it with the same --steps/--renoise)");
  }
  const DdimTable table = ddim_table(m.scheduler, s.steps);
  Codec codec(nets.encoder.get(), nets.decoder.get());
  GuidedEps eps(nets.unet_control.get(), nets.controlnet.get(), nets.unet.get(), embeddings, trimap_to_hint(trimap),
                s.guidance, s.control_scale);

  nlohmann::json timings = nlohmann::json::array();
  for (int k = 0; k < repeat; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<NoiseSource> noise;
    if (tape) noise = std::make_unique<TapeNoise>(*tape, "noise tape");
    else noise = std::make_unique<SeededNoise>(static_cast<uint64_t>(std::stoull(src.a.get("seed"))));
    const Tensor z_t = noise->randn(latent);  // drawn first, as the Python pipeline
    const Tensor x_ok = rgb_to_tensor(ok);
    BlendTargets targets{codec.encode(x_ok, noise->randn(latent)), m_keep, x_ok, mask_to_tensor(mask)};
    const Tensor z = sample_blended(eps, codec, z_t, table, s, targets, *noise, [&](int i) {
      if (!quiet) std::fprintf(stderr, "\rdiffusion step %d/%d", i + 1, s.steps);
    });
    const double sample_s = seconds_since(t0);
    const auto t1 = std::chrono::steady_clock::now();
    const Image blended = tensor_to_rgb(codec.decode(z));
    const double decode_s = seconds_since(t1);
    if (!quiet) std::fprintf(stderr, "\n");
    timings.push_back({{"sample_s", sample_s}, {"decode_s", decode_s}});
    if (k == 0) {
      fs::create_directories(out);
      write_png(out + "/blended.png", blended);
      write_npy(out + "/latent.npy", z);
    }
  }
  return {{"steps", s.steps}, {"noise", tape ? "tape" : "seeded"}, {"noise_draws", draws}, {"runs", timings}};
}

bool sample_done(const std::string& out) {  // both written atomically: present means whole
  return fs::is_regular_file(out + "/latent.npy") && fs::is_regular_file(out + "/blended.png");
}

int run(const Args& a) {
  if (!a.has("bundle")) throw UsageError("--bundle DIR is required");
  if (!a.has("out")) throw UsageError("--out DIR is required");
  const auto backends = compiled_backends();
  if (backends.empty()) throw Error("this build has no network backend (see the README's native section)");
  BackendOptions opts{a.get("backend", backends.front()), a.has("threads") ? to_int("threads", a.get("threads"), 1) : 0,
                      a.has("cuda-device") ? to_int("cuda-device", a.get("cuda-device"), 0) : 0};
  const int repeat = a.has("repeat") ? to_int("repeat", a.get("repeat"), 1) : 1;
  const bool quiet = a.flags.count("quiet") > 0;
  const std::string out = a.get("out");
  if (fs::exists(out) && !fs::is_directory(out)) throw UsageError("--out " + out + " exists and is not a folder");
  const std::vector<std::string> folders = sample_folders(a);
  std::vector<Settings> settings;  // every sample's, checked before the networks load
  for (const std::string& f : folders) settings.push_back(read_settings(a, f));

  const auto t_load = std::chrono::steady_clock::now();
  const Manifest m = read_manifest(a.get("bundle"));
  Networks nets = load_networks(m, opts);
  const double load_s = seconds_since(t_load);
  const nlohmann::json runtime = {{"backend", opts.backend}, {"threads", opts.threads}, {"bundle", m.root},
                                  {"identity", m.identity}, {"load_s", load_s}};

  const bool single = folders.size() == 1 && (folders[0].empty() || folders[0] == a.get("sample"));
  if (single) {
    nlohmann::json record = run_sample(SampleSource{a, folders[0]}, settings[0], m, nets, out, repeat, quiet);
    record.update(runtime);
    write_file_atomic(out + "/run.json", record.dump(2) + "\n");
    std::fprintf(stderr, "wrote %s/blended.png and latent.npy (%s, %d steps, %.2f s per sample)\n", out.c_str(),
                 opts.backend.c_str(), settings[0].sampler.steps, record["runs"].back()["sample_s"].get<double>());
    return 0;
  }
  // A dump root: OUT/NAME/ per sample; a rerun skips the samples already written.
  nlohmann::json summary = runtime;
  summary["samples"] = nlohmann::json::array();
  int made = 0, resumed = 0;
  for (size_t k = 0; k < folders.size(); ++k) {
    const std::string name = fs::path(folders[k]).filename().string(), dir = out + "/" + name;
    if (sample_done(dir)) {
      ++resumed;
      continue;
    }
    if (!quiet) std::fprintf(stderr, "sample %zu/%zu %s\n", k + 1, folders.size(), name.c_str());
    nlohmann::json record = run_sample(SampleSource{a, folders[k]}, settings[k], m, nets, dir, repeat, quiet);
    record.update(runtime);
    write_file_atomic(dir + "/run.json", record.dump(2) + "\n");
    summary["samples"].push_back({{"name", name}, {"sample_s", record["runs"][0]["sample_s"]}});
    ++made;
  }
  fs::create_directories(out);
  summary["made"] = made;
  summary["resumed"] = resumed;
  write_file_atomic(out + "/run.json", summary.dump(2) + "\n");
  std::fprintf(stderr, "wrote %s/NNNN/: %d new, %d already there (%s)\n", out.c_str(), made, resumed,
               opts.backend.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse_args(argc, argv);
    if (a.flags.count("help")) {
      std::cout << kHelp;
      return 0;
    }
    if (a.flags.count("version")) {
      std::string names;
      for (const auto& n : compiled_backends()) names += (names.empty() ? "" : ", ") + n;
      std::cout << "adabldm-native " << ADABLDM_VERSION << " (backends: " << (names.empty() ? "none" : names) << ")\n";
      return 0;
    }
    return run(a);
  } catch (const UsageError& e) {
    std::cerr << "usage error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
