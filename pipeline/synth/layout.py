"""Seeded layouts of simplified aerial scenes: where roads, fields, ponds, courts, buildings and cars go.

Counts scale with the scene's area (a 256 x 256 chip holds a handful of objects, an 8192 x 8192 scene
thousands), objects do not overlap each other (cars sit on roads), and every object lies wholly inside the
scene so that size and position words mean what they say. Colours are few and far apart on purpose: the
data must stay learnable by a small model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box

from rsrs.pipeline.synth.objects import Paint, SceneObject

COLOURS: dict[str, dict[str, tuple[int, int, int]]] = {
    "building": {"red": (176, 58, 44), "grey": (132, 132, 138), "blue": (48, 86, 170), "white": (236, 234, 226)},
    "car": {"red": (205, 32, 30), "white": (242, 242, 240), "black": (22, 22, 26), "yellow": (232, 200, 28)},
    "court": {"blue": (38, 92, 176), "green": (52, 140, 72), "red": (178, 84, 48)},
    "field": {"green": (120, 176, 64), "yellow": (214, 190, 96), "brown": (138, 98, 62)},
}
GRASS, SOIL, FOREST, TREE = (92, 112, 64), (146, 122, 90), (42, 70, 36), (34, 62, 30)
WATER, SHORE, ASPHALT, SHADOW, LINE = (30, 54, 64), (118, 108, 80), (104, 104, 106), (46, 50, 42), (246, 246, 246)

# Expected counts per 256 x 256 px of scene.
DENSITY = {"field": 0.35, "pond": 0.8, "court": 0.35, "building": 2.4, "tree": 10.0, "soil": 0.8, "forest": 0.5}
CELL = 4  # px per occupancy cell


@dataclass(frozen=True)
class Layout:
    """A scene's objects (referable) and paints (drawn in order), in pixels of a ``shape = (ny, nx)`` grid."""

    shape: tuple[int, int]
    objects: tuple[SceneObject, ...]
    paints: tuple[Paint, ...]


