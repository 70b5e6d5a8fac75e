// The CUDA engine's factors.cu compiled by the host compiler against the SIMT simulator.
#include "../src/factors.cu"
