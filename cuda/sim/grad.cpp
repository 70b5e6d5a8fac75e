// The CUDA engine's grad.cu compiled by the host compiler against the SIMT simulator.
#include "../src/grad.cu"
