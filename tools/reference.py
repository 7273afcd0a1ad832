"""The transformers reference shared by the fixture and parity scripts: GptOssForCausalLM in float32
with the MXFP4 experts dequantized, eager attention (sinks, sliding window)."""
import torch
from transformers import GptOssForCausalLM, Mxfp4Config


def round_kv_to_f16():
    """From now on attention sees its keys (after RoPE) and values rounded to f16, as a KV cache
    kept in f16 holds them: the reference for our f16 cache, where f32's differs by that rounding
    (which, near a router tie, may pick another expert)."""
    import transformers.models.gpt_oss.modeling_gpt_oss as gpt_oss
    inner = gpt_oss.eager_attention_forward

    def rounded(module, query, key, value, *args, **kwargs):
        return inner(module, query, key.half().float(), value.half().float(), *args, **kwargs)

    gpt_oss.eager_attention_forward = rounded


def load(model_dir, device="cpu"):
    model = GptOssForCausalLM.from_pretrained(
        model_dir, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32
    )
    # Some transformers versions (5.17) leave the dequantized experts in bf16, which would make the
    # expert matmuls bf16; the values are exact in f32, so upcasting gives the float32 reference.
    model = model.float().to(device).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.config._attn_implementation = "eager"
    return model


def logits_and_router_margin(model, ids):
    """Logits [n, V] of every position of ids [n], and per position the smallest gap over layers
    between the k-th and (k+1)-th router logit (a tiny gap means rounding may pick another expert)."""
    k = model.config.num_experts_per_tok
    margins = []

    def hook(mod, inp, out):
        logits = out[0] if isinstance(out, tuple) else out
        if k >= logits.shape[-1]:
            # Every expert is chosen: no choice for rounding to flip.
            margins.append(torch.full((logits.shape[0],), float("inf"), device=logits.device))
            return
        top = torch.topk(logits.float(), k + 1, dim=-1).values
        margins.append((top[:, k - 1] - top[:, k]).reshape(-1))

    hooks = [layer.mlp.router.register_forward_hook(hook) for layer in model.model.layers]
    try:
        with torch.no_grad():
            logits = model(ids.reshape(1, -1).to(model.device)).logits[0].float().cpu()
    finally:
        for h in hooks:
            h.remove()
    return logits, torch.stack(margins).min(dim=0).values.cpu()


def greedy(model, prompt, n):
    """transformers' greedy continuation of n tokens, and the top-two logit gap at each step."""
    with torch.no_grad():
        out = model.generate(prompt.reshape(1, -1).to(model.device), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, output_scores=True, return_dict_in_generate=True,
                             eos_token_id=None, pad_token_id=0)
    ids = out.sequences[0, prompt.numel():].cpu()
    top2 = torch.stack([torch.topk(s[0].float(), 2).values for s in out.scores]).cpu()
    return ids, top2[:, 0] - top2[:, 1]
