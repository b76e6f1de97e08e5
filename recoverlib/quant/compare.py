"""Quality of a quantized model against its reference: logits error, KL, top-1 and router agreement.

Both functions run the two models on the same ``input_ids`` (LongTensor, batch x seq) without gradients and
work on PEFT-wrapped, split-MoE or fused-MoE Mixtrals alike.
"""

from __future__ import annotations

from recoverlib.module_groups import is_router


def _logits(model, input_ids):
    import torch

    device = next(model.parameters()).device  # models on different devices compare on the CPU
    with torch.no_grad():
        return model(input_ids=input_ids.to(device)).logits.float().cpu()


def logits_error(ref_model, model, input_ids) -> dict:
    """``rel_error``: ||l - l_ref|| / ||l_ref|| over all positions; ``kl``: mean KL(ref || model) per token
    (nats); ``top1``: fraction of positions where the argmax token agrees."""
    import torch

    ref, got = _logits(ref_model, input_ids), _logits(model, input_ids)
    rel = (got - ref).norm() / ref.norm()
    logp_ref, logp = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1).mean()
    top1 = (ref.argmax(-1) == got.argmax(-1)).float().mean()
    return {"rel_error": float(rel), "kl": float(kl), "top1": float(top1)}


def _router_choices(model, input_ids, k: int) -> list:
    """Top-k expert indices (tokens x k) of every MoE layer's router, in layer order."""
    import torch

    choices: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if is_router(name):

            def hook(_mod, _inp, out, name=name):
                logits = out[0] if isinstance(out, tuple) else out  # MixtralTopKRouter returns (logits, ...)
                choices[name] = logits.float().reshape(-1, logits.shape[-1]).topk(k, dim=-1).indices

            hooks.append(module.register_forward_hook(hook))
    try:
        _logits(model, input_ids)
    finally:
        for h in hooks:
            h.remove()
    return [choices[n] for n in sorted(choices, key=_layer_index)]


def _layer_index(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else 0


def router_agreement(ref, model, input_ids, k: int = 2) -> dict:
    """Per layer, the mean over tokens of |top-k(ref) & top-k(model)| / k; plus their mean and exact-set
    rate."""
    a, b = _router_choices(ref, input_ids, k), _router_choices(model, input_ids, k)
    if len(a) != len(b) or not a:
        raise ValueError(f"router layers differ or are missing ({len(a)} vs {len(b)})")
    per_layer, exact = [], []
    for x, y in zip(a, b, strict=True):
        overlap = (x.unsqueeze(-1) == y.unsqueeze(-2)).any(-1).sum(-1).float()  # tokens
        per_layer.append(float((overlap / k).mean()))
        exact.append(float((overlap == k).float().mean()))
    return {"per_layer": per_layer, "mean": sum(per_layer) / len(per_layer), "exact": sum(exact) / len(exact),
            "tokens": int(a[0].shape[0]), "k": k}
