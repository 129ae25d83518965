// The Network interface over ONNX Runtime's C++ API (onnxruntime_cxx_api.h), on the CPU
// execution provider, with the session options of the Python runtime
// (adabldm_engine.backends.ort_session_options: full graph optimisation, sequential).
// Compiled only where ADABLDM_ORT_ROOT has ONNX Runtime's headers (none are packaged for
// Debian bookworm or on PyPI: see the README's native section).
#include <onnxruntime_cxx_api.h>

#include "adabldm/network.hpp"

namespace adabldm {
namespace {

Ort::Env& ort_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "adabldm-native");
  return env;
}

class OrtNetwork : public Network {
 public:
  OrtNetwork(const Manifest& m, const std::string& name, const BackendOptions& opts)
      : Network(m.networks.at(name).spec), session_(nullptr) {
    const std::string path = m.path_of(name);
    try {
      Ort::SessionOptions so;
      so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
      if (opts.threads > 0) so.SetIntraOpNumThreads(opts.threads);
      session_ = Ort::Session(ort_env(), path.c_str(), so);
    } catch (const Ort::Exception& e) {
      throw Error("ONNX Runtime cannot load " + path + ": " + e.what());
    }
    for (const TensorSpec& t : spec().outputs) output_names_.push_back(t.name.c_str());
  }

 protected:
  Outputs run(const Feed& feed) override {
    try {
      const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
      std::vector<const char*> names;
      std::vector<Ort::Value> values;
      for (const TensorSpec& t : spec().inputs) {  // the spec's order, as the graph's inputs
        const Tensor* x = feed.at(t.name);
        names.push_back(t.name.c_str());
        values.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(x->data.data()), x->data.size(),
                                                         x->shape.data(), x->shape.size()));
      }
      auto results = session_.Run(Ort::RunOptions{nullptr}, names.data(), values.data(), values.size(),
                                  output_names_.data(), output_names_.size());
      Outputs out;
      for (size_t k = 0; k < results.size(); ++k) {
        const auto info = results[k].GetTensorTypeAndShapeInfo();
        const float* p = results[k].GetTensorData<float>();
        out.emplace(output_names_[k], Tensor(info.GetShape(), std::vector<float>(p, p + info.GetElementCount())));
      }
      return out;
    } catch (const Ort::Exception& e) {
      throw Error(spec().name + " (ONNX Runtime): " + e.what());
    }
  }

 private:
  Ort::Session session_;
  std::vector<const char*> output_names_;
};

}  // namespace

std::unique_ptr<Network> make_ort_network(const Manifest& m, const std::string& name, const BackendOptions& opts) {
  return std::make_unique<OrtNetwork>(m, name, opts);
}

}  // namespace adabldm
