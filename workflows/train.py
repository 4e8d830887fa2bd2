"""``rsrs train CONFIG.yaml``: fine-tune RSRefSeg with exact resume, validation, and data parallelism.

One process per GPU under ``torchrun`` (DDP; gloo on CPU), else a single process. Every ``checkpoint_every`` steps
rank 0 writes ``checkpoints/step_N.safetensors`` and ``last.safetensors`` (DESIGN §4 format: trained parameters +
model config) and ``resume.pt`` (optimizer, scheduler, RNG, data position), all atomically, so ``--resume``
continues exactly as an uninterrupted run would. Validation runs every ``val_every`` steps; the best gIoU is kept
as ``best.safetensors``. Metrics are appended to ``metrics.jsonl`` (and TensorBoard when it is installed).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import click
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from rsrs.model import load_model, save_checkpoint
from rsrs.model.checkpoint import apply_checkpoint, checkpoint_names
from rsrs.model.errors import ConfigError
from rsrs.model.lora import image_encoders_frozen, mark_trainable
from rsrs.pipeline.datasets import open_dataset
from rsrs.workflows.evaluate import model_predictor, score_dataset
from rsrs.workflows.feature_cache import FeatureCache, image_feature_cache
from rsrs.workflows.metrics import summarize
from rsrs.workflows.train_config import TrainConfig, load_train_config
from rsrs.workflows.train_data import ReferringBatches, ResumableSampler

log = logging.getLogger(__name__)

SaveFn = Callable[[Path], None]  # writes the model's checkpoint to a path


@dataclass
class Progress:
    """Where training stands: what ``resume.pt`` stores besides optimizer, scheduler and RNG states."""

    step: int = 0
    epoch: int = 0
    epoch_position: int = 0  # samples of this epoch already consumed by each rank
    best_giou: float = -1.0


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0


def _init_distributed(device_kind: str) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class MetricLog:
    """Appends metric records to metrics.jsonl, and to TensorBoard when the package is installed."""

    def __init__(self, out_dir: Path, *, enabled: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        """Log one record (must hold 'step' and 'kind')."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, record["step"])


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    max_minutes: float | None = None,
    show_progress: bool = True,
) -> dict:
    """Run (or resume) training; returns a summary. ``stop_after`` ends the process early after that many steps
    of this invocation (an interruption, for tests and time-boxed jobs)."""
    device_kind = (
        "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    ddp = _init_distributed(device_kind)
    device = torch.device(f"cuda:{ddp.local_rank}") if device_kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir = Path(config.out_dir)
    if ddp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    resume_file = out_dir / "resume.pt"
    if resume and not resume_file.exists():
        raise ConfigError(f"--resume: no resume.pt in {out_dir}; start without --resume")
    if not resume and resume_file.exists():
        raise ConfigError(f"{out_dir} already holds a training run; pass --resume to continue it or set out_dir")

    spec = config.model.init_checkpoint or config.model.preset or config.model.config
    model = load_model(spec, device=device, dtype="float32").train()
    if config.model.trainable is not None:  # recorded in the config so checkpoints rebuild the same trained set
        mark_trainable(model, mode=config.model.trainable)
        model.config = model.config.model_copy(update={"trainable": config.model.trainable})
    model_config = model.config
    # Frozen weights a run starts from (an init checkpoint) are stored too: its config alone rebuilds them at init.
    also = checkpoint_names(config.model.init_checkpoint) if config.model.init_checkpoint else ()

    def save(path: Path) -> None:
        save_checkpoint(model, path, config=model_config, also=also)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.optim.lr, weight_decay=config.optim.weight_decay, betas=config.optim.betas
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(config.optim.warmup_steps, config.optim.max_steps)
    )
    state = Progress()
    torch.manual_seed(config.seed)
    if resume:
        saved = torch.load(resume_file, map_location="cpu", weights_only=False)
        apply_checkpoint(model, out_dir / "last.safetensors")
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"][min(ddp.rank, len(saved["rng"]) - 1)])
        state = Progress(**saved["progress"])
    net = model
    if ddp.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    train_reader = open_dataset(config.data.format, config.data.path, config.data.train_split)
    cache = None
    if config.data.cache_image_features:
        cache = _feature_cache(model, train_reader, config, ddp, autocast=use_bf16)
    train_set = ReferringBatches(
        train_reader, size=config.data.image_size, image_rows=cache.rows if cache is not None else None
    )
    val_reader = (
        open_dataset(config.data.format, config.data.path, config.data.val_split) if (config.data.val_split) else None
    )
    if len(train_set) < config.optim.batch_size * ddp.world:
        raise ConfigError(
            f"training split '{config.data.train_split}' has {len(train_set)} samples, fewer than one batch "
            f"({config.optim.batch_size} x {ddp.world} processes); lower optim.batch_size"
        )
    metrics = MetricLog(out_dir, enabled=ddp.is_main)
    bar = None
    if ddp.is_main and show_progress:
        from tqdm import tqdm

        bar = tqdm(total=config.optim.max_steps, initial=state.step, desc="train", unit="step")

    steps_here, window_start, window_samples = 0, time.perf_counter(), 0
    started = window_start
    while state.step < config.optim.max_steps:
        sampler = ResumableSampler(
            len(train_set),
            seed=config.seed,
            epoch=state.epoch,
            start=state.epoch_position,
            rank=ddp.rank,
            world=ddp.world,
        )
        loader = DataLoader(
            train_set,
            batch_size=config.optim.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=config.data.num_workers,
            persistent_workers=False,
        )
        for inputs, masks, sentences in loader:  # inputs: images, or rows of the feature cache
            if cache is not None:
                images = cache.features(inputs, device=device, dtype=model.dtype)
            else:
                images = inputs.to(device)
            masks = masks.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                output = net(images, list(sentences))  # logits B x 1 x H x W, and what the loss needs
            loss = model.loss(output, masks, bce_weight=config.loss.bce_weight, dice_weight=config.loss.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            if config.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            state.step += 1
            state.epoch_position += config.optim.batch_size
            steps_here += 1
            window_samples += config.optim.batch_size * ddp.world
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.total.item():.3f}")
            if state.step % config.log_every == 0:
                elapsed = time.perf_counter() - window_start
                metrics.write(
                    {
                        "kind": "train",
                        "step": state.step,
                        "loss": loss.total.item(),
                        **{name: term.item() for name, term in loss.terms.items()},
                        "lr": scheduler.get_last_lr()[0],
                        "samples_per_s": window_samples / max(elapsed, 1e-9),
                        "world_size": ddp.world,
                    }
                )
                window_start, window_samples = time.perf_counter(), 0
            last = state.step == config.optim.max_steps or _out_of_time(started, max_minutes, ddp, device)
            if val_reader is not None and (state.step % config.val_every == 0 or last):
                _validate_and_keep_best(model, val_reader, config, state, metrics, ddp, save)
            if state.step % config.checkpoint_every == 0 or last:
                _save_resume_point(save, optimizer, scheduler, state, ddp, out_dir)
            if last or (stop_after is not None and steps_here >= stop_after):
                break
        else:
            state.epoch += 1
            state.epoch_position = 0
            continue
        break
    if bar is not None:
        bar.close()
    if ddp.world > 1:
        # Free DDP (its reducer holds the process group and gradient buckets) and let every rank finish its work
        # before the group goes: a gloo group torn down with work in flight can deadlock its destructor.
        del net
        dist.barrier()
        dist.destroy_process_group()
    return {
        "step": state.step,
        "epoch": state.epoch,
        "best_giou": state.best_giou,
        "out_dir": str(out_dir),
        "world_size": ddp.world,
    }


