// nvcc_diagnostics.cu: compiles diagnostics.cuh (and plot.h, which the trainer includes next to it)
// with nvcc (`make nvcc-check`), so a kernel that only g++ accepts fails the suite. Nothing here runs.
#include "diagnostics.cuh"
#include "run/plot.h"

// Takes the address of every entry point so each launcher and kernel is instantiated.
MoeStats nvcc_diagnostics_entry_points(MoeStatsBuffer& buf, const MoeActivations& acts, const MoeWeights& grads,
                                       const ModelConfig& cfg, int N, int ep_ranks) {
    moe_stats_compute(buf, acts, grads, cfg, N, ep_ranks);
    MoeStats s = moe_stats_read(buf, cfg, N, ep_ranks);
    std::vector<int> topk, kept;
    moe_copy_routing(topk, kept, acts, cfg, N);
    plot::Figure f = plot::line_figure("t", "x", "y", {});
    (void)plot::render(f).width();
    (void)moe_stats_json(s);
    return s;
}
