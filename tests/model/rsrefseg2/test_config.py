"""RSRefSeg 2 configs: dispatch on ``architecture``, official defaults, checkpoints, missing weights."""

import pytest
import torch
from safetensors import safe_open

from rsrs.core.errors import ConfigError, WeightsNotFoundError
from rsrs.model import get_model_config, load_model, save_checkpoint
from rsrs.model.checkpoint import read_checkpoint_config
from rsrs.model.config import parse_model_config
from rsrs.model.rsrefseg.config import RSRefSegConfig
from rsrs.model.rsrefseg2.config import RSRefSeg2Config
from tests.model.conftest import random_tiles


def test_architecture_selects_the_schema():
    tiny2, tiny = get_model_config("tiny2"), get_model_config("tiny")
    assert isinstance(tiny2, RSRefSeg2Config) and tiny2.architecture == "rsrefseg2"
    assert isinstance(tiny, RSRefSegConfig) and tiny.architecture == "rsrefseg"
    with pytest.raises(ConfigError, match=r"missing required key 'sam2' in model config x\.yaml"):
        parse_model_config({"architecture": "rsrefseg2", "name": "n", "siglip": {}}, source="x.yaml")
    unknown = r"unknown key 'prompter\.heads' in model config x\.yaml; did you mean 'num_heads'\?"
    with pytest.raises(ConfigError, match=unknown):
        parse_model_config({**tiny2.model_dump(), "prompter": {"heads": 4}}, source="x.yaml")


def test_defaults_are_the_official_configuration():
    config = get_model_config("rsrefseg2-l")
    p = config.prompter
    assert (p.num_queries, p.num_prompts, p.num_heads, p.mlp_dim, p.internal_dim) == (3, 9, 8, 512, 512)
    assert (p.query_depth, p.image_depth, p.prompt_depth) == (2, 2, 2)
    assert (config.lora.r, config.lora.alpha, config.lora.dropout, config.trainable) == (16, 16, 0.0, "lora")
    assert config.siglip.text_length == 128 and config.siglip.padding == "longest"
    assert config.siglip.image_mean == config.siglip.image_std == (0.5, 0.5, 0.5)
    assert config.sam2.pretrained == "facebook/sam2.1-hiera-large"
    assert config.siglip.pretrained == "google/siglip2-so400m-patch16-512"


def test_checkpoint_round_trip_keeps_the_trained_parameters_and_batchnorm_statistics(tmp_path):
    model = load_model("tiny2", device="cpu")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.train()
        model(random_tiles(1, batch=2, height=64, width=64), ["pond", "road"])  # updates BatchNorm statistics
        model.eval()
    path = save_checkpoint(model, tmp_path / "ft.safetensors", config=model.config)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    stats = {f"prompter.dense_prompt_conv.1.{b}" for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert keys == {n for n, p in model.named_parameters() if p.requires_grad} | stats
    assert isinstance(read_checkpoint_config(path), RSRefSeg2Config)
    loaded = load_model(path, device="cpu")
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]), name
    tiles = random_tiles(2, batch=1, height=64, width=64)
    assert torch.equal(model.predict(tiles, ["pond"]), loaded.predict(tiles, ["pond"]))


def test_missing_pretrained_weights_name_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("RSRS_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError, match="facebook/sam2.1-hiera-tiny"):
        load_model("rsrefseg2-t", device="cpu")


def _word_tokenizer(folder) -> None:
    """A small word-level fast tokenizer saved as a pretrained one (stands in for SigLIP2's Gemma tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "the", "red", "car", "big", "pond", "road"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(folder)


def test_pretrained_backbones_and_tokenizer_load_from_a_local_weights_dir(tmp_path, monkeypatch):
    """The real loading path (from_pretrained on local directories) with tiny-sized backbones; the pretrained
    tokenizer pads a call's queries to the longest and truncates at ``text_length``."""
    from transformers import Sam2Model, SiglipModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RSRS_WEIGHTS_DIR", str(tmp_path / "weights"))
    random = load_model("tiny2", device="cpu", pretrained=False)
    sam2_src, siglip_src = Sam2Model._from_config(random.sam2.config), SiglipModel._from_config(random.siglip.config)
    sam2_src.save_pretrained(tmp_path / "weights" / "org" / "sam2-tiny")
    siglip_src.save_pretrained(tmp_path / "weights" / "org" / "siglip2-tiny")
    _word_tokenizer(tmp_path / "weights" / "org" / "siglip2-tiny")

    config = get_model_config("tiny2").model_copy(deep=True)
    config.sam2.pretrained, config.siglip.pretrained = "org/sam2-tiny", "org/siglip2-tiny"
    config.siglip.tokenizer, config.siglip.padding, config.siglip.text_length = "pretrained", "longest", 6
    model = load_model(config, device="cpu")

    qkv = model.sam2.vision_encoder.backbone.blocks[0].attn.qkv.base_layer.weight
    assert torch.equal(qkv, sam2_src.vision_encoder.backbone.blocks[0].attn.qkv.weight)
    assert torch.equal(model.sam2.no_memory_embedding, sam2_src.no_memory_embedding)
    fc1 = model.siglip.vision_model.head.mlp.fc1.base_layer.weight  # the vision pooling head is kept
    assert torch.equal(fc1, siglip_src.vision_model.head.mlp.fc1.weight)
    with torch.no_grad():
        text = model.encode_texts(["red car", "the big red car", "the big red car the big red car"])
    assert text.valid.sum(1).tolist() == [3, 5, 6]  # words + end of text, cut at text_length 6
    assert text.tokens.shape[1] == 6
