import numpy as np
import pytest
import shapely
from pyproj import CRS, Transformer

from rsrs.pipeline.area import area_m2


def geodesic_area(geom: shapely.Geometry, crs: str, step: float) -> float:
    """pyproj's geodesic area of ``geom``, whose edges are straight in ``crs``: split every ``step`` units first."""
    source = CRS.from_user_input(crs)
    to_lonlat = Transformer.from_crs(source, source.geodetic_crs, always_xy=True)
    geod = source.get_geod()
    total = 0.0
    for polygon in shapely.get_parts(geom):
        for k, ring in enumerate(shapely.get_rings(shapely.segmentize(polygon, step))):
            lon, lat = to_lonlat.transform(*shapely.get_coordinates(ring).T)
            area = abs(geod.polygon_area_perimeter(lon, lat)[0])
            total += area if k == 0 else -area  # exterior first, then holes
    return total


def _square_with_hole(x0: float, y0: float, size: float) -> shapely.Polygon:
    hole = shapely.box(x0 + 0.2 * size, y0 + 0.2 * size, x0 + 0.3 * size, y0 + 0.35 * size)
    return shapely.Polygon(shapely.box(x0, y0, x0 + size, y0 + size).exterior, [hole.exterior])


# (crs, outline, reference step in crs units): each far from where the CRS is true to scale
SCENES = {
    "utm-zone-edge": ("EPSG:32614", _square_with_hole(250_000, 4_100_000, 12_000), 10.0),  # k ~ 1.0007
    "web-mercator-51N": ("EPSG:3857", _square_with_hole(1_000_000, 6_630_000, 20_000), 10.0),  # k ~ 1.59
    "lonlat-51N": ("EPSG:4326", _square_with_hole(10.0, 51.0, 0.2), 1e-4),
}


@pytest.mark.parametrize("name", SCENES)
def test_area_is_the_geodesic_area_on_the_ground(name):
    crs, outline, step = SCENES[name]
    assert area_m2(np.array([outline]), crs)[0] == pytest.approx(geodesic_area(outline, crs, step), rel=1e-7)


def test_web_mercator_area_is_not_the_planar_area():
    crs, outline, step = SCENES["web-mercator-51N"]
    assert outline.area / area_m2(np.array([outline]), crs)[0] == pytest.approx(2.53, abs=0.01)  # 1 / cos²(51.1°)


def test_multipolygons_small_polygons_and_long_edges_in_one_call():
    crs = "EPSG:32614"
    far = shapely.box(260_000, 4_300_000, 320_000, 4_300_010)  # 60 km long, 10 m wide: long edges that curve
    parts = shapely.MultiPolygon([shapely.box(500_000, 4_100_000, 500_002, 4_100_002), far])
    geoms = np.array([parts, shapely.box(500_010, 4_100_000, 500_011, 4_100_001), far], dtype=object)
    expected = [geodesic_area(g, crs, 10.0) for g in geoms]
    np.testing.assert_allclose(area_m2(geoms, crs), expected, rtol=1e-7)


def test_without_a_crs_area_is_nan_and_empty_input_gives_empty_output():
    assert np.isnan(area_m2(np.array([shapely.box(0, 0, 1, 1)]), None)).all()
    assert area_m2(np.array([], dtype=object), "EPSG:3857").shape == (0,)
