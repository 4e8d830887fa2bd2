"""Synthetic scenes: layouts, expressions that pick out exactly their target, rendering, chip datasets."""

import json
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box

from rsrs.pipeline.geometry import PixelWindow
from rsrs.pipeline.synth import write_chip_dataset
from rsrs.pipeline.synth.chips import chip_split, render_chip
from rsrs.pipeline.synth.expressions import (
    absent_expressions,
    choose_expressions,
    plural_expressions,
    relation_forms,
    singular_expressions,
    size_forms,
)
from rsrs.pipeline.synth.layout import generate_layout, rotated_rect
from rsrs.pipeline.synth.objects import PLURALS, SceneObject, noun_phrase
from rsrs.pipeline.synth.render import SceneRenderer

SEEDS = range(40)


def layout(seed: int, size: int = 256):
    return generate_layout(np.random.default_rng(seed), (size, size))


def building(id_: int, x: float, y: float, w: float, h: float, colour: str = "red") -> SceneObject:
    return SceneObject(id=id_, category="building", colour=colour, geometry=rotated_rect(x, y, w, h, 0.0))


def test_layout_is_deterministic_per_seed():
    a, b, c = layout(3), layout(3), layout(4)
    assert [o.geometry.wkb for o in a.objects] == [o.geometry.wkb for o in b.objects]
    assert [o.geometry.wkb for o in a.objects] != [o.geometry.wkb for o in c.objects]


def test_objects_lie_inside_the_scene_and_do_not_overlap_except_cars_on_roads():
    for seed in SEEDS:
        lay = layout(seed)
        scene = box(0, 0, 256, 256)
        things = [o for o in lay.objects if o.category not in ("road", "car")]
        for o in things:
            assert scene.contains(o.geometry), (seed, o)
        for i, o in enumerate(things):
            for p in things[i + 1 :]:
                assert o.geometry.intersection(p.geometry).area < 1e-6, (seed, o.id, p.id)


def test_every_singular_text_names_one_target_per_scene():
    forms = defaultdict(int)
    for seed in SEEDS:
        lay = layout(seed)
        targets_by_text = defaultdict(set)
        for e in singular_expressions(lay.objects, lay.shape):
            assert len(e.targets) == 1
            targets_by_text[e.text].add(e.targets[0])
            forms[e.form] += 1
        ambiguous = {t: ids for t, ids in targets_by_text.items() if len(ids) > 1}
        assert not ambiguous, (seed, ambiguous)
    assert set(forms) == {"category", "colour", "size", "position", "ordinal", "relation"}


def test_size_words_need_a_clear_ratio():
    similar = [building(1, 50, 50, 20, 20), building(2, 150, 150, 21, 20)]
    assert size_forms(similar) == []
    distinct = [building(1, 50, 50, 20, 20), building(2, 150, 150, 40, 30), building(3, 200, 60, 18, 18)]
    texts = {e.text: e.targets for e in size_forms(distinct)}
    assert texts["the largest building"] == (2,)
    assert "the smallest building" not in texts  # 20x20 vs 18x18 is too close to call


def test_relation_to_a_unique_road_uses_the_side_of_the_road():
    road = SceneObject(id=1, category="road", colour=None, geometry=box(0, 120, 256, 134))
    north = building(2, 60, 100, 20, 16, "grey")
    far_south = building(3, 200, 246, 20, 16, "blue")  # beyond 2.5 x the "near" distance
    texts = {e.text: e.targets for e in relation_forms([road, north, far_south], (256, 256))}
    assert texts["the building just north of the road"] == (2,)
    assert texts["the building next to the road"] == (2,)
    assert not any("south" in t for t in texts)


def test_relation_is_skipped_when_two_candidates_share_the_side():
    road = SceneObject(id=1, category="road", colour=None, geometry=box(0, 120, 256, 134))
    twins = [building(2, 60, 100, 20, 16), building(3, 190, 104, 20, 16, "blue")]
    assert relation_forms([road, *twins], (256, 256)) == []


def test_plural_expressions_take_every_match():
    objs = [building(1, 50, 50, 20, 20), building(2, 150, 150, 20, 20, "blue"), building(3, 200, 60, 18, 18)]
    texts = {e.text: e.targets for e in plural_expressions(objs)}
    assert texts == {"buildings": (1, 2, 3), "blue-roofed buildings": (2,), "red-roofed buildings": (1, 3)}


def test_absent_expressions_name_what_the_scene_lacks_singular_and_plural():
    objs = [building(1, 50, 50, 20, 20), building(2, 150, 150, 20, 20, "blue")]
    colours = {"building": ["red", "blue", "grey"], "court": ["green"], "pond": []}
    absent = absent_expressions(objs, colours)
    assert all(e.form == "absent" and e.targets == () for e in absent)
    texts = {e.text for e in absent}
    assert {"the grey-roofed building", "grey-roofed buildings", "the pond", "ponds"} <= texts
    assert {"the tennis court", "the green tennis court", "green tennis courts"} <= texts
    named = {"red-roofed", "blue-roofed"}  # the colours present: never said to be absent, nor are buildings
    assert not any(word in t for t in texts for word in named) and not texts & {"the building", "buildings"}


