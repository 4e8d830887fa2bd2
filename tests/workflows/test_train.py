import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from rsrs.core.errors import ConfigError
from rsrs.model import get_model_config, load_model
from rsrs.model.rsrefseg2.official import official_state_dict
from rsrs.pipeline.datasets import open_dataset
from rsrs.pipeline.synth import write_chip_dataset
from rsrs.workflows.cli import cli
from rsrs.workflows.feature_cache import image_feature_cache
from rsrs.workflows.metrics import summarize
from rsrs.workflows.scoring import image_to_tensor, model_predictor, score_dataset
from rsrs.workflows.train import train
from rsrs.workflows.train_config import load_train_config
from rsrs.workflows.train_data import ReferringBatches
from rsrs.workflows.train_distributed import init_distributed


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chips")
    write_chip_dataset(folder, count=40, chip_size=96, seed=0)
    return folder / "manifest.jsonl"


def _config(tmp_path: Path, chips: Path, **overrides) -> Path:
    config = {
        "model": {"preset": "tiny"},
        "data": {"path": str(chips), "image_size": 96, "num_workers": 0, "max_val_samples": 8},
        "optim": {"lr": 3e-3, "batch_size": 4, "max_steps": 6, "warmup_steps": 2},
        "out_dir": str(tmp_path / "run"),
        "checkpoint_every": 3,
        "val_every": 3,
        "log_every": 1,
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            config[section][field] = value
        else:
            config[section] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _records(out_dir: Path, kind: str) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, chips):
    whole = load_train_config(_config(tmp_path / "a", chips, **{"data.num_workers": 2}))
    train(whole, show_progress=False)

    parts = load_train_config(_config(tmp_path / "b", chips, **{"data.num_workers": 2}))
    first = train(parts, stop_after=4, show_progress=False)  # killed after step 4; last resume point is 3
    assert first["step"] == 4
    shutil.copy(
        Path(parts.out_dir) / "checkpoints" / "step_0000003.safetensors", Path(parts.out_dir) / "last.safetensors"
    )
    second = train(parts, resume=True, show_progress=False)
    assert second["step"] == 6

    a = load_file(Path(whole.out_dir) / "last.safetensors")
    b = load_file(Path(parts.out_dir) / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed_losses = [r["loss"] for r in _records(Path(parts.out_dir), "train") if r["step"] > 3][-3:]
    whole_losses = [r["loss"] for r in _records(Path(whole.out_dir), "train") if r["step"] > 3]
    assert resumed_losses == whole_losses


def test_relative_paths_in_a_training_config_resolve_against_its_folder(tmp_path, chips):
    folder = tmp_path / "configs"
    relative = {"data.path": f"../chips/{chips.name}", "model.init_checkpoint": "w/best.safetensors"}
    path = _config(folder, chips, **relative)
    text = yaml.safe_load(path.read_text())
    del text["out_dir"]  # the default, runs/train, is relative too
    path.write_text(yaml.safe_dump(text))
    config = load_train_config(path)
    assert config.data.path == str(tmp_path / "chips" / chips.name)
    assert config.model.init_checkpoint == str(folder / "w" / "best.safetensors")
    assert config.out_dir == str(folder / "runs" / "train")


def test_checkpoints_are_loadable_models_and_best_follows_giou(tmp_path, chips):
    config = load_train_config(_config(tmp_path, chips))
    summary = train(config, show_progress=False)
    out = Path(config.out_dir)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_0000003.safetensors",
        "step_0000006.safetensors",
    ]
    vals = _records(out, "val")
    assert [v["step"] for v in vals] == [3, 6]
    assert summary["best_giou"] == max(v["gIoU"] for v in vals)
    model = load_model(out / "best.safetensors", device="cpu")
    assert model.predict(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["pond"]).shape == (1, 1, 32, 32)


