// One interface over an exported network, whatever runs it (ONNX Runtime, OpenVINO,
// TensorRT): named float32 tensors in, named tensors out, checked once here against the
// bundle's spec. The sampler never asks which implementation it holds.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "adabldm/manifest.hpp"
#include "adabldm/tensor.hpp"

namespace adabldm {

using Feed = std::map<std::string, const Tensor*>;
using Outputs = std::map<std::string, Tensor>;

class Network {
 public:
  explicit Network(NetworkSpec spec) : spec_(std::move(spec)) {}
  virtual ~Network() = default;
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;

  // Checks the feed (names, ranks, fixed and symbolic sizes), runs, checks the outputs.
  Outputs infer(const Feed& feed);
  const NetworkSpec& spec() const { return spec_; }

 protected:
  virtual Outputs run(const Feed& feed) = 0;

 private:
  NetworkSpec spec_;
};

// Checks a feed against a spec; Error names the tensor, its shape and the expected one.
void check_feed(const NetworkSpec& spec, const Feed& feed);

struct BackendOptions {
  std::string backend;  // "onnxruntime", "openvino", "tensorrt"
  int threads = 0;      // 0: the runtime's default
  int device = 0;       // CUDA device (tensorrt)
};

// The backends this build was compiled with, in order of preference for the CPU.
std::vector<std::string> compiled_backends();
// The network `name` of the bundle on the chosen backend; Error when not compiled in.
std::unique_ptr<Network> make_network(const Manifest& m, const std::string& name, const BackendOptions& opts,
                                      int batch);

// The implementations (each compiled only where its headers were found).
std::unique_ptr<Network> make_ort_network(const Manifest& m, const std::string& name, const BackendOptions& opts);
// batch: the leading size every symbolic dim ("B", "B2") is fixed to (0: shapes stay dynamic).
std::unique_ptr<Network> make_openvino_network(const Manifest& m, const std::string& name,
                                               const BackendOptions& opts, int batch);
std::unique_ptr<Network> make_trt_network(const Manifest& m, const std::string& name, const BackendOptions& opts,
                                          int batch);

}  // namespace adabldm
