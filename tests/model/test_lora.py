"""The trainable set must be exactly DESIGN §4's, computed here independently from the module tree; merged
adapters (inference) predict as the adapters do without running them."""

import copy
import re

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from rsrs.model import load_model
from rsrs.model.acceleration import accelerate
from rsrs.model.lora import merge_lora_adapters
from tests.model.conftest import random_tiles

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


def tiny_with_trained_adapters() -> nn.Module:
    """A fresh tiny model whose LoRA adapters change its outputs (peft starts every lora_B at zero)."""
    model = load_model("tiny", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=g))
    return model


def adapter_calls(model: nn.Module) -> list[int]:
    """A counter of calls into ``model``'s lora_A modules, kept up to date by forward hooks."""
    calls = [0]
    for layer in model.modules():
        if isinstance(layer, BaseTunerLayer):
            for adapter in layer.lora_A.values():
                adapter.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def lora_merged(model: nn.Module) -> set[bool]:
    """Whether each LoRA layer of ``model`` is merged, as a set: {True} when every adapter is in its base weight."""
    return {m.merged for m in model.modules() if isinstance(m, BaseTunerLayer)}


def features_and_logits(model: nn.Module, tiles: torch.Tensor, queries: list[str]) -> torch.Tensor:
    """SAM's and SigLIP's image features and the mask logits, flattened into one tensor."""
    with torch.inference_mode():
        images = model.encode_images(tiles)
        logits = model.decode(images, model.encode_texts(queries)).logits
    return torch.cat([images.sam.flatten(), images.siglip.flatten(), logits.flatten()])


def test_merged_adapters_compute_what_running_them_does_without_running_them():
    model = tiny_with_trained_adapters()
    tiles, queries = random_tiles(0), ["the red-roofed buildings", "the pond"]
    without_adapters = features_and_logits(load_model("tiny", device="cpu"), tiles, queries)
    running = adapter_calls(model)
    expected = features_and_logits(model, tiles, queries)
    assert running[0] > 0
    assert (expected - without_adapters).abs().max() > 0.1  # the adapters matter: merging them must keep them

    layers = sum(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert merge_lora_adapters(model) == layers > 0
    assert merge_lora_adapters(model) == 0  # merged once only
    running[0] = 0
    torch.testing.assert_close(features_and_logits(model, tiles, queries), expected, atol=1e-4, rtol=1e-4)
    assert running[0] == 0


@pytest.mark.parametrize("merge_lora", [True, False])
def test_accelerate_merges_lora_unless_told_not_to(merge_lora):
    model = tiny_with_trained_adapters()
    reference = copy.deepcopy(model)
    tiles, queries = random_tiles(1), ["the road"]
    accelerate(model, compile=False, merge_lora=merge_lora)
    assert lora_merged(model) == {merge_lora}
    torch.testing.assert_close(
        features_and_logits(model, tiles, queries), features_and_logits(reference, tiles, queries), atol=1e-3, rtol=1e-3
    )
