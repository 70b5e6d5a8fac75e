// The CUDA engine's ntk.cu compiled by the host compiler against the SIMT simulator.
#include "../src/ntk.cu"