def test_training_tiny_lowers_the_loss_and_raises_iou_on_training_chips(tmp_path, chips):
    steps = 60
    path = _config(
        tmp_path,
        chips,
        **{
            "model.trainable": "all",
            "optim.max_steps": steps,
            "optim.warmup_steps": 5,
            "data.val_split": "train",
            "data.max_val_samples": 32,
        },
        checkpoint_every=steps,
        val_every=steps,
        log_every=5,
    )
    config = load_train_config(path)
    reader = open_dataset("manifest", chips, "train")
    before_model = load_model("tiny", device="cpu")
    before = summarize(score_dataset(model_predictor(before_model, image_size=96), reader, limit=32))
    train(config, show_progress=False)
    trained = load_model(Path(config.out_dir) / "last.safetensors", device="cpu")
    after = summarize(score_dataset(model_predictor(trained, image_size=96), reader, limit=32))
    losses = [r["loss"] for r in _records(Path(config.out_dir), "train")]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    assert after["gIoU"] > before["gIoU"] + 0.1, (before, after)


def test_existing_run_needs_resume_and_bad_keys_are_named(tmp_path, chips):
    config = load_train_config(_config(tmp_path, chips, **{"optim.max_steps": 1}))
    train(config, show_progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(config, show_progress=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "data": {"path": "x"}, "optim": {"learning_rate": 1}}))
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_train_config(bad)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"model": {"preset": "rsrefseg2-l", "init_checkpoint": "rrsisd.bin"},
                                     "data": {"path": "x"}}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"rrsisd.bin' is neither a .safetensors .* released RSRefSeg 2 file"):
        load_train_config(other)


