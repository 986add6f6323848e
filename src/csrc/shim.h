// What every file of the C++ shim shares: C++ exceptions never cross into Rust. A function
// that can fail returns a heap C string (null on success) that Rust frees with
// simclr_free_error; SHIM_TRY / SHIM_CATCH wrap its body.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

inline char* simclr_error_string(const char* message) { return strdup(message); }

#define SHIM_TRY try {
#define SHIM_CATCH                                        \
  }                                                       \
  catch (const std::exception& e) {                       \
    return simclr_error_string(e.what());                 \
  }                                                       \
  catch (...) {                                           \
    return simclr_error_string("unknown C++ exception");  \
  }                                                       \
  return nullptr;
