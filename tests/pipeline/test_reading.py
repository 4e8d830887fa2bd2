import multiprocessing
import os
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import rasterio

from rsrs.pipeline import reading
from rsrs.pipeline.geometry import PixelWindow
from rsrs.pipeline.reading import ReadingThreads, SceneReader, TileReadError, read_tile
from rsrs.pipeline.scaling import ScalingSpec, apply_scaling
from rsrs.pipeline.scenes import BandSource, scene_from_raster, scene_from_sources
from rsrs.pipeline.tiling import plan_tiles
from tests.pipeline.test_read_gate import thread_niceness
from tests.rasters import invalid_region, write_band_files, write_geotiff
from tests.servers import range_file_server


def _expected(path, window: PixelWindow):
    """Plain rasterio read of a window inside the raster: RGB values and the dataset mask."""
    with rasterio.open(path) as ds:
        win = ((window.row_off, window.row_end), (window.col_off, window.col_end))
        return ds.read([1, 2, 3], window=win), ds.dataset_mask(window=win) > 0


@pytest.mark.parametrize("kwargs", [{}, {"nodata": 0}, {"alpha": True}, {"mask": True}])
def test_uint8_tile_equals_source_pixels_and_mask(tmp_path, kwargs):
    path = write_geotiff(tmp_path / "a.tif", shape=(200, 240), **kwargs)
    window = PixelWindow(20, 10, 100, 120)
    rgb, valid = read_tile(scene_from_raster(str(path)), window)
    values, mask = _expected(path, window)
    assert rgb.shape == (3, 100, 120) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(valid, mask)
    np.testing.assert_array_equal(rgb, np.where(mask, values, 0))
    if kwargs:
        np.testing.assert_array_equal(~valid, invalid_region((200, 240))[20:120, 10:130])


def test_read_is_boundless_outside_the_scene(tmp_path):
    path = write_geotiff(tmp_path / "a.tif", shape=(50, 60))
    scene = scene_from_raster(str(path))
    rgb, valid = read_tile(scene, PixelWindow(-10, 40, 80, 40))  # passes the top, bottom and right edges
    assert valid.shape == (80, 40)
    assert valid[10:60, 0:20].all()
    assert not valid[:10].any() and not valid[60:].any() and not valid[:, 20:].any()
    assert (rgb[:, ~valid] == 0).all()
    values, _ = _expected(path, PixelWindow(0, 40, 50, 20))
    np.testing.assert_array_equal(rgb[:, 10:60, 0:20], values)


def test_window_entirely_outside_is_all_invalid(tmp_path):
    scene = scene_from_raster(str(write_geotiff(tmp_path / "a.tif", shape=(50, 60))))
    rgb, valid = read_tile(scene, PixelWindow(100, 100, 16, 16))
    assert not valid.any() and not rgb.any()


def test_uint16_is_stretched_with_the_scene_scaling(tmp_path):
    path = write_geotiff(tmp_path / "a.tif", dtype="uint16", shape=(128, 128), nodata=0)
    scene = scene_from_raster(str(path))
    window = PixelWindow(0, 0, 128, 128)
    rgb, valid = read_tile(scene, window)
    with rasterio.open(path) as ds:
        raw = ds.read([1, 2, 3])
    np.testing.assert_array_equal(rgb[:, valid], apply_scaling(raw, scene.scaling)[:, valid])
    assert rgb[:, valid].min() == 0 and rgb[:, valid].max() == 255  # 2-98 % stretch saturates the tails


def test_same_scaling_for_every_tile_of_a_scene(tmp_path):
    path = write_geotiff(tmp_path / "a.tif", dtype="uint16", shape=(128, 128))
    scene = scene_from_raster(str(path))
    whole, _ = read_tile(scene, PixelWindow(0, 0, 128, 128))
    part, _ = read_tile(scene, PixelWindow(64, 64, 64, 64))
    np.testing.assert_array_equal(whole[:, 64:, 64:], part)


