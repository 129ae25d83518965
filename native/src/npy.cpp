// The .npy format: magic "\x93NUMPY", version, header length, a Python-dict header
// ({'descr': '<f4', 'fortran_order': False, 'shape': (...), }), then the raw data.
#include "adabldm/npy.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

namespace adabldm {
namespace {

std::vector<int64_t> parse_shape(const std::string& header, const std::string& path) {
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('shape'\s*:\s*\(([^)]*)\))")))
    throw Error(path + ": .npy header without a shape: " + header);
  std::vector<int64_t> shape;
  std::stringstream dims(m[1].str());
  std::string item;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(" ") == std::string::npos) continue;
    shape.push_back(std::stoll(item));
  }
  return shape;
}

}  // namespace

Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw Error(path + ": not a .npy file");
  const int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (!in) throw Error(path + ": truncated .npy header");
  if (header.find("'descr': '<f4'") == std::string::npos) {
    const size_t at = header.find("'descr': ");
    const std::string descr = at == std::string::npos ? "?" : header.substr(at + 9, header.find(',', at) - at - 9);
    throw Error(path + ": .npy of dtype " + descr + "; expected float32 little-endian ('<f4'), e.g. numpy's"
                " arr.astype(np.float32)");
  }
  if (header.find("'fortran_order': False") == std::string::npos)
    throw Error(path + ": Fortran-order .npy; expected C order");
  Tensor t(parse_shape(header, path));
  in.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(t.data.size() * sizeof(float)));
  if (!in) throw Error(path + ": .npy data shorter than its shape " + t.shape_str());
  return t;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw Error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error("cannot rename " + tmp + " to " + path);
}

void write_npy(const std::string& path, const Tensor& t) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_str(t.shape) + ", }";
  const size_t unpadded = 10 + header.size() + 1;  // magic 6 + version 2 + length 2, newline
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  const uint16_t len = static_cast<uint16_t>(header.size());
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(len & 0xff);
  bytes += static_cast<char>(len >> 8);
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * sizeof(float));
  write_file_atomic(path, bytes);
}

}  // namespace adabldm
