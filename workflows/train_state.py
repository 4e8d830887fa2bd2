"""What a training run keeps between steps and between invocations: its progress, the learning-rate schedule, the
resume point (``resume.pt`` beside ``last.safetensors``) and the metrics log.

A resumed run restores the optimizer, scheduler, every rank's RNG state and the position in the epoch, so it
continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rsrs.core.files import atomic_path
from rsrs.workflows.train_distributed import Distributed

RESUME = "resume.pt"


@dataclass
class Progress:
    """Where training stands: what ``resume.pt`` stores besides optimizer, scheduler and RNG states."""

    step: int = 0
    epoch: int = 0
    epoch_position: int = 0  # samples of this epoch already consumed by each rank
    best_giou: float = -1.0


def lr_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (a LambdaLR factor)."""

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


def save_resume_point(
    out_dir: Path, *, save: Callable[[Path], None], optimizer, scheduler, state: Progress, ddp: Distributed
) -> None:
    """Write the step's checkpoint, ``last.safetensors`` and ``resume.pt`` (all ranks' RNG states), atomically."""
    rng_states = ddp.gather(_rng_state())
    if ddp.is_main:
        (out_dir / "checkpoints").mkdir(exist_ok=True)
        save(out_dir / "checkpoints" / f"step_{state.step:07d}.safetensors")
        save(out_dir / "last.safetensors")
        payload = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_states,
            "progress": asdict(state),
        }
        with atomic_path(out_dir / RESUME) as tmp:
            torch.save(payload, tmp)
    ddp.barrier()


def load_resume_point(out_dir: Path, *, optimizer, scheduler, ddp: Distributed) -> Progress:
    """Restore optimizer, scheduler and this rank's RNG from ``resume.pt``; returns the saved progress.

    (The model's weights come from ``last.safetensors``, applied by the caller.)
    """
    saved = torch.load(out_dir / RESUME, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"][min(ddp.rank, len(saved["rng"]) - 1)])
    return Progress(**saved["progress"])


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
