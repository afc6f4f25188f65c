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


# ----------------------------------------------------------------------------- F1-best threshold

def test_f1_best_hand_computed_two_classes_pooled():
    # 4 GT (3 of class 0, 1 of class 1, one more class-0 object difficult). Pooled ranking:
    #   0.9 FP(c0)  0.8 TP(c0)  0.7 TP(c1)  0.6 ignored (difficult)  0.5 TP(c0)  0.4 FP(c1)  0.3 FP(c0)
    # F1 = 2 TP / (kept + 4): 0, 2/6, 4/8, (0.6 ignored: same), 6/10, 6/12, 6/14 -> best keeps
    # down to 0.5 (TP 3, FP 1): P 3/4, R 3/4, F1 0.6; threshold between 0.5 and 0.4.
    D = [60, 0, 99, 30]
    gts = [gt([A, B, C, D], [0, 0, 1, 0], difficult=[False, False, False, True]), gt([FAR], [0])]
    dets = [det([[0, 40, 9, 49], A, C, D, B, [0, 0, 5, 5]], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0, 0, 1, 0, 0, 1]),
            det([[80, 80, 99, 99]], [0.3], [0])]
    best = evaluate_detections(dets, gts, 2)["f1_best"]
    assert (best["tp"], best["fp"], best["num_gt"]) == (3, 1, 4)
    assert (best["precision"], best["recall"], best["f1"]) == pytest.approx((0.75, 0.75, 0.75))
    assert best["lowest_kept"] == pytest.approx(0.5) and best["score"] == pytest.approx(0.45)
    # a threshold above every score of a model whose scores all run low is still found
    low = evaluate_detections([det([A, FAR], [0.08, 0.06], [0, 0])], [gt([A], [0])], 1)["f1_best"]
    assert low["score"] == pytest.approx(0.07) and low["f1"] == pytest.approx(1.0)
    # no TP: no threshold; no ground truth: NaN F1
    none = evaluate_detections([det([FAR], [0.9], [0])], [gt([A], [0])], 1)["f1_best"]
    assert np.isnan(none["score"]) and none["f1"] == 0.0
    assert np.isnan(evaluate_detections([det([FAR], [0.9], [0])], [gt([], [])], 1)["f1_best"]["f1"])


def test_f1_best_ties_go_in_together_and_highest_score_wins_equal_f1():
    # two detections at 0.8 (TP + FP) and one at 0.6 (TP): 2 GT.
    # keep >= 0.8: TP 1 FP 1 -> F1 2/4; keep >= 0.6: TP 2 FP 1 -> F1 4/5
    best = evaluate_detections([det([A, FAR, B], [0.8, 0.8, 0.6], [0, 0, 0])], [gt([A, B], [0, 0])], 1)["f1_best"]
    assert (best["tp"], best["fp"], best["f1"]) == (2, 1, pytest.approx(0.8))
    assert 0 < best["score"] < 0.6
    # equal F1 at 0.9 (TP 1 of 1) and never better below: the highest score is kept
    best = evaluate_detections([det([A, FAR], [0.9, 0.5], [0, 0])], [gt([A], [0])], 1)["f1_best"]
    assert best["lowest_kept"] == pytest.approx(0.9) and 0.5 < best["score"] < 0.9


def _iou(a, b):
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)


def _brute_counts(dets, gts, thresh, iou_thresh=0.5):
    """TP, FP, #GT of the detections with score >= thresh: VOC matching redone from scratch."""
    tp = fp = npos = 0
    for d, g in zip(dets, gts):
        npos += int((~g.difficult).sum())
        for c in set(d["classes"].tolist()):
            sel = (d["classes"] == c) & (d["scores"] >= thresh)
            gb, gd = g.boxes[g.labels == c], g.difficult[g.labels == c]
            taken = np.zeros(len(gb), bool)
            for i in np.argsort(-d["scores"][sel], kind="stable"):
                box = d["boxes"][sel][i]
                if not len(gb):
                    fp += 1
                    continue
                ious = _iou(box, gb)
                j = int(np.argmax(ious))
                if ious[j] > iou_thresh and gd[j]:
                    continue
                if ious[j] > iou_thresh and not taken[j]:
                    taken[j] = True
                    tp += 1
                else:
                    fp += 1
    return tp, fp, npos


def test_f1_best_matches_a_brute_force_sweep_of_every_score():
    rng = np.random.default_rng(3)
    for trial in range(5):
        dets, gts = [], []
        for _ in range(6):
            n = int(rng.integers(0, 5))
            xy = rng.uniform(0, 70, (n, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(10, 30, (n, 2))], 1).astype(np.float32)
            labels = rng.integers(0, 3, n)
            gts.append(gt(boxes, labels, difficult=rng.random(n) < 0.15))
            jitter = boxes + rng.normal(0, 3, boxes.shape).astype(np.float32)
            keep = rng.random(n) < 0.8
            m = int(rng.integers(0, 4))
            xy = rng.uniform(0, 70, (m, 2))
            noise = np.concatenate([xy, xy + rng.uniform(10, 30, (m, 2))], 1)
            db = np.concatenate([jitter[keep], jitter[keep][:1], noise]).astype(np.float32)  # + a duplicate
            dc = np.concatenate([labels[keep], labels[keep][:1], rng.integers(0, 3, m)])
            flip = rng.random(len(dc)) < 0.1  # a few with the wrong class
            dc = np.where(flip, (dc + 1) % 3, dc)
            dets.append(det(db, rng.uniform(0, 1, len(db)).round(2), dc))  # rounded: ties across images
        best = evaluate_detections(dets, gts, 3)["f1_best"]
        ref_f1, ref_score = -1.0, None
        for s in sorted({float(x) for d in dets for x in d["scores"]}, reverse=True):
            tp, fp, npos = _brute_counts(dets, gts, np.float32(s))
            f1 = 2 * tp / (tp + fp + npos)
            if f1 > ref_f1 + 1e-12:
                ref_f1, ref_score, ref = f1, s, (tp, fp, npos)
        assert best["f1"] == pytest.approx(ref_f1), trial
        assert (best["tp"], best["fp"], best["num_gt"]) == ref, trial
        assert best["lowest_kept"] == pytest.approx(ref_score), trial
        assert _brute_counts(dets, gts, np.float32(best["score"])) == ref, trial  # the threshold keeps just those
        assert best["precision"] == pytest.approx(ref[0] / (ref[0] + ref[1]))
        assert best["recall"] == pytest.approx(ref[0] / ref[2])
