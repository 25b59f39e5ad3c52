// C++ test of fastops::msg (csrc/fastops.h), the error-message builder of every FASTOPS_CHECK*:
// for each argument type the checks pass, its text must equal c10::str's, the formatter it replaced
// (c10::str's number formatting crashed the process when compiled into the library on the lent H100;
// here, with this machine's compiler, it is the reference). Exit status: 0 when every case matches.
#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "fastops.h"

namespace {

int failures = 0;

template <typename... Args>
void expect_same(const char* what, const Args&... args) {
  const std::string ours = fastops::msg(args...), ref = c10::str(args...);
  if (ours != ref) {
    std::printf("FAIL %s: fastops::msg gave \"%s\", c10::str \"%s\"\n", what, ours.c_str(), ref.c_str());
    ++failures;
  }
}

}  // namespace

int main() {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<int64_t> shape = {2, 0, 7};
  const int64_t list[2] = {-3, 1099511627776};
  expect_same("text", "conv2d_fwd", ": weight must have shape (", std::string("K, C"), ')');
  expect_same("integers", int64_t(-5), " ", int32_t(7), " ", size_t(42), " ", int64_t(1) << 62, " ", uint64_t(-1));
  expect_same("bool", true, false);
  expect_same("doubles", 1.5, " ", 0.1, " ", -0.0, " ", 1e-7, " ", 123456789.0, " ", 1e300, " ", 2.0 / 3.0);
  expect_same("float", 0.1f, " ", 3.0f);
  expect_same("non-finite", inf, " ", -inf, " ", std::numeric_limits<double>::quiet_NaN());
  expect_same("IntArrayRef", at::IntArrayRef(list), " ", at::IntArrayRef(), " ", at::IntArrayRef(shape));
  expect_same("dtypes", at::kFloat, " ", at::kBFloat16, " ", at::kLong);
  expect_same("devices", c10::Device(c10::kCPU), " ", c10::Device(c10::kCUDA, 1), " ", c10::Device(c10::kMeta));
  std::printf("fastops::msg vs c10::str: %s\n", failures ? "FAILED" : "every case matches");
  return failures ? 1 : 0;
}
