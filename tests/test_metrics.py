"""utils/metrics.py: VOC AP (all-point, 11-point), difficult handling, COCO AP, confusion matrix."""
import numpy as np
import pytest

from utils.metrics import coco_evaluate, confusion_matrix, evaluate_detections, voc_ap
from utils.data.voc import VocRecord


def gt(boxes, labels, difficult=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    diff = np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool)
    return VocRecord("x.jpg", boxes, labels, diff, 100, 100)


def det(boxes, scores, classes):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "classes": np.asarray(classes, np.int64)}


A, B, C = [10, 10, 40, 40], [50, 50, 90, 80], [0, 60, 20, 95]
FAR = [70, 0, 99, 20]


def test_perfect_detections_give_ap_one():
    gts = [gt([A, B], [0, 1]), gt([C], [1])]
    dets = [det([A, B], [0.9, 0.8], [0, 1]), det([C], [0.7], [1])]
    for use_07 in (False, True):
        r = evaluate_detections(dets, gts, 2, use_07=use_07)
        assert r["map"] == pytest.approx(1.0)
        assert [pc["ap"] for pc in r["per_class"]] == pytest.approx([1.0, 1.0])
    pc = r["per_class"][1]
    assert (pc["precision"], pc["recall"], pc["f1"], pc["num_gt"], pc["tp"], pc["fp"]) == (1, 1, 1, 2, 2, 0)
    coco = coco_evaluate(dets, gts, 2)
    assert coco["map_50"] == pytest.approx(1.0) and coco["map_50_95"] == pytest.approx(1.0)


