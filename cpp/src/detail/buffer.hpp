// Storage for the engine's large work arrays (environments, packed factors, tiles).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

#include "mpsntk/runtime.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#elif defined(_WIN32)
#include <malloc.h>
#endif

namespace mpsntk {
namespace detail {

/// std::vector allocator whose elements start uninitialised (every engine buffer is written
/// before it is read, and zeroing would cost a full extra pass over memory).  Arrays of 32 MiB
/// and more (beyond malloc's reuse: they are fresh mappings on every call) are 2 MiB aligned and
/// advised as transparent huge pages; faulting them in 4 KiB at a time costs several per cent
/// of a large NTK.  A failed allocation throws OutOfMemory, which names the size.
template <class T>
struct uninit_allocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = uninit_allocator<U>;
  };
  static constexpr std::size_t huge_page = std::size_t(2) << 20;
  static constexpr std::size_t huge_threshold = std::size_t(32) << 20;

  uninit_allocator() = default;
  template <class U>
  uninit_allocator(const uninit_allocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > std::size_t(-1) / sizeof(T)) throw OutOfMemory(std::size_t(-1));
    const std::size_t bytes = n * sizeof(T);
    if (bytes < huge_threshold) {
      void* p = ::operator new(bytes, std::nothrow);
      if (!p) throw OutOfMemory(bytes);
      return static_cast<T*>(p);
    }
    const std::size_t rounded = (bytes + huge_page - 1) / huge_page * huge_page;
#if defined(_WIN32)
    void* p = _aligned_malloc(rounded, huge_page);
#else
    void* p = std::aligned_alloc(huge_page, rounded);
#endif
    if (!p) throw OutOfMemory(rounded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure leaves ordinary pages
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n * sizeof(T) < huge_threshold)
      ::operator delete(p);
    else
#if defined(_WIN32)
      _aligned_free(p);
#else
      std::free(p);
#endif
  }
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <class U>
  bool operator==(const uninit_allocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const uninit_allocator<U>&) const noexcept {
    return false;
  }
};

template <class T>
using buffer = std::vector<T, uninit_allocator<T>>;

}  // namespace detail
}  // namespace mpsntk
