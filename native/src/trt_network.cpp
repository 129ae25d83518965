// The Network interface over TensorRT engines (TensorRT 10 C++ API: IRuntime,
// ICudaEngine, IExecutionContext::enqueueV3 with named tensor addresses), reading the
// plans adabldm-export --trt stored in bundle/trt (<network>.<key>.plan and its .json
// record). An engine whose record names another TensorRT version, another GPU compute
// capability or other ONNX files than the bundle's is never used.
// Compiled only where TensorRT's headers and CUDA's runtime were found; NOT built or run
// on the machines this project is developed on (no TensorRT headers, no GPU there).
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "adabldm/network.hpp"

namespace adabldm {
namespace {

void cuda_check(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) throw Error(what + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "TensorRT: %s\n", msg);
  }
};

std::string trt_version() {
  return std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
         std::to_string(NV_TENSORRT_PATCH);
}

// The plan of `name` in bundle/trt that fits this TensorRT, this GPU and `batch`.
std::string find_plan(const Manifest& m, const std::string& name, int device, int batch) {
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  const std::filesystem::path dir = std::filesystem::path(m.root) / "trt";
  std::string reasons;
  if (std::filesystem::is_directory(dir))
    for (const auto& f : std::filesystem::directory_iterator(dir)) {
      const std::string file = f.path().filename().string();
      if (f.path().extension() != ".json" || file.rfind(name + ".", 0) != 0) continue;
      nlohmann::json r;
      try {
        r = nlohmann::json::parse(std::ifstream(f.path()));
      } catch (const nlohmann::json::exception&) {
        continue;
      }
      const auto lo_hi = r.at("profile").at("batch");
      std::string why;
      if (r.value("network", "") != name) continue;
      if (!trt_version().empty() && r.value("tensorrt", "").rfind(trt_version(), 0) != 0)
        why = "built with TensorRT " + r.value("tensorrt", "?") + ", this runner links " + trt_version();
      else if (r.value("compute_capability", "") != cc)
        why = "built for compute capability " + r.value("compute_capability", "?") + ", this GPU is " + cc;
      else if (r.value("onnx_sha256", nlohmann::json::object()) != nlohmann::json(m.networks.at(name).sha256))
        why = "built from other ONNX files than the bundle's";
      else if (batch < lo_hi.at(0).get<int>() || batch > lo_hi.at(2).get<int>())
        why = "its batch profile does not cover " + std::to_string(batch);
      if (why.empty()) return (dir / (f.path().stem().string() + ".plan")).string();
      reasons += "; " + file + ": " + why;
    }
  throw Error("no TensorRT engine of " + name + " in " + dir.string() + " fits this machine" + reasons +
              "; build them here: adabldm-export --trt --out " + m.root);
}

class TrtNetwork : public Network {
 public:
  TrtNetwork(const Manifest& m, const std::string& name, const BackendOptions& opts, int batch)
      : Network(m.networks.at(name).spec) {
    cuda_check(cudaSetDevice(opts.device), "cudaSetDevice");
    const std::string plan_path = find_plan(m, name, opts.device, batch);
    std::ifstream in(plan_path, std::ios::binary);
    const std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_ ? runtime_->deserializeCudaEngine(plan.data(), plan.size()) : nullptr);
    context_.reset(engine_ ? engine_->createExecutionContext() : nullptr);
    if (!context_) throw Error("TensorRT cannot load " + plan_path);
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~TrtNetwork() override {
    for (void* p : buffers_) cudaFree(p);
    if (stream_) cudaStreamDestroy(stream_);
  }

 protected:
  Outputs run(const Feed& feed) override {
    for (void* p : buffers_) cudaFree(p);
    buffers_.clear();
    for (const auto& [name, x] : feed) {
      nvinfer1::Dims dims{};
      dims.nbDims = static_cast<int32_t>(x->shape.size());
      for (int d = 0; d < dims.nbDims; ++d) dims.d[d] = x->shape[d];
      if (!context_->setInputShape(name.c_str(), dims)) throw Error(spec().name + ": TensorRT refuses shape of " + name);
      void* dev = device_copy(x->data.data(), x->data.size() * sizeof(float));
      context_->setTensorAddress(name.c_str(), dev);
    }
    std::vector<std::pair<std::string, Tensor>> outs;
    for (const TensorSpec& t : spec().outputs) {
      const nvinfer1::Dims dims = context_->getTensorShape(t.name.c_str());
      Tensor y(std::vector<int64_t>(dims.d, dims.d + dims.nbDims));
      void* dev = nullptr;
      cuda_check(cudaMalloc(&dev, y.data.size() * sizeof(float)), "cudaMalloc");
      buffers_.push_back(dev);
      context_->setTensorAddress(t.name.c_str(), dev);
      outs.emplace_back(t.name, std::move(y));
    }
    if (!context_->enqueueV3(stream_)) throw Error(spec().name + ": TensorRT enqueueV3 failed");
    Outputs out;
    for (size_t k = 0; k < outs.size(); ++k) {
      auto& [name, y] = outs[k];
      cuda_check(cudaMemcpyAsync(y.data.data(), buffers_[feed.size() + k], y.data.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
      out.emplace(name, std::move(y));
    }
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return out;
  }

 private:
  void* device_copy(const void* host, size_t bytes) {
    void* dev = nullptr;
    cuda_check(cudaMalloc(&dev, bytes), "cudaMalloc");
    buffers_.push_back(dev);
    cuda_check(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    return dev;
  }
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  std::vector<void*> buffers_;  // inputs (feed order) then outputs of the last call
};

}  // namespace

std::unique_ptr<Network> make_trt_network(const Manifest& m, const std::string& name, const BackendOptions& opts,
                                          int batch) {
  return std::make_unique<TrtNetwork>(m, name, opts, batch);
}

}  // namespace adabldm
