// SIMT simulator (mpsntk/cuda/sim.hpp): fibers per simulated thread, block and warp barriers,
// and a model of the two tensor-core instructions the kernels issue.
#if !defined(_XOPEN_SOURCE) && defined(__APPLE__)
#define _XOPEN_SOURCE 700  // macOS declares the ucontext routines only with it
#endif
#include "mpsntk/cuda/sim.hpp"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__linux__) && !defined(MPSNTK_SIM_UCONTEXT)
#define MPSNTK_SIM_ASM_SWITCH 1
// Save the callee-saved registers, MXCSR and the x87 control word on the current stack, store
// the stack pointer in *save, load `load` and restore the same from there (System V x86-64).
extern "C" void mpsntk_sim_switch(void** save, void* load);
asm(R"(
  .text
  .globl mpsntk_sim_switch
  .hidden mpsntk_sim_switch
  .type mpsntk_sim_switch, @function
mpsntk_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mpsntk_sim_switch, .-mpsntk_sim_switch
)");
#else
#include <ucontext.h>
#endif

namespace mpsntk::cuda {

// Device facts of the simulator build (the _cuda_sim module).
int device_count() { return 1; }
std::string device_unavailable_reason() { return ""; }
std::string runtime_version() { return "simulator"; }
std::vector<std::string> architectures() { return {"simt-simulator"}; }
namespace {
int g_image_arch = 90;  // an sm_90 part running sm_90 code, unless a test says otherwise
}  // namespace
int image_arch() { return g_image_arch; }

namespace sim {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kMaxThreads = 1024;
constexpr std::size_t kStackBytes = 256 * 1024;
constexpr std::size_t kMaxSharedBytes = 227 * 1024;  // per block, on sm_90

// ---- PTX ISA fragment tables (section "Matrix fragments for mma.m8n8k4 / mma.m16n8k8"),
// with group g = lane / 4 and thread-in-group t = lane % 4.
struct Element {
  int row, col;
};
struct M8n8k4F64 {  // A 8 x 4 row-major, B 4 x 8 column-major, C/D 8 x 8
  static constexpr int M = 8, N = 8, K = 4, A = 1, B = 1, C = 2, id = 1;
  static Element a(int lane, int) { return {lane / 4, lane % 4}; }
  static Element b(int lane, int) { return {lane % 4, lane / 4}; }
  static Element c(int lane, int r) { return {lane / 4, 2 * (lane % 4) + r}; }
};
struct M16n8k8 {  // A 16 x 8, B 8 x 8, C/D 16 x 8 (.tf32 and .f64 alike)
  static constexpr int M = 16, N = 8, K = 8, A = 4, B = 2, C = 4;
  static Element a(int lane, int r) { return {lane / 4 + (r == 1 || r == 3 ? 8 : 0), lane % 4 + (r >= 2 ? 4 : 0)}; }
  static Element b(int lane, int r) { return {lane % 4 + (r == 1 ? 4 : 0), lane / 4}; }
  static Element c(int lane, int r) { return {lane / 4 + (r >= 2 ? 8 : 0), 2 * (lane % 4) + r % 2}; }
};
struct M16n8k8F64 : M16n8k8 {
  static constexpr int id = 2;
};
struct M16n8k8Tf32 : M16n8k8 {
  static constexpr int id = 3;
};

/// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest with ties away from zero.
float to_tf32(float x) {
  if (!std::isfinite(x)) return x;
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x1000u) & 0xffffe000u;  // on the magnitude bits: ties go away from zero
  std::memcpy(&x, &u, 4);
  return x;
}

// ---- execution contexts: a hand-written register switch on x86-64 Linux (a few ns), ucontext
// elsewhere (a system call per switch, for the signal mask)
#ifdef MPSNTK_SIM_ASM_SWITCH
struct Context {
  void* sp = nullptr;
};
void make_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t(15);
  auto* sp = reinterpret_cast<std::uint64_t*>(top);
  *--sp = 0;                                       // entry's return address: it never returns
  *--sp = reinterpret_cast<std::uint64_t>(entry);  // where mpsntk_sim_switch's ret goes
  for (int r = 0; r < 6; ++r) *--sp = 0;           // rbp rbx r12 r13 r14 r15
  std::uint32_t mxcsr;
  std::uint16_t fpcw;
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fpcw));
  *--sp = mxcsr | (std::uint64_t(fpcw) << 32);
  c.sp = sp;
}
void switch_context(Context& from, Context& to) { mpsntk_sim_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void make_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---- simulated threads and blocks
enum class Wait { none, block, warp, done };

/// A cp.async that has not landed yet: the bytes it read (or zeros) and where they go.
struct PendingCopy {
  void* dst;
  unsigned char bytes[16];
  std::size_t n;
};

struct Fiber {
  Context ctx;
  ThreadContext tc;
  Wait wait = Wait::none;
  unsigned mma_count = 0;
  std::vector<PendingCopy> open;                // copies since the last commit
  std::deque<std::vector<PendingCopy>> groups;  // committed groups, oldest first
};

/// The operands one warp exchanges for an mma.sync.  Two buffers, used alternately: a lane
/// cannot deposit into a buffer again before every lane has read it, since that needs the
/// barrier of the mma in between, which every lane reaches only after reading.
struct Exchange {
  int shape = 0, deposits = 0;
  double a[16][8], b[8][8];
};

struct Warp {
  int size = 0, arrived = 0, finished = 0;
  Exchange ex[2];
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Context main;
  int current = -1, live = 0, finished = 0, arrived = 0;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> shared;  // dynamic shared memory, 16 bytes of slack for alignment
  std::string kernel;                 // "file:line: name" of the launch
  std::string error;
};

thread_local Block* g_block = nullptr;
thread_local Schedule g_schedule = Schedule::forward;
thread_local std::mt19937_64 g_rng;
thread_local std::vector<std::uintptr_t> g_streams;
thread_local std::map<std::string, int> g_launches;
thread_local std::vector<std::unique_ptr<char[]>> g_stacks;

Fiber& self() { return g_block->fibers[g_block->current]; }

/// Stop the running fiber for good with a kernel error (its stack is abandoned, not unwound).
[[noreturn]] void fail(const std::string& what) {
  Block& B = *g_block;
  if (B.error.empty())
    B.error = B.kernel + ": thread " + std::to_string(self().tc.thread_idx.x) + " of block (" +
              std::to_string(self().tc.block_idx.x) + ", " + std::to_string(self().tc.block_idx.y) + "): " + what;
  self().wait = Wait::done;
  switch_context(self().ctx, B.main);  // never resumed
  std::abort();
}

void yield() { switch_context(self().ctx, g_block->main); }

void release(Wait which, int warp) {
  for (auto& f : g_block->fibers)
    if (f.wait == which && (warp < 0 || static_cast<int>(f.tc.thread_idx.x) / kWarp == warp)) f.wait = Wait::none;
}

void fiber_entry() {
  Block& B = *g_block;
  std::string thrown;  // leave the handler before abandoning this stack
  try {
    (*B.body)();
  } catch (const std::exception& e) {
    thrown = e.what();
  }
  if (!thrown.empty()) fail("exception: " + thrown);
  Fiber& f = self();
  bool pending = !f.open.empty();
  for (const auto& g : f.groups) pending = pending || !g.empty();
  if (pending) fail("exited with cp.async copies it never waited for");
  f.wait = Wait::done;
  --B.live, ++B.finished;
  Warp& w = B.warps[f.tc.thread_idx.x / kWarp];
  ++w.finished;
  if (B.arrived > 0) fail("exited while other threads wait at __syncthreads()");
  if (w.arrived > 0) fail("exited while other lanes of its warp wait in mma.sync");
  switch_context(f.ctx, B.main);  // never resumed
  std::abort();
}

template <class Shape>
void mma(const double* a_regs, const double* b_regs, double* d) {
  Block& B = *g_block;
  Fiber& f = self();
  const int lane = f.tc.thread_idx.x % kWarp;
  Warp& w = B.warps[f.tc.thread_idx.x / kWarp];
  if (w.size != kWarp) fail("mma.sync in a partial warp");
  if (w.finished > 0) fail("mma.sync while lanes of the warp have exited");
  Exchange& ex = w.ex[f.mma_count++ % 2];
  if (ex.deposits++ == 0)
    ex.shape = Shape::id;
  else if (ex.shape != Shape::id)
    fail("lanes of one warp issue different mma shapes");
  for (int r = 0; r < Shape::A; ++r) {
    const Element e = Shape::a(lane, r);
    ex.a[e.row][e.col] = a_regs[r];
  }
  for (int r = 0; r < Shape::B; ++r) {
    const Element e = Shape::b(lane, r);
    ex.b[e.row][e.col] = b_regs[r];
  }
  f.wait = Wait::warp;
  if (++w.arrived == kWarp) {
    w.arrived = 0;
    ex.deposits = 0;
    release(Wait::warp, f.tc.thread_idx.x / kWarp);
  } else {
    yield();
  }
  for (int r = 0; r < Shape::C; ++r) {
    const Element e = Shape::c(lane, r);
    double acc = d[r];
    if constexpr (Shape::id == M16n8k8Tf32::id) {
      float s = static_cast<float>(acc);  // FP32 accumulation of exact TF32 products
      for (int k = 0; k < Shape::K; ++k)
        s = std::fma(static_cast<float>(ex.a[e.row][k]), static_cast<float>(ex.b[k][e.col]), s);
      acc = s;
    } else {
      for (int k = 0; k < Shape::K; ++k) acc = std::fma(ex.a[e.row][k], ex.b[k][e.col], acc);
    }
    d[r] = acc;
  }
}

void run_block(Block& B, unsigned threads, const std::vector<std::uint64_t>& order) {
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = B.fibers[t];
    f.wait = Wait::none;
    f.mma_count = 0;
    f.open.clear(), f.groups.clear();
    make_context(f.ctx, g_stacks[t].get(), kStackBytes, fiber_entry);
  }
  for (auto& w : B.warps) w.arrived = w.finished = 0;
  std::fill(B.shared.begin(), B.shared.end(), 0xFF);
  B.live = static_cast<int>(threads), B.finished = 0, B.arrived = 0;
  while (B.live > 0 && B.error.empty()) {
    bool ran = false;
    for (std::uint64_t t : order) {
      if (B.fibers[t].wait != Wait::none) continue;
      B.current = static_cast<int>(t);
      switch_context(B.main, B.fibers[t].ctx);
      ran = true;
      if (!B.error.empty()) break;
    }
    if (!ran && B.error.empty()) {
      int at_block = 0, at_warp = 0;
      for (auto& f : B.fibers) at_block += f.wait == Wait::block, at_warp += f.wait == Wait::warp;
      B.error = B.kernel + ": deadlock: " + std::to_string(at_block) + " threads wait at __syncthreads() and " +
                std::to_string(at_warp) + " in mma.sync";
    }
  }
}

