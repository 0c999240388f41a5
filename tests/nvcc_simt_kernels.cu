// nvcc compile check of the SIMT layer's test kernels (make nvcc-check): what the CPU layer runs
// in tests/test_simt.cpp must also be valid CUDA.
#include "tests/simt_test_kernels.cuh"

// the template launcher is compiled only where it is instantiated
template cudaError_t simt_reverse_scale<float, 3>(float*, const float*, int, int, cudaStream_t);
template cudaError_t simt_reverse_scale<double, -2>(double*, const double*, int, int, cudaStream_t);
