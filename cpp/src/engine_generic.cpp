// Engine compiled for the generic instruction set (see detail/engine_impl.hpp).
#define MPSNTK_ISA_NS isa_generic
#define MPSNTK_VBYTES 16
#define MPSNTK_MR 4
#define MPSNTK_NV 2
#include "detail/engine_impl.hpp"