/// The order of `count` blocks or threads under the current schedule.
std::vector<std::uint64_t> run_order(std::uint64_t count) {
  std::vector<std::uint64_t> order(count);
  std::iota(order.begin(), order.end(), std::uint64_t(0));
  if (g_schedule == Schedule::reverse) std::reverse(order.begin(), order.end());
  if (g_schedule == Schedule::shuffled) std::shuffle(order.begin(), order.end(), g_rng);
  return order;
}

[[noreturn]] void launch_error(const std::string& kernel, const std::string& what) {
  throw CudaError(kernel + ": cudaErrorInvalidConfiguration (" + what + ")");
}

}  // namespace

const ThreadContext& context() { return self().tc; }

void syncthreads() {
  Block& B = *g_block;
  if (B.finished > 0) fail("__syncthreads() after other threads of the block have exited");
  self().wait = Wait::block;
  if (++B.arrived == B.live) {
    B.arrived = 0;
    release(Wait::block, -1);
  } else {
    yield();
  }
}

void* dynamic_shared() {
  auto p = reinterpret_cast<std::uintptr_t>(g_block->shared.data());
  return reinterpret_cast<void*>((p + 15) & ~std::uintptr_t(15));
}

void cp_async(void* dst, const void* src, std::size_t bytes, bool valid) {
  if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of " + std::to_string(bytes) + " bytes");
  if (reinterpret_cast<std::uintptr_t>(dst) % bytes || (valid && reinterpret_cast<std::uintptr_t>(src) % bytes))
    fail("misaligned cp.async of " + std::to_string(bytes) + " bytes");
  PendingCopy c{dst, {}, bytes};
  if (valid) std::memcpy(c.bytes, src, bytes);
  const bool now = g_schedule == Schedule::reverse || (g_schedule == Schedule::shuffled && (g_rng() & 1));
  if (now)
    std::memcpy(dst, c.bytes, bytes);
  else
    self().open.push_back(c);
}