def test_false_positive_ranked_first_hand_computed():
    # 3 GT of one class; ranked detections FP (0.9), TP (0.8), TP (0.7):
    #   precision 0, 1/2, 2/3 at recall 0, 1/3, 2/3
    #   all-point: 1/3 * 2/3 + 1/3 * 2/3 = 4/9;  11-point: 7 of 11 recall levels <= 2/3 -> 7/11 * 2/3
    gts = [gt([A, B], [0, 0]), gt([C], [0])]
    dets = [det([FAR, A, B], [0.9, 0.8, 0.7], [0, 0, 0]), det([], [], [])]
    r = evaluate_detections(dets, gts, 1)
    assert r["map"] == pytest.approx(4 / 9)
    assert evaluate_detections(dets, gts, 1, use_07=True)["map"] == pytest.approx(7 / 11 * 2 / 3)
    curve = r["pr_curves"][0]
    np.testing.assert_allclose(curve["precision"], [0, 1 / 2, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(curve["recall"], [0, 1 / 3, 2 / 3], rtol=1e-6)
    # P/R/F1 at score >= 0.75: FP + TP -> P = 1/2, R = 1/3, F1 = 2PR/(P+R) = 0.4
    pc = evaluate_detections(dets, gts, 1, score_thresh_for_prf=0.75)["per_class"][0]
    assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx((0.5, 1 / 3, 0.4))
    assert pc["num_detections_at_thresh"] == 2 and pc["num_detections"] == 3


def test_direct_voc_ap_values():
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    # 11-point: recall levels 0..0.5 (6 of 11) at precision 1, 0.6..1 at 0.5 -> (6 + 2.5) / 11
    assert voc_ap([0.5, 1.0], [1.0, 0.5], use_07=True) == pytest.approx(8.5 / 11)
    assert voc_ap([], []) == 0.0


def test_difficult_ground_truth_is_ignored():
    # a detection on a difficult object, ranked first, is neither TP nor FP
    gts = [gt([A, B], [0, 0], difficult=[False, True])]
    dets = [det([B, A], [0.9, 0.6], [0, 0])]
    r = evaluate_detections(dets, gts, 1)
    pc = r["per_class"][0]
    assert r["map"] == pytest.approx(1.0)  # would be 0.5 if the difficult match were an FP
    assert (pc["num_gt"], pc["num_difficult"], pc["tp"], pc["fp"]) == (1, 1, 1, 0)
    assert coco_evaluate(dets, gts, 1)["map_50"] == pytest.approx(1.0)  # iscrowd = ignored
    # a duplicate on a non-difficult object is an FP
    r2 = evaluate_detections([det([A, A], [0.9, 0.8], [0, 0])], [gt([A], [0])], 1, score_thresh_for_prf=0.5)
    assert (r2["per_class"][0]["tp"], r2["per_class"][0]["fp"]) == (1, 1)


def test_voc_map50_agrees_with_pycocotools_ap50():
    # FP first then all GT found: precision is 2/3 at every recall -> both interpolations exact
    gts = [gt([A, B], [0, 1]), gt([C], [0])]
    dets = [det([FAR, A, B], [0.95, 0.9, 0.8], [0, 0, 1]), det([C], [0.7], [0])]
    voc = evaluate_detections(dets, gts, 2)
    coco = coco_evaluate(dets, gts, 2)
    assert voc["per_class"][0]["ap"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(coco["per_class_map_50"], [pc["ap"] for pc in voc["per_class"]], atol=1e-6)
    assert coco["map_50"] == pytest.approx(voc["map"], abs=1e-6)
    # half the objects found at precision 1: VOC 0.5, COCO 51 of 101 recall points -> 51/101
    half = evaluate_detections([det([A], [0.9], [0]), det([], [], [])], [gt([A], [0]), gt([C], [0])], 1)
    half_coco = coco_evaluate([det([A], [0.9], [0]), det([], [], [])], [gt([A], [0]), gt([C], [0])], 1)
    assert half["map"] == pytest.approx(0.5) and half_coco["map_50"] == pytest.approx(51 / 101)
    assert "Average Precision" in coco["summary"]


def test_coco_strict_iou_lowers_map_50_95():
    # IoU of [10,10,40,40] with [10,10,40,43] = 900/990 = 0.909: a hit at 0.5..0.9, a miss at 0.95
    for max_det in (100, 300):
        r = coco_evaluate([det([[10, 10, 40, 43]], [0.9], [0])], [gt([A], [0])], 1, max_det=max_det)
        assert r["map_50"] == pytest.approx(1.0) and r["map_75"] == pytest.approx(1.0)
        assert r["map_50_95"] == pytest.approx(9 / 10)
        assert r["per_class_map_50_95"] == pytest.approx([9 / 10])


def test_no_detections_and_no_ground_truth_do_not_crash():
    gts = [gt([A], [0]), gt([], [])]
    empty = [det([], [], []), det([], [], [])]
    r = evaluate_detections(empty, gts, 2)
    assert r["map"] == 0.0 and r["per_class"][0]["ap"] == 0.0 and np.isnan(r["per_class"][1]["ap"])
    assert coco_evaluate(empty, gts, 2)["map_50_95"] == 0.0
    none = evaluate_detections(empty, [gt([], []), gt([], [])], 2)
    assert np.isnan(none["map"])
    assert np.isnan(coco_evaluate(empty, [gt([], []), gt([], [])], 2)["map_50"])
    assert confusion_matrix(empty, gts, 2).sum() == 1


def test_confusion_matrix_hand_case():
    g = gt([A, B, C, FAR], [0, 1, 1, 0], difficult=[False, False, False, True])
    d = det([A, B, [0, 0, 5, 5], C, FAR], [0.9, 0.8, 0.7, 0.1, 0.9], [0, 0, 1, 1, 1])
    m = confusion_matrix([d], [g], 2, score_thresh=0.25)
    want = np.zeros((3, 3), np.int64)
    want[0, 0] = 1  # A found as class 0
    want[1, 0] = 1  # B found as class 0 (confused)
    want[2, 1] = 1  # [0,0,5,5] matches nothing: false alarm of class 1
    want[1, 2] = 1  # C's only detection is below the score threshold: missed
    np.testing.assert_array_equal(m, want)  # the detection on the difficult FAR is not counted


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="1 detection entries for 2 ground-truth entries"):
        evaluate_detections([det([], [], [])], [gt([], []), gt([], [])], 1)
    with pytest.raises(ValueError, match="image 0: detection class 3 is outside 0..1"):
        evaluate_detections([det([A], [0.5], [3])], [gt([], [])], 2)
