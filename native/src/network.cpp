#include "adabldm/network.hpp"

#include <algorithm>

namespace adabldm {

void check_feed(const NetworkSpec& spec, const Feed& feed) {
  std::map<std::string, int64_t> symbols;  // "B" / "B2" bound by the first tensor that has it
  for (const TensorSpec& t : spec.inputs) {
    auto it = feed.find(t.name);
    if (it == feed.end() || it->second == nullptr)
      throw Error(spec.name + ": input '" + t.name + "' not fed");
    const Tensor& x = *it->second;
    if (t.dtype != "float32")
      throw Error(spec.name + ": input '" + t.name + "' is " + t.dtype + "; the runner feeds float32 only");
    bool ok = x.shape.size() == t.shape.size() && static_cast<int64_t>(x.data.size()) == x.numel();
    for (size_t d = 0; ok && d < t.shape.size(); ++d) {
      const Dim& dim = t.shape[d];
      if (dim.symbol.empty()) ok = x.shape[d] == dim.size;
      else ok = symbols.emplace(dim.symbol, x.shape[d]).first->second == x.shape[d];
    }
    if (!ok) {
      std::string want = "(";
      for (size_t d = 0; d < t.shape.size(); ++d)
        want += (d ? ", " : "") + (t.shape[d].symbol.empty() ? std::to_string(t.shape[d].size) : t.shape[d].symbol);
      throw Error(spec.name + ": input '" + t.name + "' of shape " + x.shape_str() + ", expected " + want + ")");
    }
  }
  for (const auto& [name, _] : feed)
    if (std::none_of(spec.inputs.begin(), spec.inputs.end(), [&](const TensorSpec& t) { return t.name == name; }))
      throw Error(spec.name + ": unknown input '" + name + "'");
}

Outputs Network::infer(const Feed& feed) {
  check_feed(spec_, feed);
  Outputs out = run(feed);
  for (const TensorSpec& t : spec_.outputs)
    if (!out.count(t.name)) throw Error(spec_.name + ": the runtime returned no output '" + t.name + "'");
  return out;
}

std::vector<std::string> compiled_backends() {
  std::vector<std::string> names;
#ifdef ADABLDM_WITH_ORT
  names.push_back("onnxruntime");
#endif
#ifdef ADABLDM_WITH_OPENVINO
  names.push_back("openvino");
#endif
#ifdef ADABLDM_WITH_TENSORRT
  names.push_back("tensorrt");
#endif
  return names;
}

std::unique_ptr<Network> make_network(const Manifest& m, const std::string& name, const BackendOptions& opts,
                                      int batch) {
  const auto names = compiled_backends();
  if (std::find(names.begin(), names.end(), opts.backend) == names.end()) {
    std::string have;
    for (const auto& n : names) have += (have.empty() ? "" : ", ") + n;
    throw Error("backend '" + opts.backend + "' is not compiled into this build (it has: " +
                (have.empty() ? std::string("none") : have) + "); see the README's native section");
  }
  if (!m.networks.count(name)) throw Error("bundle " + m.root + " has no network '" + name + "'");
#ifdef ADABLDM_WITH_ORT
  if (opts.backend == "onnxruntime") return make_ort_network(m, name, opts);
#endif
#ifdef ADABLDM_WITH_OPENVINO
  if (opts.backend == "openvino") return make_openvino_network(m, name, opts, batch);
#endif
#ifdef ADABLDM_WITH_TENSORRT
  if (opts.backend == "tensorrt") return make_trt_network(m, name, opts, batch);
#endif
  (void)batch;
  throw Error("backend '" + opts.backend + "' unknown");
}

}  // namespace adabldm
