#include "adabldm/manifest.hpp"

#include <fstream>
#include <nlohmann/json.hpp>

#include "adabldm/tensor.hpp"

namespace adabldm {
namespace {

using nlohmann::json;

std::vector<TensorSpec> tensors_of(const json& list) {
  std::vector<TensorSpec> out;
  for (const auto& t : list) {
    TensorSpec spec{t.at("name").get<std::string>(), {}, t.value("dtype", "float32")};
    for (const auto& d : t.at("shape")) {
      if (d.is_string()) spec.shape.push_back(Dim{-1, d.get<std::string>()});
      else spec.shape.push_back(Dim{d.get<int64_t>(), ""});
    }
    out.push_back(std::move(spec));
  }
  return out;
}

SchedulerSettings scheduler_of(const json& j) {
  SchedulerSettings s;
  s.num_train_timesteps = j.value("num_train_timesteps", s.num_train_timesteps);
  s.beta_start = j.value("beta_start", s.beta_start);
  s.beta_end = j.value("beta_end", s.beta_end);
  s.beta_schedule = j.value("beta_schedule", s.beta_schedule);
  s.timestep_spacing = j.value("timestep_spacing", s.timestep_spacing);
  s.steps_offset = j.value("steps_offset", s.steps_offset);
  s.set_alpha_to_one = j.value("set_alpha_to_one", s.set_alpha_to_one);
  s.clip_sample = j.value("clip_sample", s.clip_sample);
  s.prediction_type = j.value("prediction_type", s.prediction_type);
  return s;
}

}  // namespace

std::string Manifest::path_of(const std::string& network) const {
  auto it = networks.find(network);
  if (it == networks.end()) throw Error("bundle " + root + " has no network '" + network + "'");
  return root + "/" + it->second.file;
}

SchedulerSettings scheduler_from_json_text(const std::string& json_text) {
  return scheduler_of(json::parse(json_text));
}

Manifest read_manifest(const std::string& root) {
  const std::string path = root + "/manifest.json";
  const std::string redo = "; re-export it: adabldm-export --out " + root + " --force";
  std::ifstream in(path);
  if (!in) throw Error(root + " has no manifest.json (not a bundle, or an unfinished export)" + redo);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(path + " is not valid JSON: " + e.what() + redo);
  }
  try {
    Manifest m;
    m.root = root;
    m.format_version = j.at("format_version").get<int>();
    if (m.format_version != kFormatVersion)
      throw Error(path + ": bundle format " + std::to_string(m.format_version) + ", this runner reads format " +
                  std::to_string(kFormatVersion) + redo);
    m.model_name = j.at("model").at("name").get<std::string>();
    m.identity = j.at("model").at("identity").get<std::string>();
    m.resolution = j.at("resolution").get<int>();
    m.latent_shape = j.at("latent_shape").get<std::vector<int64_t>>();
    m.latent_scale = j.at("latent_scale").get<double>();
    m.scheduler = scheduler_of(j.at("scheduler"));
    m.split_controlnet = j.value("split_controlnet", false);
    for (const auto& [name, entry] : j.at("networks").items()) {
      NetworkEntry e{{name, tensors_of(entry.at("inputs")), tensors_of(entry.at("outputs"))},
                     entry.at("file").get<std::string>(),
                     entry.value("sha256", std::map<std::string, std::string>{})};
      m.networks.emplace(name, std::move(e));
    }
    return m;
  } catch (const json::exception& e) {
    throw Error(path + ": unexpected manifest content (" + e.what() + ")" + redo);
  }
}

}  // namespace adabldm
