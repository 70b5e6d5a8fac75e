/// @file runtime.hpp
/// @brief Process-wide run-time settings of the CPU engine: thread count, behaviour in forked
/// children, interruption of long calls, and the engine's exceptions.
#pragma once

#include <cstddef>
#include <new>
#include <stdexcept>
#include <string>

namespace mpsntk {

/// @brief Threads of every parallel region of the engine, whichever thread calls it.
/// Starts at OpenMP's default (OMP_NUM_THREADS or the number of cores).  Always 1 in a process
/// forked after the engine was first used: GNU OpenMP's thread pool does not survive fork(), so
/// a child that started a multi-threaded region would wait forever for threads that do not
/// exist; serial regions never touch the pool.
int num_threads();

/// @brief Set the engine's thread count for the whole process (OpenMP's omp_set_num_threads only
/// affects the calling thread).  In a forked child the setting is stored but regions stay serial.
/// @return false when the request cannot be honoured (n > 1 in a forked child).
/// @throws std::invalid_argument if @p n < 1.
bool set_num_threads(int n);

/// @brief Whether this process was forked after the engine was first used (regions run serially).
bool forked_child();

/// @brief Interruption check, called on the engine's calling thread (the one that entered the
/// engine, the master of its OpenMP regions) at most every ~50 ms while a call runs: between
/// tiles, blocks of samples and sites.  Returns true to abandon the call, which then throws
/// Interrupted.  The Python binding installs one that checks for signals (Ctrl-C).
using InterruptCheck = bool (*)();

/// @brief Install (or, with nullptr, remove) the interruption check of the whole process.
void set_interrupt_check(InterruptCheck check);

/// @brief Thrown by an engine call abandoned because the interruption check asked for it.
/// Outputs written so far are incomplete: every entry is either untouched or final.
class Interrupted : public std::runtime_error {
 public:
  Interrupted() : std::runtime_error("mpsntk: interrupted") {}
};

/// @brief std::bad_alloc that names the size of the allocation that failed.
class OutOfMemory : public std::bad_alloc {
 public:
  explicit OutOfMemory(std::size_t bytes);
  const char* what() const noexcept override { return msg_.c_str(); }
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  std::size_t bytes_;
  std::string msg_;
};

}  // namespace mpsntk
