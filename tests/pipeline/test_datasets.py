"""Dataset readers over tiny fixtures written in each exact on-disk format (DESIGN §5)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pycocotools import mask as coco_mask

from rsrs.pipeline.datasets import DatasetFormatError, DatasetNotFoundError, ReferringSample, open_dataset
from rsrs.pipeline.datasets.rrsisd import decode_segmentation


def seeded_pair(seed: int, shape=(20, 24)) -> tuple[np.ndarray, np.ndarray]:
    """A seeded RGB image (H, W, 3) uint8 and a rectangular bool mask (H, W) inside it."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    image = rng.integers(0, 256, (ny, nx, 3), dtype=np.uint8)
    mask = np.zeros(shape, dtype=bool)
    r, c = rng.integers(0, ny // 2), rng.integers(0, nx // 2)
    mask[r : r + rng.integers(2, ny // 2), c : c + rng.integers(2, nx // 2)] = True
    return image, mask


def write_tif(path: Path, array: np.ndarray) -> None:
    bands = array.transpose(2, 0, 1) if array.ndim == 3 else array[None]  # (b, H, W)
    with rasterio.open(
        path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands), dtype="uint8"
    ) as dst:
        dst.write(bands)


# ---- RRSIS-D ----------------------------------------------------------------------------------------------------


def rle(mask: np.ndarray, *, as_list: bool = False) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    if not as_list:
        return {"size": encoded["size"], "counts": encoded["counts"].decode()}
    flat = mask.astype(np.uint8).ravel(order="F")  # uncompressed RLE: run lengths starting with zeros
    runs, current, length = [], 0, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            runs.append(length)
            current, length = v, 1
    runs.append(length)
    return {"size": list(mask.shape), "counts": runs}


@pytest.fixture
def rrsisd(tmp_path):
    images_dir = tmp_path / "images" / "rrsisd" / "JPEGImages"
    images_dir.mkdir(parents=True)
    (tmp_path / "rrsisd").mkdir()
    truth, refs, images, annotations = {}, [], [], []
    for i, split in enumerate(["train", "val", "test", "test"]):
        image, mask = seeded_pair(i)
        Image.fromarray(image).save(images_dir / f"{i:05d}.jpg", quality=95)
        # the fourth mask is a pixel short of its image, as some RRSIS-D masks are
        stored = mask[:-1] if i == 3 else mask
        images.append({"id": i, "file_name": f"{i:05d}.jpg", "height": 20, "width": 24})
        annotations.append(
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 1 + i % 2,
                "iscrowd": 0,
                "segmentation": [rle(stored, as_list=i == 2)],
            }
        )
        sentences = [{"raw": f"The thing {i}", "sent": f"the thing {i}", "sent_id": 10 * i}]
        if split == "test":
            sentences.append({"raw": f"Another {i}", "sent": f"another {i}", "sent_id": 10 * i + 1})
        refs.append(
            {
                "image_id": i,
                "split": split,
                "sentences": sentences,
                "file_name": f"{i:05d}_{100 + i}.jpg",
                "ann_id": 100 + i,
                "ref_id": 1000 + i,
                "category_id": 1 + i % 2,
            }
        )
        truth[1000 + i] = (image, mask)
    with open(tmp_path / "rrsisd" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    categories = [{"id": 1, "name": "airport"}, {"id": 2, "name": "vehicle"}]
    (tmp_path / "rrsisd" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return tmp_path, truth


def test_rrsisd_reads_each_sentence_with_its_rle_mask(rrsisd):
    root, truth = rrsisd
    test = open_dataset("rrsisd", root, "test")
    assert len(test) == 4  # two refs x two sentences
    assert [s.sentence for s in test] == ["The thing 2", "Another 2", "The thing 3", "Another 3"]
    assert [s.id for s in test] == ["1002_20", "1002_21", "1003_30", "1003_31"]
    for sample in test:
        image, mask = truth[sample.metadata["ref_id"]]
        assert isinstance(sample, ReferringSample)
        assert sample.image.shape == (20, 24, 3) and sample.image.dtype == np.uint8
        assert sample.category == ("airport" if sample.metadata["ref_id"] % 2 == 0 else "vehicle")
        if sample.metadata["ref_id"] == 1003:  # a pixel short: resized onto the image, nearest neighbour
            assert sample.mask.shape == (20, 24) and (sample.mask != mask).mean() < 0.1
        else:
            assert np.array_equal(sample.mask, mask)


def test_readers_pickle_for_dataloader_workers(rrsisd):
    root, _ = rrsisd
    reader = open_dataset("rrsisd", root, "test")
    clone = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(clone[2].mask, reader[2].mask) and clone[2].sentence == reader[2].sentence


def test_rrsisd_splits_are_separate(rrsisd):
    root, _ = rrsisd
    assert [s.sentence for s in open_dataset("rrsisd", root, "train")] == ["The thing 0"]
    assert [s.sentence for s in open_dataset("rrsisd", root, "val")] == ["The thing 1"]


def test_decode_segmentation_accepts_string_bytes_and_list_counts():
    _, mask = seeded_pair(7)
    compressed = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    for seg in ([compressed], [rle(mask)], [rle(mask, as_list=True)]):
        assert np.array_equal(decode_segmentation(seg, *mask.shape), mask)


# ---- RefSegRS and RISBench --------------------------------------------------------------------------------------


@pytest.fixture
def refsegrs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    truth = {}
    for i in range(3):
        image, mask = seeded_pair(20 + i)
        write_tif(tmp_path / "images" / f"{i}.tif", image)
        write_tif(tmp_path / "masks" / f"{i}.tif", mask.astype(np.uint8) * 255)
        truth[str(i)] = (image, mask)
    (tmp_path / "output_phrase_train.txt").write_text("0 road along the river\n1 vehicle on the road\n")
    (tmp_path / "output_phrase_test.txt").write_text("2 the low vegetation\n2 grass near the building\n")
    (tmp_path / "output_phrase_val.txt").write_text("")
    return tmp_path, truth


def test_refsegrs_reads_tif_pairs_and_phrases(refsegrs):
    root, truth = refsegrs
    train = open_dataset("refsegrs", root, "train")
    assert [(s.id, s.sentence) for s in train] == [("0", "road along the river"), ("1", "vehicle on the road")]
    for s in train:
        image, mask = truth[s.id]
        assert np.array_equal(s.image, image) and np.array_equal(s.mask, mask)
        assert s.category is None


def test_refsegrs_repeated_image_ids_get_unique_sample_ids(refsegrs):
    root, truth = refsegrs
    test = open_dataset("refsegrs", root, "test")
    assert [s.id for s in test] == ["2", "2#1"]
    assert all(np.array_equal(s.mask, truth["2"][1]) for s in test)


def test_risbench_ids_carry_the_extension(tmp_path):
    (tmp_path / "img_rgb").mkdir()
    (tmp_path / "mask").mkdir()
    image, mask = seeded_pair(30)
    Image.fromarray(image).save(tmp_path / "img_rgb" / "P0001_12.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask" / "P0001_12.png")
    (tmp_path / "output_phrase_val.txt").write_text("P0001_12.png the storage tank on the left\n")
    (sample,) = open_dataset("risbench", tmp_path, "val")
    assert (sample.id, sample.sentence) == ("P0001_12.png", "the storage tank on the left")
    assert np.array_equal(sample.image, image) and np.array_equal(sample.mask, mask)


# ---- manifest ---------------------------------------------------------------------------------------------------


def test_manifest_resolves_paths_against_its_folder(tmp_path):
    image, mask = seeded_pair(40)
    (tmp_path / "img").mkdir()
    Image.fromarray(image).save(tmp_path / "img" / "a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "img" / "a_mask.png")
    rows = [
        {
            "id": "a",
            "image": "img/a.png",
            "mask": "img/a_mask.png",
            "sentence": "the pond",
            "split": "test",
            "category": "pond",
            "form": "category",
        },
        {"image": "img/a.png", "mask": "img/a_mask.png", "sentence": "other", "split": "train"},
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for path in (tmp_path, tmp_path / "manifest.jsonl"):
        (sample,) = open_dataset("manifest", path, "test")
        assert (sample.id, sample.sentence, sample.category) == ("a", "the pond", "pond")
        assert sample.metadata["form"] == "category"
        assert np.array_equal(sample.image, image) and np.array_equal(sample.mask, mask)
    assert open_dataset("manifest", tmp_path, "train")[0].id == "2"  # no id: the line number


# ---- errors -----------------------------------------------------------------------------------------------------


def test_unknown_format_missing_path_and_empty_split_are_clear_errors(refsegrs, tmp_path):
    root, _ = refsegrs
    with pytest.raises(DatasetFormatError, match="unknown dataset format 'coco'"):
        open_dataset("coco", root, "test")
    with pytest.raises(DatasetNotFoundError, match="not found"):
        open_dataset("refsegrs", tmp_path / "nowhere", "test")
    with pytest.raises(DatasetFormatError, match="no samples in split 'val'"):
        open_dataset("refsegrs", root, "val")
    with pytest.raises(DatasetNotFoundError, match="phrase file"):
        open_dataset("refsegrs", root, "holdout")


def test_malformed_manifest_line_names_file_and_line(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"image": "a.png", "sentence": "x", "split": "test"}\n')
    with pytest.raises(DatasetFormatError, match=r"manifest.jsonl:1: manifest line lacks mask"):
        open_dataset("manifest", tmp_path, "test")
