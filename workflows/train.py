"""``rsrs train CONFIG.yaml``: fine-tune a model on a referring dataset, single-process or under torchrun.

AdamW with linear warm-up and cosine decay, the model's own loss (BCE + Dice for RSRefSeg, plus the query and
contrastive terms for RSRefSeg 2), bf16 autocast on GPU, gradient clipping. Rank 0 writes
``checkpoints/step_N.safetensors``, ``last.safetensors``, ``best.safetensors`` (by validation gIoU), ``resume.pt``
(optimizer, scheduler, RNG, data position), all atomically, so ``--resume`` continues exactly as an uninterrupted
run would; and ``metrics.jsonl`` (plus TensorBoard when installed). The pieces:
:mod:`~rsrs.workflows.train_distributed` (ranks), :mod:`~rsrs.workflows.train_state` (progress, schedule, resume
point, metrics), :mod:`~rsrs.workflows.train_data` (splits and batches).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from rsrs.core.errors import ConfigError
from rsrs.model import load_model, save_checkpoint
from rsrs.model.checkpoint import apply_checkpoint, checkpoint_names
from rsrs.model.lora import mark_trainable
from rsrs.model.losses import LossOutput
from rsrs.model.rsrefseg2.config import OFFICIAL_SUFFIXES
from rsrs.model.rsrefseg2.official import load_official_checkpoint
from rsrs.workflows.metrics import summarize
from rsrs.workflows.scoring import model_predictor, score_dataset
from rsrs.workflows.train_config import TrainConfig, load_train_config
from rsrs.workflows.train_data import TrainingData, open_training_data
from rsrs.workflows.train_distributed import Distributed, init_distributed
from rsrs.workflows.train_state import RESUME, MetricLog, Progress, load_resume_point, lr_schedule, save_resume_point

SaveFn = Callable[[Path], None]  # writes the model's checkpoint to a path


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
    ddp = init_distributed(config.device)
    out_dir = _out_dir(config, ddp, resume=resume)
    model, save = _model(config, ddp.device)
    opt = _Optimisation.start(model, config, ddp)
    torch.manual_seed(config.seed)
    state = Progress()
    if resume:
        apply_checkpoint(model, out_dir / "last.safetensors")
        state = load_resume_point(out_dir, optimizer=opt.optimizer, scheduler=opt.scheduler, ddp=ddp)
    data = open_training_data(config, model, ddp, autocast=opt.bf16)
    metrics = MetricLog(out_dir, enabled=ddp.is_main)
    bar = _progress_bar(config, state, enabled=ddp.is_main and show_progress)
    started, steps_here, throughput = time.perf_counter(), 0, _Throughput()
    while state.step < config.optim.max_steps:
        for inputs, masks, sentences in data.epoch(state, ddp):
            loss = opt.step(data.images(inputs, device=ddp.device, dtype=model.dtype), masks, list(sentences))
            state.step, state.epoch_position, steps_here = (
                state.step + 1,
                state.epoch_position + len(masks),
                steps_here + 1,
            )
            throughput.add(len(masks) * ddp.world)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.total.item():.3f}")
            if state.step % config.log_every == 0:
                terms = {name: term.item() for name, term in loss.terms.items()}
                metrics.write({"kind": "train", "step": state.step, "loss": loss.total.item(), **terms,
                               "lr": opt.scheduler.get_last_lr()[0], "samples_per_s": throughput.take(),
                               "world_size": ddp.world})  # fmt: skip
            last = state.step == config.optim.max_steps or (
                max_minutes is not None and ddp.decide(time.perf_counter() - started > 60 * max_minutes)
            )
            if data.val is not None and (state.step % config.val_every == 0 or last):
                _validate_and_keep_best(model, data, state, metrics, ddp, save)
            if state.step % config.checkpoint_every == 0 or last:
                save_resume_point(out_dir, save=save, optimizer=opt.optimizer, scheduler=opt.scheduler, state=state,
                                  ddp=ddp)  # fmt: skip
            if last or (stop_after is not None and steps_here >= stop_after):
                break
        else:  # the epoch ran out: the next one starts at its beginning
            state.epoch, state.epoch_position = state.epoch + 1, 0
            continue
        break
    if bar is not None:
        bar.close()
    opt.release()  # DDP's reducer holds the process group: free it before the group goes
    ddp.shut_down()
    return {"step": state.step, "epoch": state.epoch, "best_giou": state.best_giou, "out_dir": str(out_dir),
            "world_size": ddp.world}  # fmt: skip


@dataclass
class _Optimisation:
    """The model as trained (DDP-wrapped under torchrun), its optimizer and schedule, and one training step."""

    model: torch.nn.Module
    net: torch.nn.Module | None  # the model, DDP-wrapped under torchrun
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    device: torch.device
    bf16: bool  # bf16 autocast (the weights stay float32)

    @classmethod
    def start(cls, model: torch.nn.Module, config: TrainConfig, ddp: Distributed) -> _Optimisation:
        """AdamW over the trained parameters, linear warm-up then cosine decay."""
        params = [p for p in model.parameters() if p.requires_grad]
        optim = config.optim
        optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(optim.warmup_steps, optim.max_steps))
        bf16 = config.precision == "bf16" or (config.precision == "auto" and ddp.device.type == "cuda")
        return cls(model, ddp.wrap(model), params, optimizer, scheduler, config, ddp.device, bf16)

    def step(self, images, masks: torch.Tensor, sentences: list[str]) -> LossOutput:
        """One optimisation step on a batch: images (or their cached features), masks B x H x W, sentences."""
        assert self.net is not None
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            output = self.net(images, sentences)  # logits B x 1 x H x W, and what the model's loss needs
        weights = self.config.loss
        loss = self.model.loss(
            output, masks.to(self.device), bce_weight=weights.bce_weight, dice_weight=weights.dice_weight
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        if self.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss

    def release(self) -> None:
        """Drop the DDP wrapper."""
        self.net = None


def _out_dir(config: TrainConfig, ddp: Distributed, *, resume: bool) -> Path:
    """The run folder, checked against ``--resume`` (a new run never continues, nor clobbers, an old one)."""
    out_dir = Path(config.out_dir)
    if ddp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if resume and not (out_dir / RESUME).exists():
        raise ConfigError(f"--resume: no {RESUME} in {out_dir}; start without --resume")
    if not resume and (out_dir / RESUME).exists():
        raise ConfigError(f"{out_dir} already holds a training run; pass --resume to continue it or set out_dir")
    return out_dir


def _model(config: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, SaveFn]:
    """The model to train (float32, train mode, its trained set) and how to save its checkpoints."""
    model, also = _starting_model(config, device)
    model.train()
    if config.model.trainable is not None:  # recorded in the config so checkpoints rebuild the same trained set
        mark_trainable(model, mode=config.model.trainable)
        model.config = model.config.model_copy(update={"trainable": config.model.trainable})
    model_config = model.config

    def save(path: Path) -> None:
        save_checkpoint(model, path, config=model_config, also=also)

    return model, save


def _starting_model(config: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, Collection[str]]:
    """The model a run starts from (float32), and the tensors its init checkpoint set that every checkpoint of the
    run stores even where they stay frozen, as the model's config alone rebuilds them at init: all of an rsrs
    checkpoint's, and what official training changed in a released RSRefSeg 2 file (its base backbones are the
    preset's own pretrained ones)."""
    init = config.model.init_checkpoint
    base = config.model.preset or config.model.config
    if init is None:
        return load_model(base, device=device, dtype="float32"), ()
    if Path(init).suffix in OFFICIAL_SUFFIXES:
        model = load_model(base, device=device, dtype="float32")
        return model, load_official_checkpoint(model, init).trained
    return load_model(init, device=device, dtype="float32"), checkpoint_names(init)


