// The bundle's manifest.json (written by adabldm-export, adabldm_export.bundle): what the
// native runner needs of it, read with nlohmann-json.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace adabldm {

// One dimension of a network tensor: fixed (size >= 0) or symbolic ("B", "B2").
struct Dim {
  int64_t size = -1;
  std::string symbol;
};

struct TensorSpec {
  std::string name;
  std::vector<Dim> shape;
  std::string dtype;  // "float32" (the only one the runner feeds), "int64"
};

struct NetworkSpec {
  std::string name;
  std::vector<TensorSpec> inputs, outputs;
};

struct NetworkEntry {
  NetworkSpec spec;
  std::string file;                           // relative to the bundle, "onnx/unet_control.onnx"
  std::map<std::string, std::string> sha256;  // relative file -> digest
};

// diffusers' DDIMScheduler settings (adabldm_ref.config.SchedulerConfig).
struct SchedulerSettings {
  int num_train_timesteps = 1000;
  double beta_start = 0.00085, beta_end = 0.012;
  std::string beta_schedule = "scaled_linear";
  std::string timestep_spacing = "leading";
  int steps_offset = 1;
  bool set_alpha_to_one = false;
  bool clip_sample = false;
  std::string prediction_type = "epsilon";
};

struct Manifest {
  std::string root;  // the bundle folder
  int format_version = 0;
  std::string model_name, identity;
  int resolution = 0;
  std::vector<int64_t> latent_shape;  // {4, R/8, R/8}
  double latent_scale = 0.0;
  SchedulerSettings scheduler;
  bool split_controlnet = false;
  std::map<std::string, NetworkEntry> networks;

  std::string path_of(const std::string& network) const;  // absolute ONNX file
};

constexpr int kFormatVersion = 1;  // adabldm_engine.bundle.FORMAT_VERSION

// Reads root/manifest.json; Error names what is missing or of another format version.
Manifest read_manifest(const std::string& root);
SchedulerSettings scheduler_from_json_text(const std::string& json_text);

}  // namespace adabldm
