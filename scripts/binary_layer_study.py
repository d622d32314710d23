"""Binarization methods on one real testbed layer (layers.10 mlp.down_proj, 576 x 1536).

    python scripts/binary_layer_study.py

Collects per-modality X^T X from 16 mixed calibration samples (easy-VQA image+text and WikiText-2),
compresses the layer with each binarization method and prints bits per weight under three
conventions (all stored bits / without masks and bitmaps / codes only, the papers' ~1.08) with the
relative weight error and the activation-weighted errors under the all, text and image Hessians.
"""
import time, torch
torch.set_num_threads(1)
from transformers import AutoProcessor, LlavaForConditionalGeneration
from llava_fa.calibration.data import build_samples
from llava_fa.methods import get_method, build_config, LayerStats
from llava_fa.commands.testbed import ensure_testbed
d = ensure_testbed()
model = LlavaForConditionalGeneration.from_pretrained(d, torch_dtype=torch.float32).eval()
proc = AutoProcessor.from_pretrained(d)
samples, what = build_samples(proc, "mixed", 16, 256, multimodal=True)
name = "model.language_model.layers.10.mlp.down_proj"
mod = model.get_submodule(name)
img_id = model.config.image_token_id
st = LayerStats(mod.in_features, xtx={"text": 0, "image": 0}, tokens={"text": 0, "image": 0})
cur = {}
def hook(m, a):
    x = a[0].reshape(-1, a[0].shape[-1]).double()
    im = (cur["ids"] == img_id).reshape(-1)
    for k, sel in (("image", im), ("text", ~im)):
        xs = x[sel]; st.xtx[k] = st.xtx[k] + xs.T @ xs; st.tokens[k] += int(sel.sum())
h = mod.register_forward_pre_hook(hook)
with torch.no_grad():
    for s in samples:
        cur["ids"] = s["input_ids"]; model(**s)
h.remove()
st.xtx = {k: v.float() for k, v in st.xtx.items()}
print(what, st.tokens)
W = mod.weight.detach().float()
Ht, Hv, Ha = st.hessian("text"), st.hessian("image"), st.hessian()
def aerr(Q, H): E = W - Q; return float(torch.sqrt(torch.trace(E @ H @ E.T) / torch.trace(W @ H @ W.T)))
plain = torch.sign(W) * W.abs().mean()
print(f"{'method':28s} {'stored':>7s} {'no_masks':>8s} {'codes':>6s} {'rel':>6s} {'act_all':>7s} {'act_txt':>7s} {'act_img':>7s} {'sec':>5s}")
print(f"{'sign (1 scale)':28s} {'':>7s} {'':>8s} {'':>6s} {float((W-plain).norm()/W.norm()):6.4f} {aerr(plain,Ha):7.4f} {aerr(plain,Ht):7.4f} {aerr(plain,Hv):7.4f}")
for m, o in [("billm", {}), ("arb", {}), ("arb-x", {}), ("arb-rc", {}), ("pb-llm", {}), ("sab", {}),
             ("sab", {"lambda_steers_selection": True}), ("sab", {"use_lambda": False})]:
    t = time.time()
    q = get_method(m)(build_config(m, o)).compress(W, st)
    D = q.dequantize(); c = q.bpw_conventions()
    lab = m + ("" if not o else " " + ",".join(f"{k}={v}" for k, v in o.items()))
    print(f"{lab[:28]:28s} {c['stored']:7.3f} {c['no_masks']:8.3f} {c['codes']:6.3f} {float((W-D).norm()/W.norm()):6.4f} {aerr(D,Ha):7.4f} {aerr(D,Ht):7.4f} {aerr(D,Hv):7.4f} {time.time()-t:5.1f}")
    if m == "billm": print("  breakdown bits/weight:", {k: round(v / W.numel(), 4) for k, v in q.bits_breakdown().items()})