void cp_async_commit() {
  Fiber& f = self();
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}

void cp_async_wait(int pending) {
  Fiber& f = self();
  while (f.groups.size() > static_cast<std::size_t>(std::max(pending, 0))) {
    for (const PendingCopy& c : f.groups.front()) std::memcpy(c.dst, c.bytes, c.n);
    f.groups.pop_front();
  }
}

void mma_m8n8k4_f64(double* c, const double* a, const double* b) {
  double d[2] = {c[0], c[1]};
  mma<M8n8k4F64>(a, b, d);
  c[0] = d[0], c[1] = d[1];
}

void mma_m16n8k8_f64(double* c, const double* a, const double* b) {
  double d[4] = {c[0], c[1], c[2], c[3]};
  mma<M16n8k8F64>(a, b, d);
  for (int r = 0; r < 4; ++r) c[r] = d[r];
}

void mma_m16n8k8_tf32(float* c, const float* a, const float* b) {
  double ra[4], rb[2], d[4];
  for (int r = 0; r < 4; ++r) ra[r] = to_tf32(a[r]), d[r] = c[r];
  for (int r = 0; r < 2; ++r) rb[r] = to_tf32(b[r]);
  mma<M16n8k8Tf32>(ra, rb, d);
  for (int r = 0; r < 4; ++r) c[r] = static_cast<float>(d[r]);
}

