"""gIoU, cIoU and Pr@X against hand-computed values, including empty ground truths and predictions."""

import math

import numpy as np
import pytest

from rsrs.workflows.metrics import SampleScore, score_sample, summarize, summarize_by


def masks(shape, *boxes):
    """A bool mask of ``shape`` with the given (row0, row1, col0, col1) boxes set."""
    m = np.zeros(shape, dtype=bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


def test_sample_counts_pixels_of_overlap_and_union():
    truth = masks((10, 10), (0, 4, 0, 4))  # 16 px
    prediction = masks((10, 10), (2, 6, 2, 6))  # 16 px, overlap 2x2 = 4
    s = score_sample("a", prediction, truth)
    assert (s.intersection, s.union) == (4, 28)
    assert s.iou == pytest.approx(4 / 28)


def test_empty_truth_and_empty_prediction_is_a_perfect_score():
    empty = np.zeros((5, 7), dtype=bool)
    s = score_sample("e", empty, empty)
    assert (s.intersection, s.union, s.iou) == (0, 0, 1.0)


def test_prediction_on_empty_truth_and_empty_prediction_on_a_target_score_zero():
    target = masks((5, 5), (1, 3, 1, 3))
    empty = np.zeros((5, 5), dtype=bool)
    assert score_sample("fp", target, empty).iou == 0.0
    assert score_sample("fn", empty, target).iou == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        score_sample("x", np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_summary_matches_hand_computed_values():
    scores = [
        SampleScore("a", intersection=9, union=10, category="pond"),  # 0.9
        SampleScore("b", intersection=6, union=10, category="pond"),  # 0.6
        SampleScore("c", intersection=0, union=0, category="building"),  # empty/empty: 1.0
        SampleScore("d", intersection=0, union=20, category="building"),  # 0.0
        SampleScore("e", intersection=70, union=100, category=None),  # 0.7
    ]
    m = summarize(scores)
    assert m["samples"] == 5
    assert m["gIoU"] == pytest.approx((0.9 + 0.6 + 1.0 + 0.0 + 0.7) / 5)
    assert m["cIoU"] == pytest.approx((9 + 6 + 0 + 0 + 70) / (10 + 10 + 0 + 20 + 100))
    assert m["Pr@0.5"] == pytest.approx(4 / 5)
    assert m["Pr@0.6"] == pytest.approx(4 / 5)  # IoU exactly 0.6 counts (>=)
    assert m["Pr@0.7"] == pytest.approx(3 / 5)
    assert m["Pr@0.8"] == pytest.approx(2 / 5)
    assert m["Pr@0.9"] == pytest.approx(2 / 5)
    assert all(not math.isnan(v) for v in m.values())


def test_per_category_groups_known_categories():
    scores = [
        SampleScore("a", 9, 10, "pond"),
        SampleScore("b", 1, 10, "pond"),
        SampleScore("c", 0, 0, "building"),
        SampleScore("e", 5, 10, None),
    ]
    by = summarize_by(scores, "category")
    assert set(by) == {"pond", "building"}
    assert by["pond"]["gIoU"] == pytest.approx(0.5) and by["pond"]["cIoU"] == pytest.approx(10 / 20)
    assert by["building"] == {
        "samples": 1,
        "gIoU": 1.0,
        "cIoU": 1.0,
        "Pr@0.5": 1.0,
        "Pr@0.6": 1.0,
        "Pr@0.7": 1.0,
        "Pr@0.8": 1.0,
        "Pr@0.9": 1.0,
    }


def test_all_empty_unions_never_give_nan():
    m = summarize([SampleScore("a", 0, 0), SampleScore("b", 0, 0)])
    assert (m["gIoU"], m["cIoU"]) == (1.0, 1.0)
    assert summarize([])["cIoU"] == 0.0