def test_float_range_scaling(tmp_path):
    path = write_geotiff(tmp_path / "f.tif", dtype="float32", count=1, shape=(32, 32))
    scene = scene_from_raster(str(path), scaling=ScalingSpec(method="range", value_range=(0.0, 1.0)))
    rgb, valid = read_tile(scene, PixelWindow(0, 0, 32, 32))
    with rasterio.open(path) as ds:
        expected = np.rint(np.clip(ds.read(1), 0, 1) * 255).astype(np.uint8)
    assert valid.all()
    for band in rgb:  # one band, repeated as R, G, B
        np.testing.assert_array_equal(band, expected)


def test_coarser_band_is_resampled_onto_the_scene_grid(tmp_path):
    b04, b03, b02 = write_band_files(tmp_path, shape=(64, 64), res=10.0)  # B03 is 32 x 32 at 20 m
    scene = scene_from_sources(
        "s2", [BandSource(str(p), 1) for p in (b04, b03, b02)], scaling=ScalingSpec(), source="test"
    )
    rgb, valid = read_tile(scene, PixelWindow(-8, -8, 80, 80))
    assert valid[8:72, 8:72].all() and not valid[:8].any()
    with rasterio.open(b04) as ds:
        np.testing.assert_array_equal(rgb[0, 8:72, 8:72], ds.read(1))
    with rasterio.open(b03) as ds:
        coarse = ds.read(1).astype(float)
    upsampled = rgb[1, 8:72, 8:72].astype(float)
    # each 20 m pixel covers 2 x 2 scene pixels; their mean stays close to the coarse value
    block_means = upsampled.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    assert np.abs(block_means[2:-2, 2:-2] - coarse[2:-2, 2:-2]).mean() < 20


def test_reading_a_cog_over_http_equals_reading_the_file(tmp_path):
    path = write_geotiff(tmp_path / "cog.tif", shape=(300, 300), overviews=True, mask=True)
    window = PixelWindow(100, 150, 256, 256)
    local = read_tile(scene_from_raster(str(path)), window)
    with range_file_server(tmp_path) as url:
        remote = read_tile(scene_from_raster(f"{url}/cog.tif"), window)
    np.testing.assert_array_equal(remote[0], local[0])
    np.testing.assert_array_equal(remote[1], local[1])


def _assert_each_equals_its_own_read(scene, windows, rgb, valid) -> None:
    """Batch entry b holds exactly what :func:`read_tile` gives for windows[b]."""
    for b, window in enumerate(windows):
        one_rgb, one_valid = read_tile(scene, window)
        np.testing.assert_array_equal(rgb[b], one_rgb)
        np.testing.assert_array_equal(valid[b], one_valid)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    "kwargs", [{}, {"nodata": 0}, {"alpha": True}, {"mask": True}, {"dtype": "uint16", "nodata": 0}]
)
def test_a_scene_readers_batches_equal_tiles_read_one_by_one(tmp_path, kwargs, threads):
    path = write_geotiff(tmp_path / "a.tif", shape=(150, 230), blocksize=32, **kwargs)
    scene = scene_from_raster(str(path))
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=48, overlap=8)]  # 5 rows x 8 cols, boundless edges
    with SceneReader(scene, threads=threads) as reader:
        batches = [reader.read(windows[i : i + 16]) for i in range(0, len(windows), 16)]  # as a task reads
    rgb, valid = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    assert rgb.shape == (40, 3, 48, 48) and valid.shape == (40, 48, 48)
    _assert_each_equals_its_own_read(scene, windows, rgb, valid)


