// What both emulation drivers (dwsep_driver.cpp, adversarial_driver.cpp) run a launch plan with:
// the emulated launcher and allocator policies (the counterparts of csrc/cuda/torch_launch.cuh)
// and the exception guard of their extern "C" entry points. Include after emu.h.
#pragma once

#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace emu_driver {

// The message of the last failed entry point (its *_emu_last_error() returns it).
inline std::string g_last_error;

// Launcher policy: an emulated launch, finished when it returns.
struct EmulatedLauncher {
  template <typename... Params, typename... Args>
  void operator()(dim3 grid, int block, void (*kernel)(Params...), const Args&... args) const {
    emu_launch(grid, static_cast<unsigned>(block), [&] { kernel(args...); });
  }
};

// Allocator policy: temporaries in std::vectors, filled with NaN so that an element a kernel
// should have written before reading it poisons the results.
class VectorAllocator {
 public:
  template <typename T>
  T* allocate(int64_t numel) {
    auto buffer = std::make_shared<std::vector<T>>(static_cast<size_t>(numel),
                                                   std::numeric_limits<T>::quiet_NaN());
    buffers_.push_back(buffer);
    return buffer->data();
  }

 private:
  std::vector<std::shared_ptr<void>> buffers_;
};

// Runs f(), turning an exception into -1 and g_last_error.
template <typename F>
int guarded(const F& f) {
  g_last_error.clear();
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    g_last_error = e.what();
  } catch (...) {
    g_last_error = "unknown exception";
  }
  return -1;
}

}  // namespace emu_driver