class _Throughput:
    """Samples per second since the last :meth:`take`."""

    def __init__(self) -> None:
        self.since, self.samples = time.perf_counter(), 0

    def add(self, samples: int) -> None:
        self.samples += samples

    def take(self) -> float:
        rate = self.samples / max(time.perf_counter() - self.since, 1e-9)
        self.since, self.samples = time.perf_counter(), 0
        return rate


def _progress_bar(config: TrainConfig, state: Progress, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=config.optim.max_steps, initial=state.step, desc="train", unit="step")


def _validate_and_keep_best(
    model, data: TrainingData, state: Progress, metrics: MetricLog, ddp: Distributed, save: SaveFn
) -> None:
    """Score the validation split (rank 0) and keep the best checkpoint by gIoU; every rank learns the best."""
    config = data.config
    if ddp.is_main:
        predictor = model_predictor(model, image_size=config.data.image_size)
        scores = score_dataset(
            predictor, data.val, batch_size=config.optim.batch_size, limit=config.data.max_val_samples
        )
        report = summarize(scores)
        metrics.write({"kind": "val", "step": state.step, **report})
        if report["gIoU"] > state.best_giou:
            state.best_giou = report["gIoU"]
            save(Path(config.out_dir) / "best.safetensors")
    state.best_giou = ddp.share(state.best_giou)  # every rank keeps the same best score so resume files agree


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
