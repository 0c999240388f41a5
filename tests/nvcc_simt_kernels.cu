// nvcc compile check of the SIMT layer's test kernels (make nvcc-check): what the CPU layer runs
// in tests/test_simt.cpp must also be valid CUDA.
#include "tests/simt_test_kernels.cuh"
