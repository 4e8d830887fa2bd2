"""RSRefSeg 2 through the shared inference protocol, on the tiny2 preset."""

import pytest
import torch
import torch.nn.functional as F

from rsrs.model.preprocess import SAM_MEAN, SAM_STD
from rsrs.model.rsrefseg2.outputs import RSRefSeg2Output, Sam2ImageFeatures
from tests.model.conftest import random_tiles


def test_shapes_through_every_stage(tiny2):
    tiles = random_tiles(0, batch=2, height=96, width=128)
    with torch.no_grad():
        images = tiny2.encode_images(tiles)
        texts = tiny2.encode_texts(["the red building", "ponds", "a road"])
        out = tiny2.decode(images, texts)
    D = tiny2.sam2.config.mask_decoder_config.hidden_size  # 32 (256 at real size)
    C = tiny2.siglip.config.vision_config.hidden_size
    assert isinstance(images, Sam2ImageFeatures) and len(images) == 2
    assert images.sam.shape == (2, D, 8, 8)  # 128 px / 16
    assert images.sam_s1.shape == (2, D // 4, 16, 16) and images.sam_s0.shape == (2, D // 8, 32, 32)
    assert images.siglip.shape == (2, 8 * 8, C) and images.grid == (8, 8)  # 64 px / 8
    assert images.input_shape == (96, 128) and images.valid_shape == (96, 128)
    assert texts.tokens.shape == (3, 32, C) and texts.valid.shape == (3, 32) and texts.pooled.shape == (3, C)
    assert out.logits.shape == (2, 3, 96, 128)
    assert out.activation.shape == (2, 3, 32, 32)  # the dense prompt on SAM 2's mask-input grid


def test_image_features_are_sam2s_own_embeddings_and_the_siglip_tokens_of_the_normalised_square(tiny2):
    """SAM 2 sees the tile resized and zero-padded in [0, 1], then ImageNet-normalised: its features equal
    transformers' ``get_image_embeddings`` (FPN, conv_s0/conv_s1, no-memory embedding). SigLIP sees the same square
    normalised with its processor's statistics, then resized to its input size (bilinear, no antialiasing)."""
    tiles = random_tiles(1, batch=2, height=96, width=48)
    with torch.no_grad():
        feats = tiny2.encode_images(tiles)
        x = tiles.float() / 255
        x = F.interpolate(x, size=(128, 64), mode="bilinear", antialias=True)
        square = F.pad(x, (0, 64, 0, 0))
        mean, std = torch.tensor(SAM_MEAN)[:, None, None], torch.tensor(SAM_STD)[:, None, None]
        s0, s1, emb = tiny2.sam2.get_image_embeddings((square - mean) / std)
        siglip_in = F.interpolate((square - 0.5) / 0.5, size=(64, 64), mode="bilinear", align_corners=False)
        tokens = tiny2.siglip.vision_model(pixel_values=siglip_in).last_hidden_state
    torch.testing.assert_close(feats.sam, emb)
    torch.testing.assert_close(feats.sam_s0, s0)
    torch.testing.assert_close(feats.sam_s1, s1)
    torch.testing.assert_close(feats.siglip, tokens)
    assert feats.valid_shape == (128, 64)


def test_forward_is_differentiable_and_carries_what_the_loss_needs(tiny2):
    tiles = random_tiles(2, batch=2, height=64, width=64)
    tiny2.train()
    try:
        out = tiny2(tiles, ["pond", "building"])
        tiny2.loss(out, torch.zeros(2, 64, 64)).total.backward()
        grads = {n: p.grad for n, p in tiny2.named_parameters() if p.requires_grad}
        frozen = [p.grad for p in tiny2.parameters() if not p.requires_grad]
    finally:
        tiny2.zero_grad(set_to_none=True)
        tiny2.eval()
    assert isinstance(out, RSRefSeg2Output)
    assert out.logits.shape == (2, 1, 64, 64) and out.activation.shape == (2, 1, 32, 32)
    C = tiny2.siglip.config.text_config.hidden_size
    assert out.queries1.shape == out.queries2.shape == (2, 3, C) and out.patches.shape == (2, 64, C)
    # the gradient reaches every trained part on the loss's path, and no frozen parameter
    on_path = ["prompter.", ".lora_A.", ".lora_B.", "sam2.prompt_encoder.mask_embed.", "sam2.mask_decoder.transformer.",
               "sam2.mask_decoder.conv_s0.", "sam2.no_memory_embedding", "siglip.logit_scale", "siglip.logit_bias",
               "decode_head.logit_scale2", "decode_head.logit_bias2"]  # fmt: skip
    for part in on_path:
        named = {n: g for n, g in grads.items() if part in n and "siglip.vision_model.head." not in n}
        assert named and all(g is not None for g in named.values()), part
    # the vision pooling head is not run (its output is unused): its LoRA gets no gradient, as in the official model
    assert all(g is None for n, g in grads.items() if n.startswith("siglip.vision_model.head."))
    assert all(g is None for g in frozen)


def test_eval_forward_equals_decode_of_the_same_pair(tiny2):
    tiles = random_tiles(3, batch=2, height=64, width=80)
    with torch.no_grad():
        out = tiny2(tiles, ["pond", "building"])
        feats, texts = tiny2.encode_images(tiles), tiny2.encode_texts(["pond", "building"])
        logits, activation = tiny2.decode_pairs(feats, texts, torch.tensor([1]), torch.tensor([1]))
    torch.testing.assert_close(out.logits[1:, 0], logits)
    torch.testing.assert_close(out.activation[1:, 0], activation)


def test_predict_with_q_queries_equals_q_single_query_calls(tiny2):
    tiles = random_tiles(4, batch=3, height=80, width=80)
    queries = ["the large pond", "red-roofed buildings", "the road in the upper left"]
    together = tiny2.predict(tiles, queries)
    alone = torch.cat([tiny2.predict(tiles, [q]) for q in queries], dim=1)
    assert together.shape == (3, 3, 80, 80) and together.dtype == torch.float32
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert together.min() >= 0 and together.max() <= 1


def test_image_encoders_run_once_per_tile_whatever_the_number_of_queries(tiny2):
    calls = {"sam2": 0, "siglip": 0}

    def counter(name):
        def hook(module, args, kwargs, output):
            pixel = args[0] if args else kwargs["pixel_values"]
            calls[name] += pixel.shape[0]

        return hook

    handles = [
        tiny2.sam2.vision_encoder.register_forward_hook(counter("sam2"), with_kwargs=True),
        tiny2.siglip.vision_model.register_forward_hook(counter("siglip"), with_kwargs=True),
    ]
    try:
        tiny2.predict(random_tiles(5, batch=4, height=64, width=64), [f"query {i}" for i in range(5)])
    finally:
        for h in handles:
            h.remove()
    assert calls == {"sam2": 4, "siglip": 4}


def test_decode_in_small_chunks_equals_one_chunk(tiny2):
    tiles = random_tiles(6, batch=2, height=64, width=64)
    with torch.no_grad():
        feats, texts = tiny2.encode_images(tiles), tiny2.encode_texts(["a", "b", "c"])
        one, many = tiny2.decode(feats, texts, max_pairs=64), tiny2.decode(feats, texts, max_pairs=1)
    torch.testing.assert_close(many.logits, one.logits)
    torch.testing.assert_close(many.activation, one.activation)


def test_predict_accepts_float_images_in_unit_range_like_uint8(tiny2):
    tiles = random_tiles(7, batch=1, height=64, width=96)
    torch.testing.assert_close(tiny2.predict(tiles, ["pond"]), tiny2.predict(tiles.float() / 255, ["pond"]))


def test_texts_pad_to_the_longest_query_and_stop_at_the_position_limit():
    """RSRefSeg 2 pads a call's queries to the longest one (the official tokenisation); text longer than the
    text encoder's positions is cut there (the official code fails on it)."""
    from rsrs.model import get_model_config, load_model

    config = get_model_config("tiny2").model_copy(deep=True)
    config.siglip.padding, config.siglip.text_length = "longest", 128
    model = load_model(config, device="cpu")
    with torch.no_grad():
        short = model.encode_texts(["ab", "abcd"])
        long = model.encode_texts(["x" * 100])
    assert short.tokens.shape[1] == 5 and short.valid.sum(1).tolist() == [3, 5]  # bytes + end of text
    assert long.tokens.shape[1] == model.siglip.config.text_config.max_position_embeddings == 32


def test_forward_rejects_unpaired_inputs(tiny2):
    with pytest.raises(ValueError, match="pairs image i with query i"):
        tiny2(random_tiles(8, batch=2, height=64, width=64), ["only one"])


@pytest.mark.gpu
def test_predict_on_gpu_never_blocks_on_the_device_before_its_result():
    from rsrs.model import load_model

    model = load_model("tiny2", device="cuda")
    tiles = random_tiles(0).cuda()
    text = model.encode_texts(["the pond"])
    model.predict(tiles, text)  # first call: allocator and kernel set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        probs = model.predict(tiles, text)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert probs.shape == (2, 1, 96, 128) and probs.is_cuda
