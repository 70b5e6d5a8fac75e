// Parallel regions that survive failures: every OpenMP region of the engine runs its bodies
// through a Region, which
//   * sizes the team from the process-wide thread count (mpsntk::num_threads(); 1 inside
//     another region and in forked children),
//   * catches whatever a body throws (std::bad_alloc above all): an exception escaping an
//     OpenMP region calls std::terminate.  The first one is kept, the remaining bodies are
//     skipped, and finish() rethrows it after the region, on the calling thread,
//   * polls for interruption (Ctrl-C) on the calling thread between bodies.
// Usage:
//   detail::Region region;
//   #pragma omp parallel for num_threads(region.threads()) if (...)
//   for (index_t i = 0; i < n; ++i) region.run([&] { ... region.checkpoint(); ... });
//   region.finish();
#pragma once

#include <atomic>
#include <exception>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mpsntk/runtime.hpp"

namespace mpsntk {
namespace detail {

/// Marks the calling thread of an engine entry point for its duration (nests): only that
/// thread, which holds the caller's interpreter state, runs the interruption check.
class CallScope {
 public:
  CallScope();
  ~CallScope();
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;
};

/// On the calling thread of an engine call, at most every ~50 ms: run the interruption check
/// and throw Interrupted if it asks to stop.  Elsewhere a no-op.
void poll_interrupt();

/// Thrown by Region::checkpoint to leave a body early once the region is stopping; never escapes.
struct Abandon {};

class Region {
 public:
  Region() {
#ifdef _OPENMP
    threads_ = omp_in_parallel() ? 1 : num_threads();
#endif
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  /// Team size for the num_threads clause.
  int threads() const { return threads_; }

  /// Run one body (a loop iteration, or a thread's set-up); skipped once the region stops.
  template <class F>
  void run(F&& body) noexcept {
    if (stopping()) return;
    try {
      poll_interrupt();
      body();
    } catch (const Abandon&) {
    } catch (...) {
      fail(std::current_exception());
    }
  }

  /// Inside a long body: leave it (Abandon) if the region is stopping; poll for interruption.
  void checkpoint() {
    if (stopping()) throw Abandon{};
    poll_interrupt();
  }

  bool stopping() const { return stop_.load(std::memory_order_relaxed); }

  /// After the region: rethrow the first exception of any body.
  void finish() {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void fail(std::exception_ptr e) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error_) error_ = e;
    stop_.store(true, std::memory_order_relaxed);
  }

  int threads_ = 1;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

/// The calling thread's entry of per-thread state sized for a parallel region's team (entry 0
/// without OpenMP).
template <class V>
auto& thread_slot(V& per_thread) {
#ifdef _OPENMP
  return per_thread[omp_get_thread_num()];
#else
  return per_thread[0];
#endif
}

}  // namespace detail
}  // namespace mpsntk