class _Occupancy:
    """Coarse grid of taken cells, so thousands of placements stay O(1) each."""

    def __init__(self, shape: tuple[int, int]) -> None:
        ny, nx = shape
        self.shape = shape
        self.taken = np.zeros((-(-ny // CELL), -(-nx // CELL)), dtype=bool)

    def _cells(self, bounds: tuple[float, float, float, float], margin: float) -> tuple[slice, slice]:
        x0, y0, x1, y1 = bounds
        return (
            slice(max(0, int((y0 - margin) // CELL)), max(0, int(math.ceil((y1 + margin) / CELL)))),
            slice(max(0, int((x0 - margin) // CELL)), max(0, int(math.ceil((x1 + margin) / CELL)))),
        )

    def fits(self, geom: Polygon, margin: float) -> bool:
        """Inside the scene (``margin`` px from its edge) and clear of every taken cell."""
        ny, nx = self.shape
        x0, y0, x1, y1 = geom.bounds
        if x0 < margin or y0 < margin or x1 > nx - margin or y1 > ny - margin:
            return False
        return not self.taken[self._cells(geom.bounds, margin)].any()

    def take(self, geom: Polygon, margin: float = 0.0) -> None:
        """Mark the cells under ``geom``'s bounding box."""
        self.taken[self._cells(geom.bounds, margin)] = True

    def take_band(self, p0: tuple[float, float], direction: tuple[float, float], half_width: float) -> None:
        """Mark the cells within ``half_width`` px of the infinite line through ``p0`` along unit ``direction``."""
        gy, gx = self.taken.shape
        cy, cx = np.mgrid[0:gy, 0:gx].astype(np.float32) * CELL + CELL / 2  # cell centres, px
        dist = np.abs((cx - p0[0]) * direction[1] - (cy - p0[1]) * direction[0])
        self.taken |= dist < half_width + CELL


def rotated_rect(cx: float, cy: float, width: float, height: float, angle: float) -> Polygon:
    """A ``width`` x ``height`` rectangle centred on (cx, cy), rotated by ``angle`` degrees."""
    return affinity.rotate(box(cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2), angle)


def blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> Polygon:
    """An irregular, smooth, star-shaped polygon of mean ``radius`` (ponds, soil and forest patches)."""
    theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 4):
        r += rng.uniform(0.0, 0.14) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return Polygon(np.c_[cx + radius * r * np.cos(theta), cy + radius * r * np.sin(theta)])


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in rgb)


class _Builder:
    """Accumulates objects and paints while placing them on the occupancy grid."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int]) -> None:
        self.rng, self.shape = rng, shape
        self.occupancy = _Occupancy(shape)
        self.objects: list[SceneObject] = []
        self.background: list[Paint] = []
        self.paints: list[Paint] = []

    def place(self, make, margin: float, attempts: int = 30) -> tuple[Polygon, float] | None:
        """Try ``make(x, y) -> (object geometry, angle)`` at random spots until one fits; add it."""
        ny, nx = self.shape
        for _ in range(attempts):
            geom, angle = make(self.rng.uniform(0, nx), self.rng.uniform(0, ny))
            if self.occupancy.fits(geom, margin):
                self.occupancy.take(geom, margin)
                return geom, angle
        return None

    def add(self, category: str, colour: str | None, geom: Polygon, angle: float = 0.0) -> SceneObject:
        obj = SceneObject(id=len(self.objects) + 1, category=category, colour=colour, geometry=geom, angle=angle)
        self.objects.append(obj)
        return obj

    # ---- one method per category --------------------------------------------------------------------------

    def road(self) -> None:
        rng, (ny, nx) = self.rng, self.shape
        angle = float(rng.choice([0.0, 90.0]) + rng.uniform(-25, 25))
        p0 = (rng.uniform(0.2, 0.8) * nx, rng.uniform(0.2, 0.8) * ny)
        d = (math.cos(math.radians(angle)), math.sin(math.radians(angle)))
        reach = 2 * (nx + ny)
        line = LineString([(p0[0] - reach * d[0], p0[1] - reach * d[1]), (p0[0] + reach * d[0], p0[1] + reach * d[1])])
        width = rng.uniform(12, 18)
        geom = line.buffer(width / 2, cap_style="flat").intersection(box(0, 0, nx, ny))
        if geom.is_empty or geom.geom_type != "Polygon":
            return
        self.occupancy.take_band(p0, d, width / 2 + 4)
        road = self.add("road", None, geom, angle)
        self.paints.append(Paint(geom, _jitter(rng, ASPHALT, 6), (5, 2, 3), road.id))
        clipped = line.intersection(box(0, 0, nx, ny))
        for t in np.arange(0, clipped.length, 24.0):  # dashed centre line
            dash = LineString([clipped.interpolate(t), clipped.interpolate(min(t + 9, clipped.length))])
            self.paints.append(Paint(dash.buffer(0.9, cap_style="flat"), (214, 214, 200), (4, 0, 0), road.id))
        self.cars(road, clipped, width)

    def cars(self, road: SceneObject, centre: LineString, width: float) -> None:
        rng = self.rng
        count = rng.poisson(centre.length / 140)
        spots = np.sort(rng.uniform(8, max(9.0, centre.length - 8), size=count))
        last = -1e9
        for t in spots:
            if t - last < 18:
                continue
            last = t
            p = centre.interpolate(t)
            lane = width / 4 * rng.choice([-1.0, 1.0])
            a = math.radians(road.angle)
            cx, cy = p.x - lane * math.sin(a), p.y + lane * math.cos(a)
            colour = str(rng.choice(list(COLOURS["car"])))
            geom = rotated_rect(cx, cy, 11, 5.5, road.angle)
            car = self.add("car", colour, geom, road.angle)
            self.paints.append(Paint(geom, _jitter(rng, COLOURS["car"][colour], 8), (3, 1, 0), car.id))

    def _place_rect(
        self, category: str, w: float, h: float, angle: float, *, margin: float
    ) -> tuple[Polygon, str] | None:
        """A free spot for a w x h rectangle at ``angle`` and a colour drawn for ``category``; None when full."""
        placed = self.place(lambda x, y: (rotated_rect(x, y, w, h, angle), angle), margin=margin)
        if placed is None:
            return None
        return placed[0], str(self.rng.choice(list(COLOURS[category])))

    def field(self) -> None:
        rng = self.rng
        w, h, angle = rng.uniform(70, 150), rng.uniform(60, 120), float(rng.uniform(-40, 40))
        placed = self._place_rect("field", w, h, angle, margin=4)
        if placed is None:
            return
        geom, colour = placed
        rgb = _jitter(rng, COLOURS["field"][colour], 8)
        field = self.add("field", colour, geom, angle)
        self.paints.append(Paint(geom, rgb, (4, 3, 4), field.id))
        c = geom.centroid
        normal = (-math.sin(math.radians(angle)), math.cos(math.radians(angle)))
        for offset in np.arange(-max(w, h), max(w, h), 7.0):  # crop rows
            row = rotated_rect(c.x + offset * normal[0], c.y + offset * normal[1], 2 * max(w, h), 3.0, angle)
            stripe = row.intersection(geom)
            if not stripe.is_empty:
                self.paints.append(Paint(stripe, _shade(rgb, 0.82), (4, 2, 0), field.id))

    def pond(self, radius: float | None = None) -> None:
        rng = self.rng
        radius = float(rng.uniform(10, 38)) if radius is None else radius
        placed = self.place(lambda x, y: (blob(rng, x, y, radius), 0.0), margin=5)
        if placed is None:
            return
        geom, _ = placed
        pond = self.add("pond", None, geom)
        self.background.append(Paint(geom.buffer(2.5), _jitter(rng, SHORE, 8), (6, 3, 0)))
        self.paints.append(Paint(geom, _jitter(rng, WATER, 6), (2, 2, 3), pond.id))

    def court(self) -> None:
        rng = self.rng
        w, angle = rng.uniform(44, 58), float(rng.uniform(-90, 90))
        h = w * 0.47
        placed = self._place_rect("court", w, h, angle, margin=6)
        if placed is None:
            return
        geom, colour = placed
        court = self.add("court", colour, geom, angle)
        self.paints.append(Paint(geom, _jitter(rng, COLOURS["court"][colour], 6), (2, 1, 0), court.id))
        c = geom.centroid
        inner = rotated_rect(c.x, c.y, w * 0.84, h * 0.74, angle)
        lines = [inner.exterior.buffer(0.8), rotated_rect(c.x, c.y, 1.6, h * 0.74, angle)]
        lines.append(rotated_rect(c.x, c.y, w * 0.46, 1.6, angle))  # service line
        for line in lines:
            self.paints.append(Paint(line.intersection(geom), LINE, (2, 0, 0), court.id))

    def building(self) -> None:
        rng = self.rng
        w, h, angle = rng.uniform(16, 44), rng.uniform(14, 30), float(rng.uniform(-90, 90))
        placed = self._place_rect("building", w, h, angle, margin=5)
        if placed is None:
            return
        geom, colour = placed
        rgb = _jitter(rng, COLOURS["building"][colour], 8)
        building = self.add("building", colour, geom, angle)
        shift = 0.12 * min(w, h) + 1.5
        self.background.append(Paint(affinity.translate(geom, shift, shift), SHADOW, (3, 1, 0)))
        c = geom.centroid
        half = rotated_rect(c.x, c.y, w, h / 2, angle)
        half = affinity.translate(half, -h / 4 * math.sin(math.radians(angle)), h / 4 * math.cos(math.radians(angle)))
        self.paints.append(Paint(geom, rgb, (3, 2, 1), building.id))
        self.paints.append(Paint(half.intersection(geom), _shade(rgb, 0.86), (3, 2, 1), building.id))

    def patch(self, rgb: tuple[int, int, int], texture: tuple[float, float, float], radius: float) -> None:
        ny, nx = self.shape
        geom = blob(self.rng, self.rng.uniform(0, nx), self.rng.uniform(0, ny), radius)
        self.background.append(Paint(geom, _jitter(self.rng, rgb, 10), texture))

    def tree(self) -> None:
        ny, nx = self.shape
        geom = Point(self.rng.uniform(0, nx), self.rng.uniform(0, ny)).buffer(self.rng.uniform(2.5, 6.5), 8)
        if self.occupancy.fits(geom, 2):
            self.paints.append(Paint(geom, _jitter(self.rng, TREE, 10), (10, 6, 0)))


def generate_layout(rng: np.random.Generator, shape: tuple[int, int]) -> Layout:
    """A random scene of ``shape = (ny, nx)`` px: background first, then roads, fields, ponds, courts, buildings."""
    ny, nx = shape
    units = ny * nx / 256**2
    b = _Builder(rng, shape)
    b.background.append(Paint(box(0, 0, nx, ny), _jitter(rng, GRASS, 8), (7, 5, 9)))
    for _ in range(rng.poisson(DENSITY["soil"] * units)):
        b.patch(SOIL, (8, 6, 5), float(rng.uniform(25, 80)))
    for _ in range(rng.poisson(DENSITY["forest"] * units)):
        b.patch(FOREST, (10, 14, 4), float(rng.uniform(25, 80)))
    for _ in range(rng.poisson(0.55 * math.sqrt(units))):
        b.road()
    if units >= 16:  # large scenes get one lake, so that "the largest pond" exists
        b.pond(radius=float(rng.uniform(90, 140)))
    for category in ("field", "pond", "court", "building"):
        for _ in range(rng.poisson(DENSITY[category] * units)):
            getattr(b, category)()
    for _ in range(rng.poisson(DENSITY["tree"] * units)):
        b.tree()
    return Layout(shape=shape, objects=tuple(b.objects), paints=tuple(b.background + b.paints))
