// nvcc_moe.cu: compiles moe_layer.cuh with nvcc (`make nvcc-check`), so a kernel that only g++
// accepts fails the suite. Nothing here runs.
#include "moe_layer.cuh"

// Calls the layer's entry points so every launcher and kernel is instantiated.
void nvcc_moe_entry_points(float* out, float* du, float* losses, MoeActivations& acts, const MoeWeights& w,
                           const MoeWeights& g, const float* u, const float* dout, const ModelConfig& cfg, int N,
                           RouterNoise& noise) {
    moe_activation_views(acts, nullptr, nullptr, cfg, N);
    (void)moe_activation_floats(cfg, N);
    (void)moe_activation_ints(cfg, N);
    moe_forward(out, acts, w, u, cfg, N, &noise, 0);
    moe_loss_forward(losses, acts, cfg);
    moe_backward(du, g, dout, acts, w, u, cfg);
}
