"""Cross-check of a --dump-state file against the model of docs/model.md, re-implemented with PyTorch autograd.

    ./train_moe_cpu --capacity-factor 1.0 --dump-state dump.safetensors
    python tests/check_dump_pytorch.py dump.safetensors

Needs torch and safetensors (pip); not part of `make test`, which must run without Python packages.
Recomputes the forward pass in float64 from the dumped weights and batch (with the dumped router
noise), the losses, every gradient by autograd, and the routing (top-k, kept, gates), and prints how
far the trainer's numbers are: relative error of each loss, the worst gradient error as a fraction
of the largest |gradient| of its tensor, and whether the routing decisions are identical.
Exits 1 when a loss is off by more than 1e-4 relative, a gradient by more than 2e-3 of its
tensor's largest value, or a routing decision differs.
"""
import math, sys
import torch, torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

path = sys.argv[1]
d = load_file(path)
with safe_open(path, "pt") as f:
    meta = f.metadata()
L, NH, C = int(meta["layers"]), int(meta["heads"]), int(meta["dim"])
E, K, S = int(meta["experts"]), int(meta["top-k"]), int(meta["shared-experts"])
cf, noise = float(meta["capacity-factor"]), meta["router-noise"] == "1"
aux_coef, z_coef = float(meta["aux-coef"]), float(meta["z-coef"])

routing_suffixes = ("topk_idx", "kept", "gates", "noise_eps")
names = [k for k in d if not k.startswith(("grad.", "loss.")) and k not in ("inputs", "targets", "logits")
         and not k.endswith(routing_suffixes)]
w = {k: d[k].double().clone().requires_grad_(True) for k in names}
idx, tgt = d["inputs"].long(), d["targets"].long()
B, T = idx.shape
N = B * T
FFN_NAMES = ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")


def ffn(u, fc_w, fc_b, proj_w, proj_b):
    return F.gelu(u @ fc_w.T + fc_b, approximate="tanh") @ proj_w.T + proj_b


def moe(u, p, layer, routing):
    r = u @ w[p + "router.weight"].T                                   # clean logits (N, E)
    h = r + d[f"h.{layer}.moe.noise_eps"].double() * F.softplus(u @ w[p + "noise.weight"].T) if noise else r
    probs = torch.softmax(h, -1)
    # top-K, ties to the lower index, decided in float32 like the trainer
    expert = torch.sort(probs.detach().float(), dim=-1, descending=True, stable=True).indices[:, :K]
    gates = probs.gather(1, expert)
    if K > 1:
        gates = gates / gates.sum(-1, keepdim=True)
    cap = math.ceil(cf * N * K / E) if cf > 0 else N
    order = expert.T.reshape(-1)                                       # priority j*N + t
    position = F.one_hot(order, E).cumsum(0)[torch.arange(K * N), order] - 1
    kept = (position < cap).view(K, N).T
    out = torch.zeros_like(u)
    for e in range(E):
        weight = (gates * kept * (expert == e)).sum(-1, keepdim=True)
        out = out + weight * ffn(u, *(w[p + "experts." + n][e] for n in FFN_NAMES))
    for s in range(S):
        out = out + ffn(u, *(w[p + "shared." + n][s] for n in FFN_NAMES))
    f = torch.bincount(expert.reshape(-1), minlength=E).double() / (N * K)   # before drops, constant
    aux = E * (f * probs.mean(0)).sum()
    z = (torch.logsumexp(r, -1) ** 2).mean()
    routing[layer] = (expert, kept, gates.detach())
    return out, aux, z


def ln(x, n):
    return F.layer_norm(x, (C,), w[n + ".weight"], w[n + ".bias"], eps=1e-5)


routing = {}
x = w["wte"][idx] + w["wpe"][:T]
aux_sum = z_sum = torch.zeros((), dtype=torch.float64)
for l in range(L):
    h = f"h.{l}."
    q, k, v = (ln(x, h + "ln_1") @ w[h + "attn.c_attn.weight"].T + w[h + "attn.c_attn.bias"]).split(C, -1)
    q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    x = x + y @ w[h + "attn.c_proj.weight"].T + w[h + "attn.c_proj.bias"]
    u = ln(x, h + "ln_2")
    if E == 0:
        x = x + ffn(u, *(w[h + "mlp." + n] for n in FFN_NAMES))
    else:
        out, aux, z = moe(u.reshape(N, C), h + "moe.", l, routing)
        x, aux_sum, z_sum = x + out.view(B, T, C), aux_sum + aux, z_sum + z
logits = ln(x, "ln_f") @ w["wte"].T
ce = F.cross_entropy(logits.view(N, -1), tgt.view(-1))
total = ce + aux_coef * aux_sum + z_coef * z_sum
total.backward()

ok = True
losses = {"total": total, "ce": ce} | ({"aux": aux_sum, "z": z_sum} if E else {})
for name, value in losses.items():
    rel = abs(d["loss." + name].item() - value.item()) / max(abs(value.item()), 1e-12)
    ok &= rel <= 1e-4
    print(f"loss.{name}: trainer {d['loss.' + name].item():.7f}, reference {value.item():.7f}, relative error {rel:.1e}")
worst, worst_name = 0.0, ""
for n in names:
    grad = w[n].grad if w[n].grad is not None else torch.zeros_like(w[n])   # unused (noise off): 0
    scale = max(grad.abs().max().item(), d["grad." + n].abs().max().item(), 1e-30)
    err = (grad - d["grad." + n].double()).abs().max().item() / scale
    if err > worst:
        worst, worst_name = err, n
ok &= worst <= 2e-3
print(f"gradients: worst error {worst:.1e} of the largest |gradient| of its tensor ({worst_name})")
for l, (expert, kept, gates) in routing.items():
    same = torch.equal(expert.int(), d[f"h.{l}.moe.topk_idx"]) and torch.equal(kept.int(), d[f"h.{l}.moe.kept"])
    ok &= same
    gate_err = (gates - d[f"h.{l}.moe.gates"].double()).abs().max().item()
    print(f"layer {l}: routing {'identical' if same else 'DIFFERENT'}, {int((~kept).sum())} choices dropped, "
          f"gates max error {gate_err:.1e}")
print("match" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
