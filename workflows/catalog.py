"""``rsrs models``: what each preset is, what it takes as input, and how big it is.

Sizes come from building each preset on PyTorch's meta device (no memory, no weights). That takes seconds per
real-size preset, so the measurements ship with the presets (``configs/models/presets.json``) and ``rsrs
models`` only reads them; ``rsrs models --measure`` (and the test suite) builds every preset again and
compares. After changing a preset, refresh the table with ``python -m rsrs.workflows.catalog``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from rsrs.model.config import get_model_config, list_models, presets_dir

TABLE = "presets.json"


@dataclass(frozen=True)
class PresetSummary:
    """One preset: what it is, its backbones and input sizes, and its measured parameter counts."""

    name: str
    description: str
    weights: str  # where its weights come from
    image_text: str  # the image/text encoder: family, width x depth, pretrained source
    masks: str  # the mask model's image encoder
    image_text_input: int
    mask_input: int
    total_params: int
    trainable_params: int
    checkpoint_mb: float  # the shipped weights' file size, else a float32 fine-tune checkpoint's


def _backbone(kind: str, width: int, depth: int, pretrained: str | None) -> str:
    return f"{kind} {width}x{depth}" + (f" ({pretrained})" if pretrained else "")


def measure_preset(name: str) -> dict:
    """Build ``name`` on the meta device: its backbones, input sizes and parameter counts."""
    from rsrs.model import load_model

    model = load_model(name, device="meta")
    cfg = model.config
    siglip = model.siglip.config.vision_config
    return {
        "image_text": _backbone("SigLIP", siglip.hidden_size, siglip.num_hidden_layers, cfg.siglip.pretrained),
        "masks": _backbone(*model.mask_backbone_size(), cfg.mask_backbone.pretrained),
        "image_text_input": model.siglip_image_size,
        "mask_input": model.sam_image_size,
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def measured_table() -> dict[str, dict]:
    """The shipped measurements, by preset name."""
    path = presets_dir() / TABLE
    return json.loads(path.read_text()) if path.exists() else {}


def summarize_preset(name: str, *, measure: bool = False) -> PresetSummary:
    """A preset's summary from its config and the shipped measurements (``measure``: build it now instead)."""
    config = get_model_config(name)
    sizes = measure_preset(name) if measure else measured_table().get(name) or measure_preset(name)
    if config.checkpoint:
        mb = (presets_dir() / config.checkpoint).stat().st_size / 1e6
        weights = f"trained by rsrs; weights ship with rsrs ({mb:.1f} MB)"
    else:
        mb = sizes["trainable_params"] * 4 / 1e6
        pretrained = config.siglip.pretrained or config.mask_backbone.pretrained
        weights = "pretrained backbones (hub ids below)" if pretrained else "random init"
    return PresetSummary(name=name, description=config.description, weights=weights, checkpoint_mb=round(mb, 1),
                         **sizes)  # fmt: skip


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@click.option("--measure", is_flag=True, help="Build every preset on the meta device now (slower) to count.")
def models_command(as_json: bool, measure: bool) -> None:
    """List model presets with backbones, input sizes and parameter counts.

    Counts come from building each preset on PyTorch's meta device, so no weights are needed. Use a preset
    name wherever a model is asked for (`model: {preset: NAME}` in a job, `--model NAME`).
    """
    summaries = [summarize_preset(name, measure=measure) for name in list_models()]
    if as_json:
        click.echo(json.dumps([asdict(s) for s in summaries], indent=2))
        return
    for s in summaries:
        click.echo(f"{s.name}\n  {s.description}")
        click.echo(f"  weights:    {s.weights}")
        click.echo(f"  image/text: {s.image_text}, input {s.image_text_input}px")
        click.echo(f"  masks:      {s.masks}, input {s.mask_input}px")
        size = "shipped weights" if "ship" in s.weights else "fine-tune checkpoint ~"
        click.echo(
            f"  parameters: {s.total_params:,} total, {s.trainable_params:,} trainable "
            f"({size}{'' if size.endswith('~') else ' '}{s.checkpoint_mb:.1f} MB)"
        )


def write_table(path: Path | None = None) -> Path:
    """Measure every preset and write the table ``rsrs models`` reads."""
    path = path or presets_dir() / TABLE
    table = {name: measure_preset(name) for name in list_models()}
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_table()}")
