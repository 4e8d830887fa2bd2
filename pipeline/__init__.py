"""rsrs.pipeline: geospatial data in and out (scenes, tiles, pixels, Zarr, polygons, datasets, synthesis)."""