def test_train_cli_runs_a_short_job(tmp_path, chips):
    path = _config(tmp_path, chips)
    result = CliRunner().invoke(cli, ["train", str(path), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "trained to step 2" in result.output
    assert (tmp_path / "run" / "last.safetensors").exists()


@pytest.mark.slow  # half a minute on 2 cores; the DDP gradients test below runs by default
def test_data_parallel_under_torchrun_with_two_gloo_processes(tmp_path, chips):
    path = _config(tmp_path, chips, **{"optim.max_steps": 4})
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            shutil.which("rsrs", path=Path(sys.executable).parent) or shutil.which("rsrs"),  # this venv's first
            "train",
            str(path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = _records(tmp_path / "run", "train")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["world_size"] == 2 for r in records)
    state = torch.load(tmp_path / "run" / "resume.pt", weights_only=False)
    assert state["progress"]["step"] == 4 and len(state["rng"]) == 2


def _batch(chips: Path, rows: slice) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Training samples ``rows`` of the chips, as rsrs train batches them (image, mask, sentence)."""
    reader = ReferringBatches(open_dataset("manifest", chips, "train"), size=96)
    items = [reader[i] for i in range(len(reader))[rows]]
    return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]), [i[2] for i in items]


def _gradients(model, chips: Path, rows: slice) -> dict[str, torch.Tensor]:
    images, masks, sentences = _batch(chips, rows)
    loss = model.loss(model(images, sentences), masks)
    loss.total.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU where none is visible")
def test_training_on_cuda_without_a_gpu_is_one_line():
    with pytest.raises(ConfigError, match=r"^device 'cuda' was asked for but no CUDA GPU is visible; use device"):
        init_distributed("cuda")


def _ddp_rank(rank: int, chips: Path, out: Path, port: int) -> None:
    """One of two gloo ranks: rsrs's own set-up and DDP wrapper, half of an 8-sample batch each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0")
    ddp = init_distributed("cpu")
    model = load_model("tiny", device="cpu", dtype="float32").train()
    net = ddp.wrap(model)
    images, masks, sentences = _batch(chips, slice(rank, 8, 2))  # how ResumableSampler deals a batch out
    model.loss(net(images, sentences), masks).total.backward()  # DDP averages the ranks' gradients
    if ddp.is_main:
        torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out)
    del net
    ddp.shut_down()


def test_ddp_gradients_of_two_gloo_ranks_equal_one_process_at_twice_the_batch(tmp_path, chips):
    """What makes data-parallel training equal to one process at the global batch: the averaged gradient."""
    out = tmp_path / "ddp-grads.pt"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(chips, out, port), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    single = _gradients(load_model("tiny", device="cpu", dtype="float32").train(), chips, slice(0, 8))
    assert ddp.keys() == single.keys() and len(single) > 100
    flat = torch.cat([single[k].flatten() for k in single])
    diff = torch.cat([(ddp[k] - single[k]).flatten() for k in single])
    assert flat.abs().max() > 0  # a gradient to compare
    assert diff.norm() < 1e-4 * flat.norm()  # equal up to float rounding (sums in another order)


@pytest.mark.parametrize("preset", ["tiny", "tiny2"])
def test_cached_features_are_what_the_image_encoders_compute_and_follow_their_weights(tmp_path, chips, preset):
    model = load_model(preset, device="cpu", dtype="float32")
    reader = open_dataset("manifest", chips, "train")
    cache = image_feature_cache(model, reader, size=96, out_dir=tmp_path, batch_size=4, progress=False)
    n_images = len(next(iter(cache.arrays.values())))
    assert sorted(set(cache.rows)) == list(range(n_images))
    assert n_images < len(reader)  # chips carry several expressions; each image is encoded once

    picks = [0, 1, len(reader) - 1]
    cached = cache.features(
        torch.tensor([cache.rows[i] for i in picks]), device=torch.device("cpu"), dtype=torch.float32
    )
    with torch.no_grad():
        direct = model.encode_images(torch.stack([image_to_tensor(reader[i].image, (96, 96)) for i in picks]))
    assert type(cached) is type(direct) and set(cache.arrays) >= {"sam", "siglip"}
    for name in cache.arrays:  # every tensor of the features (RSRefSeg 2 adds SAM 2's high-resolution maps)
        torch.testing.assert_close(getattr(cached, name), getattr(direct, name), rtol=1e-5, atol=1e-6)
    assert (cached.grid, cached.input_shape, cached.valid_shape) == (direct.grid, (96, 96), direct.valid_shape)

    written = (tmp_path / "image_features" / "sam.npy").stat().st_mtime_ns
    image_feature_cache(model, reader, size=96, out_dir=tmp_path, batch_size=4, progress=False)
    assert (tmp_path / "image_features" / "sam.npy").stat().st_mtime_ns == written  # same fingerprint: reused
    sam_encoder = model.trainable_set.image_encoders[0]  # SAM's (or SAM 2's) vision encoder
    first = next(
        p
        for n, p in model.named_parameters()
        if n.startswith(sam_encoder) and n.endswith("patch_embed.projection.weight")
    )
    with torch.no_grad():
        first.mul_(2)
    rebuilt = image_feature_cache(model, reader, size=96, out_dir=tmp_path, batch_size=4, progress=False)
    assert not np.array_equal(rebuilt.arrays["sam"][0], cached.sam[0].numpy())


def test_a_cache_whose_writing_failed_says_where_in_one_line_and_is_computed_again(tmp_path, chips):
    from rsrs.core.errors import OutputError

    model = load_model("tiny", device="cpu", dtype="float32")
    reader = open_dataset("manifest", chips, "train")
    image_feature_cache(model, reader, size=64, out_dir=tmp_path, batch_size=4, progress=False)  # an older cache
    in_the_way = tmp_path / "image_features" / "sam.npy"
    in_the_way.unlink()
    in_the_way.mkdir()  # where the new cache's SAM features go
    with pytest.raises(OutputError, match=r"cannot write .*image_features/sam.npy: Is a directory"):
        image_feature_cache(model, reader, size=96, out_dir=tmp_path, batch_size=2, progress=False)
    assert not (tmp_path / "image_features" / "meta.json").exists()  # neither the old cache nor half of the new
    in_the_way.rmdir()
    again = image_feature_cache(model, reader, size=96, out_dir=tmp_path, batch_size=2, progress=False)
    fresh = image_feature_cache(model, reader, size=96, out_dir=tmp_path / "fresh", batch_size=2, progress=False)
    for name in fresh.arrays:
        np.testing.assert_array_equal(again.arrays[name], fresh.arrays[name])


def test_training_on_cached_features_follows_training_on_images(tmp_path, chips):
    runs = {}
    for cached in (False, True):
        overrides = {"model.trainable": "all_but_image_encoders", "data.cache_image_features": cached}
        config = load_train_config(_config(tmp_path / str(cached), chips, **overrides))
        train(config, show_progress=False)
        runs[cached] = Path(config.out_dir)
    losses = {cached: [r["loss"] for r in _records(out, "train")] for cached, out in runs.items()}
    assert len(losses[True]) == 6
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    plain, fast = load_file(runs[False] / "last.safetensors"), load_file(runs[True] / "last.safetensors")
    assert plain.keys() == fast.keys()
    assert not any(k.startswith(("sam.vision_encoder.", "siglip.vision_model.")) for k in fast)
    assert any(k.startswith("siglip.text_model.") for k in fast)
    for key in fast:
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-4, atol=1e-5)
    assert (runs[True] / "image_features" / "meta.json").exists()


