"""Chip datasets in the manifest format: small synthetic scenes, each with a few referring expressions.

``DIR/manifest.jsonl`` holds one line per (chip, expression):
``{"id", "image", "mask", "sentence", "split", "category", "form", "target", "chip"}`` with ``image`` and
``mask`` relative to DIR (``images/<chip>.png`` RGB, ``masks/<id>.png`` 0/255). With ``scene_wide``, chips also
get plural and absent expressions (form "plural" / "absent"), whose lines carry ``"targets"`` (a list, empty for
absent: an empty mask) instead of ``"target"``; the chips themselves are the same. Chip ``i`` depends only on
(seed, i), so a larger dataset with the same seed starts with the smaller one's chips; its split comes from
``i`` alone (every run of 10 chips: 1 test, 1 val, 8 train), so even tiny datasets have all three splits.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from rsrs.pipeline.geometry import PixelWindow
from rsrs.pipeline.synth.expressions import (
    SCENE_WIDE_FORMS,
    Expression,
    absent_expressions,
    choose_expressions,
    plural_expressions,
    singular_expressions,
)
from rsrs.pipeline.synth.layout import COLOURS, Layout, generate_layout
from rsrs.pipeline.synth.render import SceneRenderer


def chip_split(index: int) -> str:
    """The split of chip ``index``: 10% test, 10% val, 80% train, interleaved."""
    return {0: "test", 1: "val"}.get(index % 10, "train")


def _target_fields(e: Expression) -> dict:
    return {"targets": list(e.targets)} if e.form in SCENE_WIDE_FORMS else {"target": e.targets[0]}


def render_chip(
    seed: int, index: int, *, size: int, per_chip: int, scene_wide: bool = False
) -> tuple[Layout, np.ndarray, list[dict]]:
    """Chip ``index`` of dataset ``seed``: its layout, (size, size, 3) uint8 image and samples (bool masks).

    Layouts that offer no unambiguous singular expression are redrawn, so every chip yields at least one sample.
    """
    for attempt in itertools.count():
        rng = np.random.default_rng([seed, index, attempt])
        layout = generate_layout(rng, (size, size))
        candidates = singular_expressions(layout.objects, layout.shape)
        if candidates:
            if scene_wide:
                candidates += plural_expressions(layout.objects) + absent_expressions(layout.objects, COLOURS)
            chosen = choose_expressions(rng, candidates, per_chip)
            break
    renderer = SceneRenderer(layout, seed=seed * 1_000_003 + index)
    window = PixelWindow(0, 0, size, size)
    labels = renderer.labels(window)
    owners = renderer.objects(labels)  # (size, size) object id per pixel
    samples = [
        {
            "sentence": e.text,
            "category": e.category,
            "form": e.form,
            **_target_fields(e),
            "mask": np.isin(owners, e.targets),
        }
        for e in chosen
    ]
    return layout, renderer.image(window, labels), samples


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _encoded_chip(
    seed: int, index: int, size: int, per_chip: int, scene_wide: bool
) -> tuple[bytes, list[tuple[dict, bytes]]]:
    """Chip ``index`` as PNG bytes of its image and of each sample's 0/255 mask (work for a process pool)."""
    _, image, samples = render_chip(seed, index, size=size, per_chip=per_chip, scene_wide=scene_wide)
    return _png(image), [(s, _png(s.pop("mask").astype(np.uint8) * 255)) for s in samples]


def _chips_in_order(
    seed: int, size: int, per_chip: int, scene_wide: bool, workers: int
) -> Iterator[tuple[bytes, list]]:
    """Encoded chips 0, 1, 2, ... computed by ``workers`` processes (the same bytes for any worker count)."""
    if workers <= 1:
        yield from (_encoded_chip(seed, index, size, per_chip, scene_wide) for index in itertools.count())
        return
    with ProcessPoolExecutor(workers) as pool:
        batch = 8 * workers
        for start in itertools.count(0, batch):
            indexes = range(start, start + batch)
            repeat = [[seed] * batch, indexes, [size] * batch, [per_chip] * batch, [scene_wide] * batch]
            yield from pool.map(_encoded_chip, *repeat)


def write_chip_dataset(
    out_dir: str | Path,
    *,
    count: int,
    chip_size: int = 256,
    seed: int = 0,
    per_chip: int = 2,
    scene_wide: bool = False,
    workers: int = 1,
    on_sample: Callable[[int], None] | None = None,
) -> Path:
    """Write ``count`` samples (up to ``per_chip`` expressions per chip) under ``out_dir``; returns the manifest.

    ``scene_wide`` adds plural and absent expressions, which a model meets when it runs tile by tile over scenes.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    lines: list[str] = []
    chips = _chips_in_order(seed, chip_size, per_chip, scene_wide, workers)
    for index, (image_png, samples) in enumerate(chips):
        image_path = f"images/{index:06d}.png"
        (out / image_path).write_bytes(image_png)
        samples = samples[: count - len(lines)]  # the first k choices do not depend on how many follow
        for k, (s, mask_png) in enumerate(samples):
            sample_id = f"{index:06d}_{k}"
            mask_path = f"masks/{sample_id}.png"
            (out / mask_path).write_bytes(mask_png)
            record = {
                "id": sample_id,
                "image": image_path,
                "mask": mask_path,
                "sentence": s.pop("sentence"),
                "split": chip_split(index),
                **s,
                "chip": index,
            }
            lines.append(json.dumps(record))
        if on_sample is not None:
            on_sample(len(samples))
        if len(lines) >= count:
            chips.close()
            break
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
