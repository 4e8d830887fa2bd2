"""The trainable set must be exactly DESIGN §4's, computed here independently from the module tree."""

import re

from torch import nn

LORA_R = 16


def _expected_lora_hosts(model) -> set[str]:
    """Module names DESIGN §4 puts LoRA on, enumerated from the backbones' structure."""
    hosts = set()
    for i, _ in enumerate(model.sam.vision_encoder.layers):
        hosts |= {f"sam.vision_encoder.layers.{i}.{m}" for m in ("attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2")}
    hosts |= {"sam.vision_encoder.neck.conv1", "sam.vision_encoder.neck.conv2"}
    for tower in ("vision_model", "text_model"):
        for i, _ in enumerate(getattr(model.siglip, tower).encoder.layers):
            hosts |= {f"siglip.{tower}.encoder.layers.{i}.self_attn.{p}_proj" for p in ("q", "k", "v", "out")}
    hosts.add("siglip.text_model.head")
    return hosts


def _lora_size(base: nn.Module, r: int) -> int:
    if isinstance(base, nn.Conv2d):
        k = base.kernel_size[0] * base.kernel_size[1]
        return r * base.in_channels * k + base.out_channels * r
    return r * (base.in_features + base.out_features)


def test_lora_sits_on_exactly_the_design_modules(tiny):
    hosts = {name for name, m in tiny.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0}
    assert hosts == _expected_lora_hosts(tiny)


def test_trainable_names_and_count_equal_the_design_set(tiny):
    trained = {n for n, p in tiny.named_parameters() if p.requires_grad}
    lora = {n for n in trained if ".lora_" in n}
    rest = trained - lora
    expected_rest = {
        n
        for n, _ in tiny.named_parameters()
        if n.startswith(("prompter.", "sam.mask_decoder."))
        or (n.startswith("sam.prompt_encoder.") and "shared_embedding" not in n)
        or n in {"siglip.logit_scale", "siglip.logit_bias"}
    }
    assert rest == expected_rest
    assert {re.sub(r"\.lora_[AB]\.default\.weight$", "", n) for n in lora} == _expected_lora_hosts(tiny)

    modules = dict(tiny.named_modules())
    expected_count = sum(_lora_size(modules[h].base_layer, LORA_R) for h in _expected_lora_hosts(tiny))
    expected_count += sum(p.numel() for n, p in tiny.named_parameters() if n in expected_rest)
    assert sum(p.numel() for p in tiny.parameters() if p.requires_grad) == expected_count


def test_backbone_weights_stay_frozen(tiny):
    frozen = [n for n, p in tiny.named_parameters() if not p.requires_grad]
    assert any(n.startswith("sam.vision_encoder.layers.0.attn.qkv.base_layer") for n in frozen)
    assert "sam.shared_image_embedding.positional_embedding" in frozen
    assert not any(n.startswith(("prompter.", "sam.mask_decoder.")) for n in frozen)
