// A read-only, shared memory map of one checkpoint file. The CPU backend reads weights straight
// from these pages, so a 13.8 GB checkpoint costs page cache, not private memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common.h"

namespace gptoss {

class MappedFile {
 public:
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // IoError naming the path when the file cannot be opened or mapped.
  static Status open(const std::string& path, std::unique_ptr<MappedFile>* out);

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace gptoss
