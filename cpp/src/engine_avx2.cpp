// Engine compiled for the avx2 instruction set (see detail/engine_impl.hpp).
#define MPSNTK_ISA_NS isa_avx2
#define MPSNTK_VBYTES 32
#define MPSNTK_MR 4
#define MPSNTK_NV 3
#include "detail/engine_impl.hpp"