def _feature_cache(model, reader, config: TrainConfig, ddp: Distributed, *, autocast: bool) -> FeatureCache:
    """The training split's image features, computed once by rank 0 (the other ranks then open its files)."""
    if not image_encoders_frozen(model):
        raise ConfigError(
            "data.cache_image_features needs both image encoders frozen, but this model trains them; "
            "set model.trainable: all_but_image_encoders"
        )
    build = partial(
        image_feature_cache,
        model,
        reader,
        size=config.data.image_size,
        out_dir=Path(config.out_dir),
        batch_size=config.optim.batch_size,
        autocast=autocast,
    )
    if ddp.is_main:
        cache = build(progress=True)
    if ddp.world > 1:
        dist.barrier()
    return cache if ddp.is_main else build(progress=False)


def _out_of_time(started: float, max_minutes: float | None, ddp: Distributed, device: torch.device) -> bool:
    """Whether the time box is spent (rank 0 decides, so every rank stops at the same step)."""
    if max_minutes is None:
        return False
    flag = torch.tensor([time.perf_counter() - started > 60 * max_minutes], dtype=torch.int32, device=device)
    if ddp.world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _validate_and_keep_best(
    model, reader, config: TrainConfig, state: Progress, metrics: MetricLog, ddp: Distributed, save: SaveFn
) -> None:
    if ddp.is_main:
        predictor = model_predictor(model, image_size=config.data.image_size)
        scores = score_dataset(predictor, reader, batch_size=config.optim.batch_size, limit=config.data.max_val_samples)
        report = summarize(scores)
        metrics.write({"kind": "val", "step": state.step, **report})
        if report["gIoU"] > state.best_giou:
            state.best_giou = report["gIoU"]
            save(Path(config.out_dir) / "best.safetensors")
    if ddp.world > 1:  # every rank keeps the same best score so resume files agree
        best = torch.tensor([state.best_giou], dtype=torch.float64)
        dist.broadcast(best, src=0)
        state.best_giou = float(best.item())


