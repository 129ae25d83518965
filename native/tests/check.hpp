// A minimal check harness for the ctest programs: CHECK counts failures, main returns them.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

namespace check {
inline int failures = 0, checks = 0;
inline void report(bool ok, const char* file, int line, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "%s:%d: FAILED %s\n", file, line, what.c_str());
  }
}
inline bool close(double a, double b, double rel, double abs_tol = 0.0) {
  return std::fabs(a - b) <= abs_tol + rel * std::fabs(b);
}
inline int finish(const char* name) {
  std::printf("%s: %d checks, %d failed\n", name, checks, failures);
  return failures ? 1 : 0;
}
}  // namespace check

#define CHECK(cond) check::report((cond), __FILE__, __LINE__, #cond)
#define CHECK_MSG(cond, msg) check::report((cond), __FILE__, __LINE__, std::string(#cond) + ": " + (msg))
#define CHECK_THROWS(expr)              \
  do {                                  \
    bool thrown = false;                \
    try {                               \
      expr;                             \
    } catch (const std::exception&) {   \
      thrown = true;                    \
    }                                   \
    CHECK_MSG(thrown, "expected an exception"); \
  } while (0)
