import pytest
import torch
from transformers.models.sam.modeling_sam import SamVisionAttention

from rsrs.model.rsrefseg.sam import relative_position_embeddings
from tests.model.conftest import random_tiles


@pytest.mark.parametrize(("q_size", "k_size", "table_len"), [(14, 14, 27), (64, 64, 127), (8, 14, 27), (14, 8, 19)])
def test_relative_position_embeddings_equal_transformers_sam(q_size, k_size, table_len):
    rel_pos = torch.randn(table_len, 12, generator=torch.Generator().manual_seed(q_size * k_size))
    expected = SamVisionAttention.get_rel_pos(None, q_size, k_size, rel_pos)  # the method ignores self
    assert torch.equal(relative_position_embeddings(q_size, k_size, rel_pos), expected)


def test_sam_built_here_encodes_like_stock_transformers_sam(tiny):
    tiles = random_tiles(3, height=64, width=64).float() / 255
    pixels = torch.nn.functional.interpolate(tiles, size=(tiny.sam_image_size,) * 2)
    layers = [m for m in tiny.sam.modules() if isinstance(m, SamVisionAttention)]
    with torch.no_grad():
        ours = tiny.sam.vision_encoder(pixels).last_hidden_state
        for layer in layers:  # back to the stock method, which builds its index on the CPU
            del layer.get_rel_pos
        try:
            stock = tiny.sam.vision_encoder(pixels).last_hidden_state
        finally:
            for layer in layers:
                layer.get_rel_pos = relative_position_embeddings
    assert layers and torch.equal(ours, stock)


@pytest.mark.gpu
def test_predict_on_gpu_never_blocks_on_the_device_before_its_result():
    from rsrs.model import load_model

    model = load_model("tiny", device="cuda")
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
