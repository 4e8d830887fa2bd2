"""The things a synthetic scene holds: referable objects and the paint strokes that draw them.

Everything is in pixel space (x = column, y = row, origin at the top-left corner of the scene). An object is
what an expression can refer to; its paints are the polygons that draw it (a building's two roof halves, a
court's white lines). Background paints (grass, soil, forest, trees, shadows) belong to no object (owner 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

# Referable categories and the noun an expression uses for each.
NOUNS = {
    "building": "building",
    "pond": "pond",
    "court": "tennis court",
    "field": "field",
    "car": "car",
    "road": "road",
}
PLURALS = {
    "building": "buildings",
    "pond": "ponds",
    "court": "tennis courts",
    "field": "fields",
    "car": "cars",
    "road": "roads",
}


@dataclass(frozen=True)
class SceneObject:
    """A referable object: ``id`` (>= 1, unique in its scene), category, colour word (or None), polygon in px."""

    id: int
    category: str
    colour: str | None
    geometry: Polygon
    angle: float = 0.0  # orientation in degrees (roads: direction of travel), counter-clockwise from +x

    @property
    def area(self) -> float:
        """Area in square pixels."""
        return float(self.geometry.area)

    @property
    def centroid(self) -> tuple[float, float]:
        """``(x, y)`` of the polygon's centroid, in pixels."""
        c = self.geometry.centroid
        return (float(c.x), float(c.y))

    def phrase(self) -> str:
        """The noun phrase naming this object's colour and category ("red-roofed building")."""
        return noun_phrase(self.category, self.colour)


def noun_phrase(category: str, colour: str | None, *, plural: bool = False) -> str:
    """ "red-roofed building", "blue tennis court", "ponds": a category with its colour word, if any."""
    noun = (PLURALS if plural else NOUNS)[category]
    if colour is None:
        return noun
    if category == "building":
        return f"{colour}-roofed {noun}"
    return f"{colour} {noun}"


@dataclass(frozen=True)
class Paint:
    """One polygon drawn in one flat colour; later paints cover earlier ones.

    ``texture`` = (fine, mid, coarse) luminance noise amplitudes in grey levels: per-pixel grain, 4 px blotches
    and 32 px variation. ``owner`` is the id of the object this paint belongs to (0: background).
    """

    geometry: BaseGeometry
    rgb: tuple[int, int, int]
    texture: tuple[float, float, float]
    owner: int = 0
