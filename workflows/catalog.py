"""``rsrs models``: what each preset is, what it takes as input, and how big it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import click


@dataclass(frozen=True)
class PresetSummary:
    """One preset, measured by building it on the meta device (no memory, no weights)."""

    name: str
    description: str
    siglip: str
    sam: str
    siglip_input: int
    sam_input: int
    total_params: int
    trainable_params: int

    @property
    def checkpoint_mb(self) -> float:
        """Size of a fine-tune checkpoint (trained parameters, float32) in MB."""
        return self.trainable_params * 4 / 1e6


def _backbone(kind: str, width: int, depth: int, pretrained: str | None) -> str:
    return f"{kind} {width}x{depth}" + (f" ({pretrained})" if pretrained else " (random init)")


def _mask_backbone(model: object) -> str:
    """SAM ViT (RSRefSeg) or SAM 2 Hiera (RSRefSeg 2): width x depth and where its weights come from."""
    cfg = model.config
    if cfg.architecture == "rsrefseg2":
        hiera = model.sam2.config.vision_config.backbone_config
        return _backbone("SAM 2 Hiera", hiera.hidden_size, sum(hiera.blocks_per_stage), cfg.sam2.pretrained)
    vision = model.sam.config.vision_config
    return _backbone("SAM ViT", vision.hidden_size, vision.num_hidden_layers, cfg.sam.pretrained)


def summarize_preset(name: str) -> PresetSummary:
    """Build ``name`` on the meta device and report its backbones, input sizes and parameter counts."""
    from rsrs.model import load_model

    model = load_model(name, device="meta")
    cfg = model.config
    siglip = model.siglip.config.vision_config
    return PresetSummary(
        name=name,
        description=cfg.description,
        siglip=_backbone("SigLIP", siglip.hidden_size, siglip.num_hidden_layers, cfg.siglip.pretrained),
        sam=_mask_backbone(model),
        siglip_input=model.siglip_image_size,
        sam_input=model.sam_image_size,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def models_command(as_json: bool) -> None:
    """List model presets with backbones, input sizes and parameter counts.

    Counts come from building each preset on PyTorch's meta device, so no weights are needed. Use a preset
    name wherever a model is asked for (`model: {preset: NAME}` in a job, `--model NAME`).
    """
    import json

    from rsrs.model import list_models

    summaries = [summarize_preset(name) for name in list_models()]
    if as_json:
        click.echo(json.dumps([asdict(s) | {"checkpoint_mb": round(s.checkpoint_mb, 1)} for s in summaries], indent=2))
        return
    for s in summaries:
        click.echo(f"{s.name}\n  {s.description}")
        click.echo(f"  image/text: {s.siglip}, input {s.siglip_input}px")
        click.echo(f"  masks:      {s.sam}, input {s.sam_input}px")
        click.echo(
            f"  parameters: {s.total_params:,} total, {s.trainable_params:,} trainable "
            f"(fine-tune checkpoint ~{s.checkpoint_mb:.1f} MB)"
        )
