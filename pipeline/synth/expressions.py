"""Referring expressions from a small grammar, each checked to pick out exactly its targets.

Singular forms (one target): category ("the pond"), colour ("the red-roofed building"), size ("the largest
pond", "the small blue building"), absolute position ("the building in the upper left", "the leftmost
court"), ordinal ("the second court from the left") and relations to a unique landmark ("the building just
north of the road", "the car next to the pond"). Plural forms ("red-roofed buildings") take every match and
serve as scene-wide queries; absent forms ("the pond", "red-roofed buildings" where there are none) take
nothing, as a query does in a tile without its object. A form is produced only where it is unambiguous with
margin to spare: sizes differ by a clear ratio, positions sit away from the thirds' borders, directions are near
a compass axis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from shapely.geometry import Point
from shapely.ops import nearest_points

from rsrs.pipeline.synth.objects import NOUNS, PLURALS, SceneObject, noun_phrase

SIZE_RATIO = 1.4  # the largest must be this many times the runner-up's area
POSITION_MARGIN = 0.07  # share of the scene's side kept clear around region borders and between extremes
REGIONS = {
    (0, 0): "in the upper left",
    (0, 1): "at the top",
    (0, 2): "in the upper right",
    (1, 0): "on the left",
    (1, 1): "in the centre",
    (1, 2): "on the right",
    (2, 0): "in the lower left",
    (2, 1): "at the bottom",
    (2, 2): "in the lower right",
}
# How often each form is chosen when sampling (relations and ordinals stay a minority: they are the hardest).
# Forms that refer to any number of objects; chips use them only on request (``scene_wide``).
SCENE_WIDE_FORMS = ("plural", "absent")
FORM_WEIGHTS = {
    "category": 1.0,
    "colour": 1.0,
    "size": 0.8,
    "position": 0.8,
    "ordinal": 0.2,
    "relation": 0.35,
    "plural": 0.6,
    "absent": 0.4,
}


@dataclass(frozen=True)
class Expression:
    """A sentence, the category it names, its grammar form, and the ids of the objects it refers to."""

    text: str
    category: str
    form: str
    targets: tuple[int, ...]


def _groups(objects: Iterable[SceneObject], key) -> dict:
    out: dict = defaultdict(list)
    for o in objects:
        out[key(o)].append(o)
    return out


def _one(text: str, form: str, o: SceneObject) -> Expression:
    return Expression(text=text, category=o.category, form=form, targets=(o.id,))


def category_forms(objects: Sequence[SceneObject]) -> list[Expression]:
    """ "the pond" where the scene holds exactly one pond."""
    return [
        _one(f"the {NOUNS[c]}", "category", g[0])
        for c, g in _groups(objects, lambda o: o.category).items()
        if len(g) == 1
    ]


def colour_forms(objects: Sequence[SceneObject]) -> list[Expression]:
    """ "the red-roofed building" where only one building of the category has that colour."""
    groups = _groups((o for o in objects if o.colour), lambda o: (o.category, o.colour))
    return [_one(f"the {g[0].phrase()}", "colour", g[0]) for g in groups.values() if len(g) == 1]


def _size_forms(group: list[SceneObject], phrase: str) -> list[Expression]:
    if len(group) < 2:
        return []
    ranked = sorted(group, key=lambda o: o.area, reverse=True)
    out = []
    if ranked[0].area >= SIZE_RATIO * ranked[1].area:
        word = "larger" if len(group) == 2 else "largest"
        out.append(_one(f"the {word} {phrase}", "size", ranked[0]))
        if len(group) == 2 and ranked[0].area >= 2 * ranked[1].area:
            out += [_one(f"the big {phrase}", "size", ranked[0]), _one(f"the small {phrase}", "size", ranked[1])]
    if ranked[-2].area >= SIZE_RATIO * ranked[-1].area:
        out.append(_one(f"the {'smaller' if len(group) == 2 else 'smallest'} {phrase}", "size", ranked[-1]))
    return out


def size_forms(objects: Sequence[SceneObject]) -> list[Expression]:
    """ "the largest pond", "the smaller red-roofed building", "the small blue building" (clear area ratios)."""
    sized = [o for o in objects if o.category not in ("road", "car")]  # road areas depend on clipping; cars alike
    out = []
    for c, g in _groups(sized, lambda o: o.category).items():
        out += _size_forms(g, NOUNS[c])
    for g in _groups((o for o in sized if o.colour), lambda o: (o.category, o.colour)).values():
        out += _size_forms(g, g[0].phrase())
    return out


def _third(value: float, extent: float, margin: float) -> int | None:
    """0, 1 or 2 for the third of ``extent`` holding ``value``; None when within ``margin`` of a border."""
    third = min(2, int(3 * value / extent))
    for border in (extent / 3, 2 * extent / 3):
        if abs(value - border) < margin:
            return None
    return third


def _margin(extent: float) -> float:
    """Clearance (px) that keeps position words unambiguous: a share of the side, capped for large scenes."""
    return POSITION_MARGIN * min(extent, 512)


def position_forms(objects: Sequence[SceneObject], shape: tuple[int, int]) -> list[Expression]:
    """ "the building in the upper left" (alone in its ninth of the scene) and "the leftmost court"."""
    ny, nx = shape
    my, mx = _margin(ny), _margin(nx)
    out = []
    placed = [o for o in objects if o.category != "road"]  # roads span the scene: position words mislead
    for c, group in _groups(placed, lambda o: o.category).items():
        noun = NOUNS[c]
        xy = np.array([o.centroid for o in group])  # (n, 2) centroids, px
        if len(group) >= 2:  # regions say little when the category is unique
            for k, o in enumerate(group):
                row, col = _third(xy[k, 1], ny, my), _third(xy[k, 0], nx, mx)
                if row is None or col is None:
                    continue
                y0, y1 = row * ny / 3 - my, (row + 1) * ny / 3 + my  # the region grown by the margin
                x0, x1 = col * nx / 3 - mx, (col + 1) * nx / 3 + mx
                inside = (xy[:, 1] >= y0) & (xy[:, 1] <= y1) & (xy[:, 0] >= x0) & (xy[:, 0] <= x1)
                if inside.sum() == 1:
                    out.append(_one(f"the {noun} {REGIONS[(row, col)]}", "position", o))
        for axis, margin, low, high in ((0, mx, "leftmost", "rightmost"), (1, my, "topmost", "bottommost")):
            order = np.argsort(xy[:, axis], kind="stable")
            values = xy[order, axis]
            if len(group) >= 2 and values[1] - values[0] >= margin:
                out.append(_one(f"the {low} {noun}", "position", group[order[0]]))
            if len(group) >= 2 and values[-1] - values[-2] >= margin:
                out.append(_one(f"the {high} {noun}", "position", group[order[-1]]))
    return out


def ordinal_forms(objects: Sequence[SceneObject], shape: tuple[int, int]) -> list[Expression]:
    """ "the second court from the left" where the first three are clearly apart along that axis."""
    ny, nx = shape
    out = []
    sides = ((0, nx, "left", False), (0, nx, "right", True), (1, ny, "top", False), (1, ny, "bottom", True))
    for c, group in _groups((o for o in objects if o.category != "road"), lambda o: o.category).items():
        for axis, extent, side, reverse in sides:
            ranked = sorted(group, key=lambda o: o.centroid[axis], reverse=reverse)
            if len(ranked) < 3:
                continue
            gaps = [abs(ranked[i + 1].centroid[axis] - ranked[i].centroid[axis]) for i in range(2)]
            if min(gaps) >= _margin(extent):
                out.append(_one(f"the second {NOUNS[c]} from the {side}", "ordinal", ranked[1]))
    return out


def _compass(landmark: SceneObject, o: SceneObject, *, strict: bool) -> str | None:
    """Direction from ``landmark``'s nearest point to ``o``'s centroid (image north is up); None if diagonal."""
    centre = Point(o.centroid)
    near = nearest_points(landmark.geometry, centre)[0]
    dx, dy = centre.x - near.x, centre.y - near.y
    ratio = 1.5 if strict else 1.0
    if abs(dy) > ratio * abs(dx):
        return "north" if dy < 0 else "south"
    if abs(dx) > ratio * abs(dy):
        return "west" if dx < 0 else "east"
    return None


def relation_forms(objects: Sequence[SceneObject], shape: tuple[int, int]) -> list[Expression]:
    """ "the building just north of the road" and "the car next to the pond", to landmarks unique by category."""
    near = float(np.clip(0.15 * min(shape), 24, 80))
    by_category = _groups(objects, lambda o: o.category)
    landmarks = [g[0] for c, g in by_category.items() if len(g) == 1 and c != "car"]
    out = []
    for lm in landmarks:
        lm_phrase = f"the {NOUNS[lm.category]}"
        for c, group in by_category.items():
            if c == lm.category or c == "road" or (c == "car" and lm.category == "road"):  # cars sit on roads
                continue
            dist = {o.id: o.geometry.distance(lm.geometry) for o in group}
            close = sorted((o for o in group if dist[o.id] < 2.5 * near), key=lambda o: dist[o.id])
            if close and dist[close[0].id] < near and (len(close) == 1 or dist[close[1].id] >= 2.5 * near):
                out.append(_one(f"the {NOUNS[c]} next to {lm_phrase}", "relation", close[0]))
            for o in (o for o in close if dist[o.id] < near):
                direction = _compass(lm, o, strict=True)
                rivals = [p for p in close if p is not o and _compass(lm, p, strict=False) in (direction, None)]
                if direction is not None and not rivals:
                    out.append(_one(f"the {NOUNS[c]} just {direction} of {lm_phrase}", "relation", o))
    return out


def singular_expressions(objects: Sequence[SceneObject], shape: tuple[int, int]) -> list[Expression]:
    """Every unambiguous one-target expression the grammar can say about this scene."""
    return (
        category_forms(objects)
        + colour_forms(objects)
        + size_forms(objects)
        + position_forms(objects, shape)
        + ordinal_forms(objects, shape)
        + relation_forms(objects, shape)
    )


def plural_expressions(objects: Sequence[SceneObject]) -> list[Expression]:
    """Scene-wide queries: "ponds", "red-roofed buildings" (every match is a target)."""
    out = []
    for c, group in sorted(_groups(objects, lambda o: o.category).items()):
        out.append(Expression(PLURALS[c], c, "plural", tuple(o.id for o in group)))
        for colour, members in sorted(_groups((o for o in group if o.colour), lambda o: o.colour).items()):
            out.append(Expression(noun_phrase(c, colour, plural=True), c, "plural", tuple(o.id for o in members)))
    return out


def absent_expressions(objects: Sequence[SceneObject], colours: dict[str, Iterable[str]]) -> list[Expression]:
    """Queries for what the scene lacks, singular and plural: a missing category ("the pond", "ponds") or a
    missing colour of a present one ("the red-roofed building" among grey ones). No target: the mask is empty.

    colours: the colour words each category can have.
    """
    present = {(o.category, o.colour) for o in objects}
    categories = {c for c, _ in present}
    out = []
    for c in sorted(NOUNS):
        known = sorted(colours.get(c, ()))
        missing = [None, *known] if c not in categories else [k for k in known if (c, k) not in present]
        for colour in missing:
            for plural in (False, True):
                text = noun_phrase(c, colour, plural=plural)
                out.append(Expression(text if plural else f"the {text}", c, "absent", ()))
    return out


def choose_expressions(rng: np.random.Generator, candidates: Sequence[Expression], count: int) -> list[Expression]:
    """Up to ``count`` expressions with distinct targets: a form by :data:`FORM_WEIGHTS`, then a candidate.

    Cars (a few pixels wide) are chosen less often so that chip datasets stay learnable.
    """
    chosen: list[Expression] = []
    pool = list(candidates)
    while pool and len(chosen) < count:
        forms = sorted({e.form for e in pool})
        w = np.array([FORM_WEIGHTS[f] for f in forms])
        form = forms[rng.choice(len(forms), p=w / w.sum())]
        options = [e for e in pool if e.form == form]
        w = np.array([0.3 if e.category == "car" else 1.0 for e in options])
        pick = options[rng.choice(len(options), p=w / w.sum())]
        chosen.append(pick)
        pool = [e for e in pool if not set(e.targets) & set(pick.targets)]
    return chosen
