// Engine compiled for the avx512 instruction set (see detail/engine_impl.hpp).
#define MPSNTK_ISA_NS isa_avx512
#define MPSNTK_VBYTES 64
#define MPSNTK_MR 8
#define MPSNTK_NV 3
#include "detail/engine_impl.hpp"