void record_stream(const void* stream) {
  const auto h = reinterpret_cast<std::uintptr_t>(stream);
  if (std::find(g_streams.begin(), g_streams.end(), h) == g_streams.end()) g_streams.push_back(h);
}

std::vector<std::uintptr_t> streams_used() { return std::exchange(g_streams, {}); }

std::map<std::string, int> launches_made() { return std::exchange(g_launches, {}); }

void launch(const char* kernel_name, const std::string& where, dim3 grid, dim3 block, std::size_t shared_bytes,
            const void* stream, const std::function<void()>& body) {
  record_stream(stream);
  ++g_launches[kernel_name];
  const std::string name = where + ": " + kernel_name;
  const std::uint64_t threads = std::uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) launch_error(name, "empty grid");
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) launch_error(name, "grid too large");
  if (threads == 0 || threads > kMaxThreads || block.z > 64) launch_error(name, "bad block size");
  if (block.y != 1 || block.z != 1) launch_error(name, "the simulator runs one-dimensional blocks only");
  if (shared_bytes > kMaxSharedBytes) launch_error(name, "too much dynamic shared memory");
  if (g_block) throw CudaError(name + ": launched from inside a simulated kernel");
  while (g_stacks.size() < threads) g_stacks.emplace_back(new char[kStackBytes]);

  Block B;
  B.body = &body;
  B.kernel = name;
  B.shared.resize(shared_bytes ? shared_bytes + 16 : 0);
  B.fibers.resize(threads);
  B.warps.resize((threads + kWarp - 1) / kWarp);
  for (std::size_t w = 0; w < B.warps.size(); ++w)
    B.warps[w].size = static_cast<int>(std::min<std::uint64_t>(kWarp, threads - w * kWarp));
  g_block = &B;
  const std::uint64_t blocks = std::uint64_t(grid.x) * grid.y * grid.z;
  const std::vector<std::uint64_t> block_order = run_order(blocks), order = run_order(threads);
  for (std::uint64_t i = 0; i < blocks && B.error.empty(); ++i) {
    const std::uint64_t b = block_order[i];
    const uint3 bidx{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                     static_cast<unsigned>(b / grid.x / grid.y)};
    for (unsigned t = 0; t < threads; ++t) B.fibers[t].tc = ThreadContext{{t, 0, 0}, bidx, block, grid};
    run_block(B, static_cast<unsigned>(threads), order);
  }
  g_block = nullptr;
  if (!B.error.empty()) throw CudaError(B.error);
}

void set_image_arch(int arch) { g_image_arch = arch; }

void set_schedule(Schedule s, std::uint64_t seed) {
  g_schedule = s;
  g_rng.seed(seed);
}

}  // namespace sim
}  // namespace mpsntk::cuda
