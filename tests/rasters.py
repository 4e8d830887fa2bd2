"""Seeded synthetic GeoTIFFs for tests: known grid, CRS, dtype and invalid region.

Every writer is deterministic for a given seed. Pixels in :func:`invalid_region` are marked invalid by
whichever mechanism the caller asks for (a nodata value, an alpha band or an internal mask), so tests can
compare what the pipeline reads against the truth without re-deriving it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling

# Value range of the synthetic signal per dtype (what a sensor of that type would plausibly record).
_RANGES = {"uint8": (0, 255), "uint16": (200, 12000), "int16": (-500, 3000), "float32": (0.0, 1.0)}


def invalid_region(shape: tuple[int, int]) -> np.ndarray:
    """``(ny, nx)`` bool, True where synthetic rasters are invalid: the left eighth of the columns."""
    ny, nx = shape
    invalid = np.zeros((ny, nx), dtype=bool)
    invalid[:, : max(1, nx // 8)] = True
    return invalid


def synthetic_pixels(shape: tuple[int, int], *, count: int, dtype: str, seed: int) -> np.ndarray:
    """``(count, ny, nx)`` smooth gradients plus seeded noise, spanning the dtype's plausible range."""
    ny, nx = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    bands = []
    for b in range(count):
        ramp = (xx / max(nx - 1, 1) * (b + 1) + yy / max(ny - 1, 1)) / (b + 2)  # in [0, 1]
        bands.append(np.clip(0.8 * ramp + 0.2 * rng.random((ny, nx), dtype=np.float32), 0.0, 1.0))
    unit = np.stack(bands)  # (count, ny, nx) in [0, 1]
    lo, hi = _RANGES[dtype]
    values = lo + unit * (hi - lo)
    return values.astype(dtype) if np.dtype(dtype).kind == "f" else np.rint(values).astype(dtype)


def write_geotiff(
    path: str | Path,
    *,
    shape: tuple[int, int] = (300, 400),
    count: int = 3,
    dtype: str = "uint8",
    crs: str | None = "EPSG:32614",
    res: float | tuple[float, float] = 0.5,
    origin: tuple[float, float] = (500000.0, 4100000.0),
    nodata: float | None = None,
    seed: int = 0,
    tiled: bool = True,
    blocksize: int = 256,
    overviews: bool = False,
    alpha: bool = False,
    mask: bool = False,
    compress: str | None = "deflate",
    data: np.ndarray | None = None,
) -> Path:
    """Write a north-up GeoTIFF and return its path.

    ``shape`` is ``(ny, nx)``; ``res`` the pixel size (one value, or ``(res_y, res_x)``); ``origin`` the
    ``(x, y)`` of the top-left corner in CRS units. Pixels of :func:`invalid_region` get ``nodata`` when it
    is given, a zero ``alpha`` band when ``alpha``, and a zero internal ``mask`` when ``mask``. ``data``
    ``(count, ny, nx)`` replaces the synthetic pixels.
    """
    path = Path(path)
    ny, nx = shape
    res_y, res_x = (res, res) if isinstance(res, int | float) else res
    pixels = synthetic_pixels(shape, count=count, dtype=dtype, seed=seed) if data is None else data
    assert pixels.shape == (count, ny, nx), f"data must be {(count, ny, nx)}, got {pixels.shape}"
    invalid = invalid_region(shape)
    if nodata is not None:
        pixels = pixels.copy()
        pixels[:, invalid] = nodata
    profile = {
        "driver": "GTiff",
        "width": nx,
        "height": ny,
        "count": count + int(alpha),
        "dtype": dtype,
        "crs": crs,
        "transform": Affine(res_x, 0.0, origin[0], 0.0, -res_y, origin[1]),
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if compress:
        profile["compress"] = compress
    if alpha:
        profile["photometric"] = "RGB" if count == 3 else "MINISBLACK"
    valid_u8 = np.where(invalid, 0, 255).astype(np.uint8)  # (ny, nx)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels, indexes=list(range(1, count + 1)))
        if alpha:
            dst.colorinterp = [*dst.colorinterp[:count], ColorInterp.alpha]
            opaque = np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else 1.0
            dst.write(np.where(invalid, 0, opaque).astype(dtype), count + 1)
        if mask:
            dst.write_mask(valid_u8)
        if overviews:
            dst.build_overviews([2, 4, 8], Resampling.average)
    return path


def write_band_files(
    folder: str | Path, *, shape: tuple[int, int] = (200, 200), res: float = 10.0, seed: int = 0, **kwargs
) -> list[Path]:
    """Write three single-band rasters ``B04, B03, B02`` over one footprint; ``B03`` at half resolution.

    The pattern of a Sentinel-2 item whose assets come at different resolutions (10 m and 20 m here).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ny, nx = shape
    paths = []
    for i, name in enumerate(("B04", "B03", "B02")):
        coarse = name == "B03"
        band_shape = (ny // 2, nx // 2) if coarse else shape
        band_res = res * 2 if coarse else res
        paths.append(
            write_geotiff(folder / f"{name}.tif", shape=band_shape, count=1, res=band_res, seed=seed + i, **kwargs)
        )
    return paths


def write_poison_vrt(path: str | Path, source: str | Path, *, rows: tuple[int, int], cols: tuple[int, int]) -> Path:
    """A VRT over the 3-band uint8 GeoTIFF ``source`` whose pixel function (GDAL's Python pixel functions, run only
    where ``GDAL_VRT_ENABLE_PYTHON=YES``) segfaults the reading process when a read touches ``rows`` x ``cols``
    (scene pixels, half-open): a file that crashes whatever reads that region, as a corrupt file can crash GDAL."""
    path = Path(path)
    with rasterio.open(source) as src:
        ny, nx = src.shape
        transform, crs = src.transform, src.crs.to_wkt()
    (r0, r1), (c0, c1) = rows, cols
    code = f"""
def poison(in_ar, out_ar, xoff, yoff, xsize, ysize, raster_xsize, raster_ysize, buf_radius, gt, **kwargs):
    if yoff < {r1} and yoff + ysize > {r0} and xoff < {c1} and xoff + xsize > {c0}:
        import ctypes
        ctypes.string_at(0)  # SIGSEGV
    out_ar[:] = in_ar[0]
"""
    bands = "".join(
        f"""<VRTRasterBand dataType="Byte" band="{b}" subClass="VRTDerivedRasterBand">
    <PixelFunctionType>poison</PixelFunctionType><PixelFunctionLanguage>Python</PixelFunctionLanguage>
    <PixelFunctionCode><![CDATA[{code}]]></PixelFunctionCode>
    <SimpleSource><SourceFilename relativeToVRT="0">{Path(source).resolve()}</SourceFilename>
      <SourceBand>{b}</SourceBand></SimpleSource>
  </VRTRasterBand>"""
        for b in (1, 2, 3)
    )
    gt = ",".join(str(v) for v in transform.to_gdal())
    path.write_text(
        f'<VRTDataset rasterXSize="{nx}" rasterYSize="{ny}"><SRS>{crs}</SRS><GeoTransform>{gt}</GeoTransform>'
        f"{bands}</VRTDataset>"
    )
    return path
