// Minimal checks for the ctest executables: plain asserts that stay on in Release builds (NDEBUG
// would compile assert() away). A failed check prints where and why, and the test exits 1.
#pragma once

#include <cstdio>
#include <cstdlib>

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fprintf(stderr, "\n");                                          \
      std::exit(1);                                                        \
    }                                                                      \
  } while (0)
