"""Real-size presets built at random init on the meta device: architecture and parameter counts.

Reference counts: SAM ViT-B 93.7M and ViT-L 312.3M parameters (Meta's release), SigLIP so400m/14 vision tower
428M with its pooling head (which RSRefSeg drops: 413.0M) and text tower 449.7M.
"""

import pytest

from rsrs.model import list_models, load_model

EXPECTED = {
    # preset: (SAM, SigLIP vision, SigLIP text, prompter, trainable, total incl. LoRA)
    "rsrefseg-b": (93_735_728, 412_987_248, 449_734_896, 2_132_480, 16_613_170, 969_006_482),
    "rsrefseg-l": (312_343_088, 412_987_248, 449_734_896, 2_132_480, 20_549_426, 1_191_550_098),
}


def _base(module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if ".lora_" not in n)


def test_presets_listed():
    assert {"tiny", "rsrefseg-b", "rsrefseg-l"} <= set(list_models())


@pytest.mark.parametrize(
    "preset", list(EXPECTED), ids=[f"{k}-total-{v[-1]:,}-trainable-{v[-2]:,}" for k, v in EXPECTED.items()]
)
def test_real_size_preset_on_meta_device_has_the_published_sizes(preset):
    model = load_model(preset, device="meta")
    sam, vision, text, prompter, trainable, total = EXPECTED[preset]
    assert _base(model.sam) == sam
    assert _base(model.siglip.vision_model) == vision
    assert _base(model.siglip.text_model) == text
    assert _base(model.prompter) == prompter
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert sum(p.numel() for p in model.parameters()) == total
    assert model.siglip_grid == (27, 27) and model.siglip_image_size == 384 and model.sam_image_size == 1024
    assert model.sam.config.prompt_encoder_config.hidden_size == 256