def _save_resume_point(save: SaveFn, optimizer, scheduler, state: Progress, ddp: Distributed, out_dir: Path) -> None:
    rng = _rng_state()
    if ddp.world > 1:
        gathered: list = [None] * ddp.world
        dist.all_gather_object(gathered, rng)
        rng_states = gathered
    else:
        rng_states = [rng]
    if ddp.is_main:
        (out_dir / "checkpoints").mkdir(exist_ok=True)
        save(out_dir / "checkpoints" / f"step_{state.step:07d}.safetensors")
        save(out_dir / "last.safetensors")
        _atomic_torch_save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_states,
                "progress": asdict(state),
            },
            out_dir / "resume.pt",
        )
    if ddp.world > 1:
        dist.barrier()


@click.command("train")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue the run in the config's out_dir from its last checkpoint.")
@click.option("--max-steps", type=int, default=None, help="Override optim.max_steps (e.g. a quick smoke run).")
@click.option(
    "--max-minutes", type=float, default=None, help="Stop (validate, checkpoint) once this much time has passed."
)
def train_command(config_path: str, resume: bool, max_steps: int | None, max_minutes: float | None) -> None:
    """Fine-tune a model on a referring dataset (see configs/train/ for examples).

    \b
    Single process:        rsrs train configs/train/synthetic-tiny.yaml
    Data-parallel (GPUs):  torchrun --nproc_per_node 4 $(which rsrs) train CONFIG.yaml
    Continue a run:        rsrs train CONFIG.yaml --resume

    Writes OUT_DIR/{last,best}.safetensors, checkpoints/step_N.safetensors, resume.pt and metrics.jsonl.
    """
    config = load_train_config(config_path)
    if max_steps is not None:
        config.optim.max_steps = max_steps
    summary = train(config, resume=resume, max_minutes=max_minutes)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(
            f"trained to step {summary['step']}; best val gIoU {summary['best_giou']:.4f}; "
            f"checkpoints in {summary['out_dir']}"
        )
