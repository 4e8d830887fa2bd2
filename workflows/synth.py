"""``rsrs synth``: seeded synthetic referring data, as chip datasets for training or large scenes for ``rsrs run``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click
from tqdm import tqdm

from rsrs.pipeline.geometry import RasterGrid
from rsrs.pipeline.synth import write_chip_dataset, write_scene
from rsrs.pipeline.synth.scene import scene_grid


@click.group("synth")
def synth_command() -> None:
    """Make synthetic aerial imagery with referring expressions and their true masks.

    Scenes hold grass, soil and forest, roads with cars, buildings with red, grey, blue or white roofs, ponds,
    fields and tennis courts. Expressions name a category ("the pond"), a colour ("the red-roofed
    building"), a size ("the largest pond"), a position ("the building in the upper left") or a relation
    ("the building just north of the road"), and each picks out exactly its target; `dataset --scene-wide`
    adds plurals ("ponds": every pond) and absent things (an empty mask). The same seed always writes the same
    bytes.
    """


@synth_command.command("dataset")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option(
    "--count", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of samples (manifest lines)."
)
@click.option("--chip-size", type=click.IntRange(min=64), default=256, show_default=True, help="Chip side, px.")
@click.option(
    "--per-chip", type=click.IntRange(min=1), default=2, show_default=True, help="Expressions (samples) per chip image."
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--scene-wide",
    is_flag=True,
    help="Also plural expressions ('ponds': every pond) and absent ones ('the pond' where there is none: an empty "
    "mask), as `rsrs run` meets them tile by tile. Off: every sample has one target, as in RRSIS-D.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes rendering chips (the output is the same for any number).",
)
def synth_dataset(
    out_dir: str, count: int, chip_size: int, per_chip: int, seed: int, scene_wide: bool, workers: int
) -> None:
    """Write a chip dataset: DIR/manifest.jsonl, DIR/images/*.png, DIR/masks/*.png.

    \b
    Each manifest line is one sample:
      {"id", "image", "mask", "sentence", "split", "category", "form", "target", "chip"}
    with paths relative to DIR; splits interleave 80% train, 10% val, 10% test by chip.
    With --scene-wide, plural and absent samples carry "targets" (a list) instead of "target".

    \b
    Then:  rsrs evaluate --model tiny --data manifest:DIR/manifest.jsonl
    """
    with tqdm(total=count, desc="synth dataset", unit="sample") as bar:
        manifest = write_chip_dataset(
            out_dir,
            count=count,
            chip_size=chip_size,
            seed=seed,
            per_chip=per_chip,
            scene_wide=scene_wide,
            workers=workers,
            on_sample=bar.update,
        )
    click.echo(f"wrote {count} samples: {manifest}")


@synth_command.command("scene")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option(
    "--size",
    type=click.IntRange(min=256),
    default=8192,
    show_default=True,
    help="Scene side, px (0.5 m pixels: 8192 px is 4 km).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--stac",
    "collection",
    metavar="COLLECTION",
    default=None,
    help="Also write DIR/items.json: the scene as a STAC item of COLLECTION (absolute asset href), ready for "
    "`rustac serve DIR/items.json` (a local STAC API to try `stac: api:` inputs against).",
)
def synth_scene(out_dir: str, size: int, seed: int, collection: str | None) -> None:
    """Write one large georeferenced scene and its truth for `rsrs run`.

    \b
    DIR/scene.tif          RGB GeoTIFF, EPSG:32614, 0.5 m pixels, 512 px tiles, deflate
    DIR/expressions.json   [{id, text, category, form, targets}]: scene-wide queries ("red-roofed
                           buildings") and one-target expressions ("the largest pond")
    DIR/masks/<id>.tif     per expression: uint8 0/1 true mask on the scene's grid
    DIR/objects.geojson    every object's polygon (scene CRS) with category, colour, area_m2, expressions

    An 8192 px scene takes about half a minute and under 1 GB of memory.
    """
    with tqdm(total=size, desc="synth scene", unit="row") as bar:
        path = write_scene(out_dir, size=size, seed=seed, on_rows=bar.update)
    click.echo(f"wrote {path} with expressions.json, masks/ and objects.geojson beside it")
    if collection is not None:
        items = write_stac_items(path, scene_grid(size), collection=collection)
        click.echo(f"wrote {items}; serve it with:  rustac serve {items} --addr 127.0.0.1:8080")


def write_stac_items(scene: Path, grid: RasterGrid, *, collection: str) -> Path:
    """A FeatureCollection of one STAC item for ``scene`` on ``grid`` (footprint, datetime, an ``image`` asset),
    written beside the scene."""
    import json

    import pystac
    import shapely

    from rsrs.workflows.run_catalog import footprint

    outline = footprint(grid)
    item = pystac.Item(
        id=scene.parent.name or "scene",
        geometry=shapely.geometry.mapping(outline),
        bbox=list(outline.bounds),
        datetime=datetime(2021, 6, 1, tzinfo=UTC),
        properties={},
        collection=collection,
    )
    item.add_asset("image", pystac.Asset(str(scene.resolve()), media_type=pystac.MediaType.COG, roles=["data"]))
    path = scene.parent / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [item.to_dict()]}, indent=1))
    return path
