// nvcc_gpt_kernels.cu: compiles every GPT kernel header with nvcc (`make nvcc-check`), so a kernel
// that only the CPU layer accepts fails the build. Nothing here runs.
#include "encoder.cuh"
#include "layernorm.cuh"
#include "matmul.cuh"
#include "attention.cuh"
#include "activations.cuh"
#include "classifier.cuh"
#include "optim.cuh"