def test_cached_features_need_frozen_image_encoders(tmp_path, chips):
    config = load_train_config(
        _config(tmp_path, chips, **{"model.trainable": "all", "data.cache_image_features": True})
    )
    with pytest.raises(ConfigError, match="trainable: all_but_image_encoders"):
        train(config, show_progress=False)


def test_a_run_from_a_released_pth_keeps_the_trained_tensors_it_freezes(tmp_path, chips):
    """Fine-tuning a released RSRefSeg 2 file (tiny2 in the official layout here) with its image encoders frozen: the
    run's checkpoints carry the file's image-encoder LoRA, which the preset alone would rebuild at init."""
    source = load_model(get_model_config("tiny2").model_copy(update={"init_seed": 3}), device="cpu")
    released = tmp_path / "rrsisd.pth"
    torch.save({"state_dict": official_state_dict(source)}, released)
    model = {"preset": "tiny2", "init_checkpoint": str(released), "trainable": "all_but_image_encoders"}
    tuned = load_train_config(_config(tmp_path / "tuned", chips, model=model, **{"optim.max_steps": 2}))
    train(tuned, show_progress=False)
    start, at_init = source.state_dict(), load_model("tiny2", device="cpu").state_dict()
    lora = [k for k in start if ".lora_A." in k and k.startswith(("sam2.vision_encoder.", "siglip.vision_model."))]
    assert lora and all(not torch.equal(start[k], at_init[k]) for k in lora)
    loaded = load_model(Path(tuned.out_dir) / "last.safetensors", device="cpu").state_dict()
    for key in lora:
        torch.testing.assert_close(loaded[key], start[key], rtol=0, atol=0)
    prompter = [k for k in start if k.startswith("prompter.") and start[k].is_floating_point()]
    assert any(not torch.equal(loaded[k], start[k]) for k in prompter)  # what it trained moved on from the file


def test_a_run_from_an_init_checkpoint_keeps_the_weights_it_freezes(tmp_path, chips):
    """Fine-tuning a fully trained checkpoint with its image encoders frozen: the files the run writes carry the
    image encoders it started from (its config alone would rebuild them at random init), so they load as trained."""
    full = load_train_config(_config(tmp_path / "full", chips, **{"model.trainable": "all", "optim.max_steps": 3}))
    train(full, show_progress=False)
    start = load_file(Path(full.out_dir) / "last.safetensors")
    model = {"preset": "tiny", "init_checkpoint": str(Path(full.out_dir) / "last.safetensors"),
             "trainable": "all_but_image_encoders"}  # fmt: skip
    tuned = load_train_config(_config(tmp_path / "tuned", chips, model=model, **{"optim.max_steps": 3}))
    train(tuned, show_progress=False)
    encoders = [k for k in start if k.startswith(("sam.vision_encoder.", "siglip.vision_model."))]
    at_init = dict(load_model("tiny", device="cpu").named_parameters())
    assert any(not torch.equal(start[k], at_init[k]) for k in encoders)  # the first run did change them
    for name in ("last", "best"):
        loaded = dict(load_model(Path(tuned.out_dir) / f"{name}.safetensors", device="cpu").named_parameters())
        for key in encoders:
            torch.testing.assert_close(loaded[key].detach(), start[key], rtol=0, atol=0)
