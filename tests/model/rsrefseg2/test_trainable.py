"""LoRA sits on the official targets and the trained set is what the official model leaves trainable; computed here
independently from the module tree."""

import re

import pytest
import torch

from rsrs.model import get_model_config, load_model
from rsrs.model.lora import image_encoders_frozen

LORA_R = 16


def _expected_lora_hosts(model) -> set[str]:
    """The official targets: SAM 2 trunk attention qkv/proj and neck convs; SigLIP vision attention q/k/v/out, its
    pooling head's attention out_proj and MLP; SigLIP text attention q/k/v/out and head."""
    hosts = set()
    for i, _ in enumerate(model.sam2.vision_encoder.backbone.blocks):
        hosts |= {f"sam2.vision_encoder.backbone.blocks.{i}.attn.{p}" for p in ("qkv", "proj")}
    hosts |= {f"sam2.vision_encoder.neck.convs.{i}" for i, _ in enumerate(model.sam2.vision_encoder.neck.convs)}
    for tower in ("vision_model", "text_model"):
        for i, _ in enumerate(getattr(model.siglip, tower).encoder.layers):
            hosts |= {f"siglip.{tower}.encoder.layers.{i}.self_attn.{p}_proj" for p in ("q", "k", "v", "out")}
    hosts |= {f"siglip.vision_model.head.{m}" for m in ("attention.out_proj", "mlp.fc1", "mlp.fc2")}
    hosts.add("siglip.text_model.head")
    return hosts


def _expected_trained(model) -> set[str]:
    """Everything outside the peft-wrapped encoders: the prompter, the contrastive head, SAM 2's prompt encoder,
    mask decoder and no-memory embedding, SigLIP's logit scale and bias."""
    return {
        n
        for n, _ in model.named_parameters()
        if ".lora_" not in n
        and (
            n.startswith(("prompter.", "decode_head.", "sam2.prompt_encoder.", "sam2.mask_decoder."))
            or n in {"sam2.no_memory_embedding", "siglip.logit_scale", "siglip.logit_bias"}
        )
    }


def _lora_size(base, r: int) -> int:
    if isinstance(base, torch.nn.Conv2d):
        return r * base.in_channels * base.kernel_size[0] * base.kernel_size[1] + base.out_channels * r
    return r * (base.in_features + base.out_features)


def test_lora_sits_on_exactly_the_official_targets(tiny2):
    hosts = {name for name, m in tiny2.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0}
    assert hosts == _expected_lora_hosts(tiny2)


def test_trainable_names_and_count_equal_the_official_set(tiny2):
    trained = {n for n, p in tiny2.named_parameters() if p.requires_grad}
    lora = {n for n in trained if ".lora_" in n}
    expected_trained, expected_hosts = _expected_trained(tiny2), _expected_lora_hosts(tiny2)
    assert trained - lora == expected_trained
    assert {re.sub(r"\.lora_[AB]\.default\.weight$", "", n) for n in lora} == expected_hosts
    modules = dict(tiny2.named_modules())
    expected = sum(_lora_size(modules[h].base_layer, LORA_R) for h in expected_hosts)
    expected += sum(p.numel() for n, p in tiny2.named_parameters() if n in expected_trained)
    assert sum(p.numel() for p in tiny2.parameters() if p.requires_grad) == expected
    assert not image_encoders_frozen(tiny2)


@pytest.mark.parametrize("mode", ["all", "all_but_image_encoders"])
def test_other_trainable_modes(mode):
    config = get_model_config("tiny2").model_copy(update={"trainable": mode})
    model = load_model(config, device="meta")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if mode == "all":
        assert not frozen
        return
    # frozen: exactly what encode_images uses, so cached image features stay valid through training
    feature_params = ("sam2.vision_encoder.", "sam2.mask_decoder.conv_s0.", "sam2.mask_decoder.conv_s1.",
                      "sam2.no_memory_embedding", "siglip.vision_model.")  # fmt: skip
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(feature_params)}
    assert image_encoders_frozen(model)
