// The Network interface over OpenVINO's C++ API (ov::Core reads the bundle's ONNX files
// directly). FP32 inference is forced: the CPU plugin otherwise runs bf16 on CPUs with
// native bf16 (AMX / AVX512-BF16), which breaks parity with the Python runtime.
#include <openvino/openvino.hpp>

#include "adabldm/network.hpp"

namespace adabldm {
namespace {

class OpenVinoNetwork : public Network {
 public:
  OpenVinoNetwork(const Manifest& m, const std::string& name, const BackendOptions& opts, int batch)
      : Network(m.networks.at(name).spec) {
    const std::string path = m.path_of(name);
    try {
      ov::AnyMap config{ov::hint::inference_precision(ov::element::f32),
                        ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
      if (opts.threads > 0) config.emplace(ov::inference_num_threads.name(), opts.threads);
      auto model = core().read_model(path);
      if (batch > 0) {  // static shapes (symbolic batch dims bound): faster CPU kernels
        std::map<std::string, ov::PartialShape> shapes;
        for (const TensorSpec& t : spec().inputs) {
          std::vector<ov::Dimension> dims;
          for (const Dim& d : t.shape) dims.emplace_back(d.symbol.empty() ? d.size : batch);
          shapes.emplace(t.name, ov::PartialShape(dims));
        }
        model->reshape(shapes);
      }
      compiled_ = core().compile_model(model, "CPU", config);
      request_ = compiled_.create_infer_request();
    } catch (const std::exception& e) {
      throw Error("OpenVINO cannot load " + path + ": " + e.what());
    }
  }

 protected:
  Outputs run(const Feed& feed) override {
    try {
      for (const auto& [name, x] : feed) {
        ov::Shape shape(x->shape.begin(), x->shape.end());
        request_.set_tensor(name, ov::Tensor(ov::element::f32, shape, const_cast<float*>(x->data.data())));
      }
      request_.infer();
      Outputs out;
      for (const TensorSpec& t : spec().outputs) {
        const ov::Tensor y = request_.get_tensor(t.name);
        const float* p = y.data<const float>();
        const ov::Shape s = y.get_shape();
        out.emplace(t.name, Tensor(std::vector<int64_t>(s.begin(), s.end()), std::vector<float>(p, p + y.get_size())));
      }
      return out;
    } catch (const ov::Exception& e) {
      throw Error(spec().name + " (OpenVINO): " + e.what());
    }
  }

 private:
  static ov::Core& core() {
    static ov::Core instance;  // one core per process: plugins are loaded once
    return instance;
  }
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
};

}  // namespace

std::unique_ptr<Network> make_openvino_network(const Manifest& m, const std::string& name,
                                               const BackendOptions& opts, int batch) {
  return std::make_unique<OpenVinoNetwork>(m, name, opts, batch);
}

}  // namespace adabldm