def test_chosen_expressions_have_distinct_targets():
    lay = layout(5)
    chosen = choose_expressions(np.random.default_rng(0), singular_expressions(lay.objects, lay.shape), 3)
    targets = [e.targets for e in chosen]
    assert len(set(targets)) == len(targets) > 0


def test_rendered_windows_join_seamlessly():
    lay = layout(7, size=300)
    r = SceneRenderer(lay, seed=7)
    whole = r.image(PixelWindow(0, 0, 300, 300), r.labels(PixelWindow(0, 0, 300, 300)))
    top_w, bottom_w = PixelWindow(0, 0, 120, 300), PixelWindow(120, 0, 180, 300)
    top, bottom = r.labels(top_w), r.labels(bottom_w)
    assert np.array_equal(np.concatenate([top, bottom]), r.labels(PixelWindow(0, 0, 300, 300)))
    assert np.array_equal(np.concatenate([r.image(top_w, top), r.image(bottom_w, bottom)]), whole)
    assert whole.dtype == np.uint8 and whole.shape == (300, 300, 3)


def test_chip_masks_are_the_visible_pixels_of_the_target():
    for index in range(8):
        lay, image, samples = render_chip(11, index, size=96, per_chip=2)
        assert image.shape == (96, 96, 3) and samples
        for s in samples:
            assert s["mask"].any()
            target = next(o for o in lay.objects if o.id == s["target"])
            minx, miny, maxx, maxy = target.geometry.bounds
            rows, cols = np.nonzero(s["mask"])
            assert rows.min() >= int(miny) - 1 and rows.max() <= maxy + 1
            assert cols.min() >= int(minx) - 1 and cols.max() <= maxx + 1


def test_scene_wide_chips_add_plural_masks_of_every_match_and_empty_absent_masks():
    forms = defaultdict(int)
    for index in range(30):
        lay, _, samples = render_chip(4, index, size=128, per_chip=3, scene_wide=True)
        renderer = SceneRenderer(lay, seed=4 * 1_000_003 + index)
        owners = renderer.objects(renderer.labels(PixelWindow(0, 0, 128, 128)))
        for s in samples:
            forms[s["form"]] += 1
            if s["form"] == "plural":  # "ponds": every pond; "red-roofed buildings": every red-roofed one
                matches = {
                    o.id
                    for o in lay.objects
                    if o.category == s["category"]
                    and s["sentence"] in (PLURALS[o.category], noun_phrase(o.category, o.colour, plural=True))
                }
                assert set(s["targets"]) == matches and matches
                assert np.array_equal(s["mask"], np.isin(owners, s["targets"]))
            elif s["form"] == "absent":
                assert s["targets"] == [] and not s["mask"].any()
            else:
                assert "targets" not in s and s["mask"].any()
    assert forms["plural"] > 0 and forms["absent"] > 0 and forms["category"] > 0


def test_chips_without_scene_wide_have_one_target_each():
    for index in range(30):
        _, _, samples = render_chip(4, index, size=128, per_chip=3)
        assert all(s["form"] not in ("plural", "absent") and isinstance(s["target"], int) for s in samples)


def test_chip_split_interleaves_80_10_10():
    splits = [chip_split(i) for i in range(100)]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (80, 10, 10)


def test_chip_dataset_manifest_points_at_matching_files(tmp_path):
    manifest = write_chip_dataset(tmp_path, count=12, chip_size=96, seed=2)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for r in rows:
        image = np.asarray(Image.open(tmp_path / r["image"]))
        mask = np.asarray(Image.open(tmp_path / r["mask"]))
        assert image.shape == (96, 96, 3) and mask.shape == (96, 96)
        assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        assert r["sentence"].startswith("the ") and r["category"]


@pytest.mark.parametrize("count", [1, 5])
def test_chip_dataset_writes_exactly_count_samples(tmp_path, count):
    manifest = write_chip_dataset(tmp_path, count=count, chip_size=96, seed=0, per_chip=3)
    assert len(manifest.read_text().splitlines()) == count


def test_chip_dataset_is_the_same_for_any_number_of_workers(tmp_path):
    one = write_chip_dataset(tmp_path / "one", count=9, chip_size=64, seed=1)
    two = write_chip_dataset(tmp_path / "two", count=9, chip_size=64, seed=1, workers=2)
    assert one.read_text() == two.read_text()
    for p in (tmp_path / "one").rglob("*.png"):
        assert p.read_bytes() == (tmp_path / "two" / p.relative_to(tmp_path / "one")).read_bytes()
