import pytest
import torch

from tests.model.conftest import random_tiles


def test_shapes_through_every_stage(tiny):
    tiles = random_tiles(0, batch=2, height=96, width=128)
    with torch.no_grad():
        images = tiny.encode_images(tiles)
        texts = tiny.encode_texts(["the red building", "ponds", "a road"])
        out = tiny.decode(images, texts)
    sam_cfg = tiny.sam.config
    grid = sam_cfg.vision_config.image_size // sam_cfg.vision_config.patch_size
    assert images.sam.shape == (2, sam_cfg.prompt_encoder_config.hidden_size, grid, grid)
    assert images.siglip.shape == (2, 27 * 27, tiny.siglip.config.vision_config.hidden_size)
    assert images.grid == (27, 27) and images.input_shape == (96, 128)
    assert texts.tokens.shape == (3, 64, tiny.siglip.config.text_config.hidden_size)
    assert texts.valid.shape == (3, 64) and texts.valid[:, 0].all() and not texts.valid[:, -1].any()
    assert texts.pooled.shape == (3, tiny.siglip.config.text_config.hidden_size)
    assert out.logits.shape == (2, 3, 96, 128)
    assert out.activation.shape == (2, 3, 27, 27)


def test_forward_is_differentiable_and_pairs_image_i_with_query_i(tiny):
    tiles = random_tiles(1, batch=2, height=64, width=64)
    tiny.train()
    try:
        out = tiny(tiles, ["pond", "building"])
        out.logits.mean().backward()
        grads = {n: p.grad for n, p in tiny.named_parameters() if p.requires_grad}
        frozen = [p.grad for p in tiny.parameters() if not p.requires_grad]
        alone = tiny(tiles[1:], ["building"]).logits
    finally:
        tiny.eval()
        tiny.zero_grad(set_to_none=True)
    assert out.logits.shape == (2, 1, 64, 64)
    torch.testing.assert_close(out.logits[1:], alone, rtol=1e-5, atol=1e-6)
    # Gradient reaches every trained part on the mask path (SAM's point/box embeddings and the IoU head are
    # trained by design but unused by RSRefSeg's prompts, so they get none) and no frozen parameter.
    on_path = [
        "prompter.",
        ".lora_A.",
        ".lora_B.",
        "sam.prompt_encoder.mask_embed.",
        "sam.mask_decoder.transformer.",
        "siglip.logit_scale",
        "siglip.logit_bias",
    ]
    for part in on_path:
        named = {n: g for n, g in grads.items() if part in n}
        assert named and all(g is not None for g in named.values()), part
    assert all(g is None for g in frozen)


def test_predict_with_q_queries_equals_q_single_query_calls(tiny):
    tiles = random_tiles(2, batch=3, height=80, width=80)
    queries = ["the large pond", "red-roofed buildings", "the road in the upper left"]
    together = tiny.predict(tiles, queries)
    alone = torch.cat([tiny.predict(tiles, [q]) for q in queries], dim=1)
    assert together.shape == (3, 3, 80, 80)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert together.min() >= 0 and together.max() <= 1


def test_image_encoders_run_once_per_tile_whatever_the_number_of_queries(tiny):
    calls = {"sam": 0, "siglip": 0}

    def counter(name):
        def hook(module, args, kwargs, output):
            pixel = args[0] if args else kwargs["pixel_values"]
            calls[name] += pixel.shape[0]

        return hook

    handles = [
        tiny.sam.vision_encoder.register_forward_hook(counter("sam"), with_kwargs=True),
        tiny.siglip.vision_model.register_forward_hook(counter("siglip"), with_kwargs=True),
    ]
    try:
        tiny.predict(random_tiles(3, batch=4, height=64, width=64), [f"query {i}" for i in range(5)])
    finally:
        for h in handles:
            h.remove()
    assert calls == {"sam": 4, "siglip": 4}


def test_predict_accepts_float_images_in_unit_range_like_uint8(tiny):
    tiles = random_tiles(4, batch=1, height=64, width=96)
    as_uint8 = tiny.predict(tiles, ["pond"])
    as_float = tiny.predict(tiles.float() / 255, ["pond"])
    torch.testing.assert_close(as_uint8, as_float)


def test_decode_in_small_chunks_equals_one_chunk(tiny):
    tiles = random_tiles(5, batch=2, height=64, width=64)
    with torch.no_grad():
        feats, texts = tiny.encode_images(tiles), tiny.encode_texts(["a", "b", "c"])
        torch.testing.assert_close(
            tiny.decode(feats, texts, max_pairs=1).logits, tiny.decode(feats, texts, max_pairs=64).logits
        )


def test_wrong_image_layout_is_rejected(tiny):
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        tiny.predict(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), ["pond"])


@pytest.mark.parametrize("pooling", ["last", "eos"])
def test_eos_pooling_makes_text_features_independent_of_padding(pooling):
    """'eos' masks padding out of the text encoder's attention: the padded length cannot change a query's
    features. SigLIP's own 'last' pooling reads a padding position that attends to all of them."""
    from rsrs.model import get_model_config, load_model

    features = []
    for length in (32, 64):
        config = get_model_config("tiny").model_copy(deep=True)
        config.siglip.text_pooling, config.siglip.text_length = pooling, length
        with torch.no_grad():
            text = load_model(config, device="cpu").encode_texts(["the leftmost car", "ponds"])
        features.append((text.pooled, text.tokens[:, :17]))  # "the leftmost car" + end of text: 17 real tokens
    (pooled_32, tokens_32), (pooled_64, tokens_64) = features
    same = torch.allclose(pooled_32, pooled_64, atol=1e-5) and torch.allclose(tokens_32, tokens_64, atol=1e-5)
    assert same == (pooling == "eos")


def test_the_position_map_learns_from_the_mask_loss():
    """With ``prompter.position_grid`` the query's position map is on the mask's path from the first step, though
    it starts at zero: the loss reaches its projection's weight and bias."""
    from rsrs.model import get_model_config, load_model

    config = get_model_config("tiny").model_copy(deep=True)
    config.prompter.position_grid = 3
    model = load_model(config, device="cpu").train()
    assert model.prompter.position.weight.abs().max() == 0
    model(random_tiles(5, batch=2, height=64, width=64), ["the leftmost pond", "the building"]).logits.mean().backward()
    assert model.prompter.position.weight.grad.abs().max() > 0
    assert model.prompter.position.bias.grad.abs().max() > 0