@pytest.mark.parametrize("kwargs", [{}, {"nodata": 0}])
def test_a_scene_reader_decodes_every_pixel_into_the_arrays_its_empty_gives(tmp_path, kwargs):
    """A GPU worker's batches go into pinned memory it allocates: each pixel of that (dirty) array is overwritten."""
    path = write_geotiff(tmp_path / "a.tif", shape=(100, 130), blocksize=32, **kwargs)
    scene = scene_from_raster(str(path))
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=48, overlap=8)]  # boundless at the right and bottom
    given: list[np.ndarray] = []

    def dirty_empty(shape):
        given.append(np.full(shape, 77, dtype=np.uint8))
        return given[-1]

    with SceneReader(scene, threads=2, empty=dirty_empty) as reader:
        rgb, valid = reader.read(windows)
    assert len(given) == 1 and rgb is given[0]
    _assert_each_equals_its_own_read(scene, windows, rgb, valid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux only")
def test_a_scene_readers_threads_read_at_the_lower_priority_asked(tmp_path, monkeypatch):
    """A GPU worker's reads give the CPU way to its thread that queues batches; the caller keeps its priority."""
    scene = scene_from_raster(str(write_geotiff(tmp_path / "a.tif", shape=(96, 160))))
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=32, overlap=4)]
    read_at: set[int] = set()
    read_into = reading._read_into

    def recording(*args):
        read_at.add(thread_niceness())
        read_into(*args)

    monkeypatch.setattr(reading, "_read_into", recording)
    caller = thread_niceness()
    with SceneReader(scene, threads=3, niceness=4) as reader:
        rgb, valid = reader.read(windows)
    assert read_at == {min(19, caller + 4)}
    assert thread_niceness() == caller
    _assert_each_equals_its_own_read(scene, windows, rgb, valid)


def test_resampled_bands_read_by_a_scene_reader_equal_tiles_read_one_by_one(tmp_path):
    b04, b03, b02 = write_band_files(tmp_path, shape=(64, 64), res=10.0)  # B03 is 32 x 32 at 20 m
    scene = scene_from_sources(
        "s2", [BandSource(str(p), 1) for p in (b04, b03, b02)], scaling=ScalingSpec(), source="test"
    )
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=24, overlap=4)]  # 4 rows x 4 cols
    with SceneReader(scene, threads=2) as reader:
        rgb, valid = reader.read(windows)  # through a WarpedVRT
    _assert_each_equals_its_own_read(scene, windows, rgb, valid)


