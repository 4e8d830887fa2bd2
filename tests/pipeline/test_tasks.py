"""The body of a `rsrs run` task: device-side quantisation, finishing tiles in threads or processes, read failures."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import shapely
import torch
import zarr

from rsrs.model.acceleration import attention_kernels, image_encoders, is_decoder_compiled
from rsrs.pipeline.mosaic import VARIABLE, create_mosaic, encode_probability, quantise
from rsrs.pipeline.polygons import load_tile
from rsrs.pipeline.resident import (
    GROUPS_QUEUED,
    ModelRef,
    ResidentModel,
    release_resident,
    resident_model,
    set_recorder,
)
from rsrs.pipeline.tasks import BatchTask, run_batch, tile_path
from rsrs.pipeline.tiling import plan_tiles
from rsrs.workflows.inputs import resolve_scenes
from rsrs.workflows.job import Job
from tests.model.test_lora import lora_merged
from tests.rasters import write_geotiff


def test_quantise_gives_the_same_codes_for_numpy_and_torch():
    rng = np.random.default_rng(0)
    halfway = (np.arange(254) + 0.5) / 254  # values that sit on a rounding boundary
    probs = np.concatenate([rng.random(10_000), halfway, [-0.2, 0.0, 1.0, 1.3]]).astype(np.float32)
    from_numpy = quantise(probs)
    from_torch = quantise(torch.from_numpy(probs)).numpy()
    np.testing.assert_array_equal(from_numpy, from_torch)
    assert from_numpy.min() == 0 and from_numpy.max() == 254
    codes = encode_probability(probs.reshape(1, 1, -1), np.ones((1, probs.size), bool))
    np.testing.assert_array_equal(codes.ravel(), from_numpy.astype(np.uint8))


def _task(folder, model: ModelRef) -> BatchTask:
    folder.mkdir()
    write_geotiff(folder / "scene.tif", shape=(70, 90), nodata=0, seed=5)
    job = Job.model_validate(
        {"inputs": [{"geotiff": str(folder / "scene.tif")}], "queries": ["ponds"], "output": {"dir": str(folder)}}
    )
    scene = resolve_scenes(job).scenes[0]
    tiles = plan_tiles(scene.grid, tile_size=40, overlap=8)
    create_mosaic(folder / "masks.zarr", scene.id, scene.grid, query_ids=["q0", "q1"], query_texts=["a", "b"],
                  chunk_size=tiles.core_size, fingerprint="test", source="scene.tif")  # fmt: skip
    return BatchTask(
        scene=scene,
        tiles=tuple(tiles),
        query_texts=("the dark ponds", "red roofs"),
        model=model,
        store=str(folder / "masks.zarr"),
        tiles_dir=str(folder / "tiles"),
        threshold=0.49,
        batch_size=3,
    )


@pytest.fixture
def finisher_kind():
    """Load the resident model with a thread or a process finisher pool (as on a GPU worker), whatever the device."""

    def use(kind: str, model: ModelRef):
        release_resident()
        return resident_model(model, finisher=kind)

    yield use
    release_resident()


def test_tiles_finished_in_processes_equal_tiles_finished_in_threads(tmp_path, finisher_kind):
    outputs = {}
    for kind in ("threads", "processes"):
        task = _task(tmp_path / kind, ModelRef("tiny", device="cpu"))
        resident = finisher_kind(kind, task.model)
        result = run_batch(task)
        assert resident.finisher.kind == kind
        assert result.computed + result.skipped == len(task.tiles) and result.computed > 0
        mosaic = zarr.open_array(task.store, path=f"{task.scene.id}/{VARIABLE}", mode="r")[:]
        sidecars = [load_tile(tile_path(task.tiles_dir, tile)) for tile in task.tiles]
        assert {t.key: len(t) for t in sidecars} == {t.key: t.objects for t in result.tiles}  # counts sent back
        polygons = sorted(
            (t.key, int(q), shapely.normalize(g).wkb, s)
            for t in sidecars
            for q, g, s in zip(t.query, t.geometry, t.prob_sum, strict=True)
        )
        outputs[kind] = mosaic, polygons, sorted(p.name for p in (tmp_path / kind / "tiles").iterdir())
    np.testing.assert_array_equal(outputs["threads"][0], outputs["processes"][0])
    assert outputs["threads"][1] == outputs["processes"][1] and outputs["threads"][1]
    assert outputs["threads"][2] == outputs["processes"][2]


def test_a_group_with_empty_tiles_gives_its_other_tiles_the_codes_they_get_queued_one_by_one(tmp_path, finisher_kind):
    """Only the tiles of a group with valid pixels are gathered and queued; each keeps its own codes and its place."""
    from tests.rasters import synthetic_pixels

    mosaics = {}
    for batch_size in (3, 1):
        task = _task(tmp_path / str(batch_size), ModelRef("demo", device="cpu"))  # trained: codes follow pixels
        task = replace(task, batch_size=batch_size)
        pixels = synthetic_pixels((70, 90), count=3, dtype="uint8", seed=5)
        pixels[:, :, :45] = 0  # nodata: the scene's left column of tiles has no valid pixel
        write_geotiff(task.scene.source, shape=(70, 90), nodata=0, data=pixels)
        finisher_kind("threads", task.model)
        result = run_batch(task)
        assert result.skipped > 0 and result.computed > 0
        mosaics[batch_size] = zarr.open_array(task.store, path=f"{task.scene.id}/{VARIABLE}", mode="r")[:]
    groups = [task.tiles[i : i + 3] for i in range(0, len(task.tiles), 3)]
    assert any(any(t.core.col_off < 45 for t in g) and any(t.core.col_off >= 45 for t in g) for g in groups)
    difference = np.abs(mosaics[3].astype(int) - mosaics[1].astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() >= 0.999  # batch size may move a code by one


def test_a_failed_read_ends_the_task_after_finishing_every_tile_queued_before_it(tmp_path, finisher_kind):
    """Groups already queued on the model when a later read fails are handed over and finished, not dropped."""
    task = replace(_task(tmp_path / "t", ModelRef("tiny", device="cpu")), batch_size=1)
    scene = tmp_path / "t" / "scene.tif"
    write_geotiff(scene, shape=(70, 90), nodata=0, seed=5, tiled=False)  # the same pixels, in strips of 30 rows
    with rasterio.open(scene) as src:
        offset, size = (int(src.get_tag_item(f"BLOCK_{item}_0_2", "TIFF", bidx=1)) for item in ("OFFSET", "SIZE"))
    raw = bytearray(scene.read_bytes())
    raw[offset : offset + size] = b"\xff" * size  # rows 60-69 no longer decode
    scene.write_bytes(raw)
    finisher_kind("threads", task.model)
    result = run_batch(task)
    readable = [t.key for t in task.tiles if t.read.row_off + t.read.height <= 60]
    assert result.failure is not None and len(readable) < len(task.tiles)
    assert len(readable) > GROUPS_QUEUED  # several groups were queued when the read failed
    assert sorted(t.key for t in result.tiles) == sorted(readable)
    assert sorted(p.stem for p in (tmp_path / "t" / "tiles").iterdir()) == sorted(readable)


def test_a_recorder_sees_each_batch_inside_its_turn_each_read_and_the_tasks_waits_for_both(tmp_path, finisher_kind):
    events = []
    task = _task(tmp_path / "t", ModelRef("tiny", device="cpu"))
    finisher_kind("threads", task.model)
    set_recorder(lambda kind, start, end, key: events.append((kind, start, end)))
    try:
        result = run_batch(task)
    finally:
        set_recorder(None)
    kinds = ("task", "read", "read_wait", "turn_wait", "model", "device")
    by_kind = {kind: [(s, e) for k, s, e in events if k == kind] for kind in kinds}
    groups = -(-len(task.tiles) // task.batch_size)
    assert result.computed == len(task.tiles)  # every group had data: one turn and one device batch each
    assert len(by_kind["task"]) == 1 and len(by_kind["read"]) == len(by_kind["device"]) == groups
    assert len(by_kind["model"]) == len(by_kind["turn_wait"]) == len(by_kind["read_wait"]) == groups
    for (turn_start, turn_end), (start, end) in zip(by_kind["model"], by_kind["device"], strict=True):
        assert turn_start <= start < end <= turn_end
    for (_, asked), (turn_start, _) in zip(by_kind["turn_wait"], by_kind["model"], strict=True):
        assert asked <= turn_start  # the wait for the turn ends as the turn begins
    for (_, read_end), (_, resumed) in zip(by_kind["read"], by_kind["read_wait"], strict=True):
        assert read_end <= resumed  # a task resumes once its read is done
    assert sum(e - s for s, e in by_kind["device"]) == pytest.approx(result.model_s)


def test_a_compiled_model_ref_compiles_the_image_encoders_on_fused_sam_attention_and_the_decoder(finisher_kind):
    """model.compile reaches the worker's model: set up before the first batch (which compiles), never after,
    with SAM's relative positions as attention channels. A CPU worker without compile keeps its encoders as loaded.
    Either way a worker, which never trains, runs its LoRA adapters merged into their base weights."""
    resident = finisher_kind("threads", ModelRef("tiny", device="cpu", compile=True))
    sam = {kernel for kernel in attention_kernels(resident.model) if kernel.startswith("SamVision")}
    assert sam == {"SamVisionSdpaAttention: fused channels"}, sam
    encoders = image_encoders(resident.model).values()
    assert len(encoders) == 2 and all(encoder._compiled_call_impl is not None for encoder in encoders)
    assert is_decoder_compiled(resident.model)
    plain = finisher_kind("threads", ModelRef("tiny", device="cpu"))
    assert all(encoder._compiled_call_impl is None for encoder in image_encoders(plain.model).values())
    assert not is_decoder_compiled(plain.model)
    assert "SamVisionSdpaAttention: sdpa" in attention_kernels(plain.model)
    for worker in (resident, plain):
        assert lora_merged(worker.model) == {True}


@pytest.mark.slow  # compiling the tiny encoders on a 2-core CPU takes minutes
def test_tiles_from_a_compiled_worker_model_equal_eager_tiles(tmp_path, finisher_kind, monkeypatch):
    monkeypatch.setenv("RSRS_COMPILE_CACHE", str(tmp_path / "cache"))
    mosaics = {}
    for compiled in (False, True):
        task = _task(tmp_path / str(compiled), ModelRef("tiny", device="cpu", compile=compiled))
        finisher_kind("threads", task.model)
        assert run_batch(task).computed > 0
        mosaics[compiled] = zarr.open_array(task.store, path=f"{task.scene.id}/{VARIABLE}", mode="r")[:].astype(int)
    difference = np.abs(mosaics[True] - mosaics[False])
    assert difference.max() <= 1 and (difference == 0).mean() >= 0.999


@pytest.mark.gpu
def test_gpu_codes_from_concurrent_threads_equal_each_batchs_own_codes():
    """Two tasks' threads share one graphed model and each queues all its batches before collecting any; copies
    overlap the other batches, codes must not mix, whether a batch was read into pinned memory
    (:meth:`ResidentModel.host_batch`) or not."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import pairwise

    from tests.model.conftest import random_tiles

    queries = ("the pond", "the road")
    release_resident()
    resident = resident_model(ModelRef("demo", device="cuda"))  # trained: its masks depend on the tiles
    model, text = resident.model, resident.text_features(queries)
    batches = [random_tiles(seed, batch=4 if seed % 3 else 3).numpy() for seed in range(12)]
    for i in range(0, len(batches), 2):  # half of them from pinned memory, as a task reads them
        pinned = resident.host_batch(batches[i].shape)
        pinned[:] = batches[i]
        assert torch.from_numpy(pinned).pin_memory().data_ptr() == pinned.ctypes.data  # pinned: copied up directly
        batches[i] = pinned
    with torch.inference_mode():
        expected = [quantise(model.predict(torch.from_numpy(b).cuda(), text)).to(torch.uint8).cpu() for b in batches]

    def queued_then_collected(part: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        queued = [resident.queue_codes(queries, 4, b) for b in part]  # all on the GPU's queue at once
        return [q.result() for q in queued]

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(queued_then_collected, [batches[:6], batches[6:]])  # pinned and not in each
    got = first + second
    release_resident()
    assert all(not torch.equal(a[:3], b[:3]) for a, b in pairwise(expected)), "batches must differ"
    for (codes, gpu_s), want in zip(got, expected, strict=True):
        if len(want) == 4:  # the captured batch size: the very kernels eager runs
            np.testing.assert_array_equal(codes, want.numpy())
        else:  # padded to 4: other kernels, float rounding may move a code by one
            assert np.abs(codes.astype(int) - want.numpy()).max() <= 1
        assert gpu_s > 0


def _warm_demo_resident(queries: tuple[str, ...], shape: tuple[int, ...], *, tasks: int = 1) -> ResidentModel:
    """A freshly loaded resident demo model on the GPU, warmed up for ``tasks`` tasks' batches of ``shape``."""
    release_resident()
    resident = resident_model(ModelRef("demo", device="cuda"))
    resident.warm_up(queries, batch=shape[0], tile=shape[-1], tasks=tasks)
    return resident


@pytest.mark.gpu
def test_gpu_warm_up_pins_every_host_batch_the_tasks_sharing_the_gpu_hold():
    """After the warm-up for two tasks, two tasks' worth of reads and queued batches pin no new host memory, nor
    does a scene's last group of a single tile (a smaller size, which torch's host allocator would otherwise pin
    afresh): the run's reads reuse what the warm-up pinned instead of waiting for fresh pinned blocks."""
    queries, tasks, shape = ("the pond",), 2, (4, 3, 256, 256)
    resident = _warm_demo_resident(queries, shape, tasks=tasks)
    pinned_before = torch.cuda.host_memory_stats()["num_host_alloc"]
    held = [resident.host_batch(shape) for _ in range(tasks * (GROUPS_QUEUED + 1) - 1)]  # each task's queued, read
    held.append(resident.host_batch((1, *shape[1:])))  # the last group of a scene
    queued = [resident.queue_codes(queries, shape[0], rgb) for rgb in held[-tasks * GROUPS_QUEUED :]]
    codes = [q.result()[0] for q in queued]
    pinned_after = torch.cuda.host_memory_stats()["num_host_alloc"]
    release_resident()
    assert len(codes) == tasks * GROUPS_QUEUED and codes[0].shape == (shape[0], 1, 256, 256)
    assert held[-1].shape == (1, 3, 256, 256) and codes[-1].shape == (1, 1, 256, 256)
    assert pinned_after == pinned_before


@pytest.mark.gpu
def test_gpu_reads_take_turns_until_a_batch_is_queued_and_again_once_it_is_done(tmp_path):
    """With nothing on the GPU, a second read waits for the one reading; a queued batch lets it through."""
    from concurrent.futures import ThreadPoolExecutor

    queries, shape = ("the pond",), (32, 3, 1024, 1024)  # a batch the GPU takes a while over
    scene = _task(tmp_path / "t", ModelRef("demo", device="cuda")).scene  # a local file
    resident = _warm_demo_resident(queries, shape)
    second_read = threading.Event()

    def read() -> None:
        with resident.read_turn(scene):
            second_read.set()

    with ThreadPoolExecutor(1) as pool, resident.read_turn(scene):  # the first read, alone: the GPU has nothing
        pool.submit(read)
        assert not second_read.wait(0.2)
        torch.cuda._sleep(2_000_000_000)  # about a second of GPU work ahead of the batch, so it stays queued
        queued = resident.queue_codes(queries, shape[0], np.zeros(shape, np.uint8))
        assert second_read.wait(5.0)  # the GPU has a batch: the second read goes on while the first still reads
    queued.result()
    second_read.clear()
    with ThreadPoolExecutor(1) as pool, resident.read_turn(scene):  # every batch done: alone again
        pool.submit(read)
        assert not second_read.wait(0.2)
    release_resident()
