// nvcc compile check of the compute-sanitizer test kernels (make nvcc-check): the racy kernels,
// their correct twins and the synccheck / initcheck kernels of tests/test_sanitizers.cpp and
// tests/test_racecheck.cpp must be valid CUDA too.
#include "tests/racy_kernels.cuh"