def test_each_reader_thread_opens_the_files_once_and_reads_one_band_of_columns(tmp_path, monkeypatch):
    """A thread keeps its handles across batches (its tiles share their decoded blocks) and reads the tiles whose
    centres lie in its band of columns (its left and upper neighbours' blocks are in its cache)."""
    path = write_geotiff(tmp_path / "a.tif", shape=(96, 400))
    scene = scene_from_raster(str(path))
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=24, overlap=4)]  # 6 rows x 25 cols
    opened: list[str] = []
    read_by: dict[int, set[str]] = {}
    real_open, real_read = reading.open_raster, reading._read_into

    def counting_open(href):
        opened.append(threading.current_thread().name)
        return real_open(href)

    def recording_read(scene, datasets, window, rgb, valid):
        read_by.setdefault(window.col_off + window.width // 2, set()).add(threading.current_thread().name)
        real_read(scene, datasets, window, rgb, valid)

    monkeypatch.setattr(reading, "open_raster", counting_open)
    monkeypatch.setattr(reading, "_read_into", recording_read)
    with SceneReader(scene, threads=4, lender=ReadingThreads()) as reader:  # threads rsrs-read-0..3, in order
        for i in range(0, len(windows), 16):
            reader.read(windows[i : i + 16])
    assert sorted(opened) == [f"rsrs-read-{k}_0" for k in range(4)]  # once per thread, for all 10 batches
    for centre, threads in read_by.items():
        assert threads == {f"rsrs-read-{min(3, centre // 100)}_0"}  # bands of 100 columns


def test_a_failed_read_raises_after_every_thread_stopped_and_closing_then_closes_their_files(tmp_path, monkeypatch):
    """One band's tiles fail at once while the other threads still read: the read raises only when they are done
    (none writes into the batch afterwards), and closing the reader closes every file they opened."""
    path = write_geotiff(tmp_path / "a.tif", shape=(96, 400))
    scene = scene_from_raster(str(path))
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=24, overlap=4)][:25]  # the first row: 4 bands
    finished, handles = [], []
    real_read = reading._read_into

    def failing_or_slow_read(scene, datasets, window, rgb, valid):
        handles.extend(datasets.values())
        if window.col_off + window.width // 2 < 100:  # the first thread's band of columns
            raise TileReadError(scene, window, "corrupt block")
        time.sleep(0.02)
        real_read(scene, datasets, window, rgb, valid)
        finished.append(window)

    monkeypatch.setattr(reading, "_read_into", failing_or_slow_read)
    reader = SceneReader(scene, threads=4)
    with pytest.raises(TileReadError):
        reader.read(windows)
    assert len(finished) == sum(w.col_off + w.width // 2 >= 100 for w in windows) > 0
    reader.close()
    assert len({id(h) for h in handles}) == 4 and all(h.closed for h in handles)


def test_a_tasks_reader_reads_in_the_threads_the_last_reader_gave_back_and_opens_its_own_files(tmp_path, monkeypatch):
    """A thread's first open sets up GDAL and PROJ holding the GIL, so readers reuse threads, not their files: the
    next task's reader gets the same threads, opens the files again in them, and reads what a fresh read gives."""
    scene = scene_from_raster(str(write_geotiff(tmp_path / "a.tif", shape=(96, 160), nodata=0)))
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=32, overlap=4)]
    lender, opened = ReadingThreads(), []
    real_open = reading.open_raster

    def recording_open(href):
        opened.append(threading.get_ident())
        return real_open(href)

    monkeypatch.setattr(reading, "open_raster", recording_open)
    batches = []
    for _ in range(2):  # two tasks in turn
        with SceneReader(scene, threads=3, lender=lender) as reader:
            batches.append(reader.read(windows))
    assert len(opened) == 6 and set(opened[:3]) == set(opened[3:]) and len(set(opened)) == 3
    with SceneReader(scene, threads=2, lender=lender) as one, SceneReader(scene, threads=2, lender=lender) as two:
        one.read(windows), two.read(windows)  # two tasks at once: four distinct threads, one made anew
    assert len(set(opened[6:])) == 4 and len(set(opened)) == 4
    for rgb, valid in batches:  # (its plain reads open files in this thread)
        _assert_each_equals_its_own_read(scene, windows, rgb, valid)


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="no fork here")
def test_a_forked_child_reads_with_threads_of_its_own(tmp_path):
    """A child forked after reads has none of its parent's idle reading threads: it must not wait on them."""
    scene = scene_from_raster(str(write_geotiff(tmp_path / "a.tif", shape=(64, 64))))
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=32, overlap=4)]
    with SceneReader(scene, threads=2) as reader:
        expected, _ = reader.read(windows)  # leaves the process's reading threads idle
    queue = multiprocessing.get_context("fork").SimpleQueue()
    child = multiprocessing.get_context("fork").Process(target=_read_in_child, args=(scene, windows, queue))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking a process with threads: what is tested
        child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    np.testing.assert_array_equal(queue.get(), expected)


def _read_in_child(scene, windows, queue) -> None:
    with SceneReader(scene, threads=2) as reader:
        queue.put(reader.read(windows)[0])


def test_warmed_reading_threads_are_set_up_and_the_first_reader_reads_in_them(tmp_path, monkeypatch):
    """A GPU worker's warm-up makes its tasks' reading threads and sets GDAL and PROJ up in each (a thread's first
    open pays for that, holding the GIL): the run's first reader then reads in those threads, making none."""
    scene = scene_from_raster(str(write_geotiff(tmp_path / "a.tif", shape=(96, 160))))
    windows = [t.read for t in plan_tiles(scene.grid, tile_size=32, overlap=4)]
    set_up, opened = [], []
    real_set_up, real_open = reading._set_up_this_thread, reading.open_raster
    monkeypatch.setattr(reading, "_set_up_this_thread", lambda: (set_up.append(threading.get_ident()), real_set_up()))
    monkeypatch.setattr(reading, "open_raster", lambda href: (opened.append(threading.get_ident()), real_open(href))[1])
    lender = ReadingThreads()
    lender.warm(3, niceness=0)
    assert len(set(set_up)) == 3 and threading.get_ident() not in set_up
    with SceneReader(scene, threads=3, lender=lender) as reader:
        reader.read(windows)
    assert set(opened) == set(set_up)
