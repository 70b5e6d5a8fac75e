// Process-wide run-time state of the engine (runtime.hpp, detail/parallel.hpp).
#include "mpsntk/runtime.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define MPSNTK_HAVE_ATFORK 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "detail/parallel.hpp"

namespace mpsntk {

namespace {

std::atomic<bool> g_forked{false};

#ifdef MPSNTK_HAVE_ATFORK
extern "C" void mark_forked_child() { g_forked.store(true, std::memory_order_relaxed); }
#endif

/// The stored thread count; set up (with the fork handler) on the first use of the engine.
std::atomic<int>& thread_count() {
  static std::atomic<int> count{[] {
#ifdef MPSNTK_HAVE_ATFORK
    // Registered before this process can have started a team of ours: children forked from
    // now on run serially (see num_threads()).
    pthread_atfork(nullptr, nullptr, mark_forked_child);
#endif
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  }()};
  return count;
}

std::atomic<InterruptCheck> g_check{nullptr};

constexpr auto kPollInterval = std::chrono::milliseconds(50);
thread_local int t_depth = 0;  // > 0 while this thread is inside an engine call
thread_local std::chrono::steady_clock::time_point t_last_poll;

std::string describe_bytes(std::size_t bytes) {
  char buf[96];
  const double b = static_cast<double>(bytes);
  if (b >= double(1u << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1u << 30));
  else if (b >= double(1u << 20))
    std::snprintf(buf, sizeof buf, "%.2f MiB", b / double(1u << 20));
  else
    std::snprintf(buf, sizeof buf, "%.2f KiB", b / double(1u << 10));
  return buf;
}

}  // namespace

int num_threads() {
  const int n = thread_count().load(std::memory_order_relaxed);
  return g_forked.load(std::memory_order_relaxed) ? 1 : n;
}

bool set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("mpsntk: n_threads must be >= 1; got " + std::to_string(n));
  thread_count().store(n, std::memory_order_relaxed);
  return n == 1 || !forked_child();
}

bool forked_child() {
  thread_count();  // registers the fork handler
  return g_forked.load(std::memory_order_relaxed);
}

void set_interrupt_check(InterruptCheck check) { g_check.store(check, std::memory_order_release); }

OutOfMemory::OutOfMemory(std::size_t bytes)
    : bytes_(bytes),
      msg_("mpsntk: out of memory: could not allocate " + describe_bytes(bytes) + " (" + std::to_string(bytes) +
           " bytes) for the engine's work arrays") {}

namespace detail {

CallScope::CallScope() {
  if (t_depth++ == 0) t_last_poll = std::chrono::steady_clock::now();
}

CallScope::~CallScope() { --t_depth; }

void poll_interrupt() {
  if (t_depth == 0) return;
  const InterruptCheck check = g_check.load(std::memory_order_acquire);
  if (!check) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - t_last_poll < kPollInterval) return;
  t_last_poll = now;
  if (check()) throw Interrupted();
}

}  // namespace detail

}  // namespace mpsntk
