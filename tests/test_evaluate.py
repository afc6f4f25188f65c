"""utils/evaluate.py: detector over records -> metrics, report files, table."""
import json

import numpy as np
import pytest
from PIL import Image

from _helpers import tiny_body
from utils.evaluate import evaluate_records, format_table, write_report
from utils.letterbox import Letterbox, letterbox_boxes
from utils.inference.detector import Detector
from utils.targets import load_anchors
from utils.data.images import ImageReadError
from utils.data.voc import VocRecord, load_voc

ANCHORS = load_anchors()
COLOURS = [(255, 0, 0), (0, 255, 0)]  # class 0 red, class 1 green


class ColourBoxDetector:
    """Detects the pure red / green rectangle of each class by thresholding the letterboxed
    pixels; uses the real Detector's letterbox and unletterbox steps."""
    class_names = ["red", "green"]
    num_classes = 2
    input_hw = (96, 128)
    preprocess = Detector.preprocess
    finish = staticmethod(Detector.finish)

    def infer(self, batch, score_thresh, iou_thresh, max_det, nms):
        b = len(batch)
        boxes, scores = np.zeros((b, 2, 4), np.float32), np.zeros((b, 2), np.float32)
        classes, valid = np.zeros((b, 2), np.int32), np.zeros(b, np.int32)
        for i, img in enumerate(batch.astype(int)):
            for c, colour in enumerate(COLOURS):
                mask = np.all(np.abs(img - colour) < 60, axis=-1)
                if mask.any():
                    ys, xs = np.nonzero(mask)
                    k = valid[i]
                    boxes[i, k] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                    scores[i, k], classes[i, k] = 0.9 - 0.1 * c, c
                    valid[i] += 1
        return boxes, scores, classes, valid


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(120, 200), (200, 150), (96, 128), (240, 320), (150, 150)]):
        img = np.zeros((h, w, 3), np.uint8)
        boxes, labels = [], []
        for c in range(2):
            bw, bh = int(rng.integers(w // 5, w // 3)), int(rng.integers(h // 5, h // 3))
            x0 = int(rng.integers(0, w // 2 - bw)) + c * (w // 2)
            y0 = int(rng.integers(0, h - bh))
            img[y0:y0 + bh, x0:x0 + bw] = COLOURS[c]
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            labels.append(c)
        path = folder / f"img{i}.png"
        Image.fromarray(img).save(path)
        diff = np.array([False, i == 4])  # one difficult object
        out.append(VocRecord(str(path), np.array(boxes, np.float32), np.array(labels, np.int32), diff, w, h))
    return out


def test_pipeline_with_an_exact_detector_gives_map_one(records, tmp_path):
    res = evaluate_records(ColourBoxDetector(), records, batch_size=2, workers=2, return_detections=True)
    assert res["map"] == pytest.approx(1.0)
    assert res["coco"]["map_50"] == pytest.approx(1.0)
    assert [pc["num_gt"] for pc in res["per_class"]] == [5, 4]
    assert [pc["num_difficult"] for pc in res["per_class"]] == [0, 1]
    np.testing.assert_array_equal(res["confusion_matrix"], [[5, 0, 0], [0, 4, 0], [0, 0, 0]])
    for rec, det in zip(records, res["detections"]):  # boxes come back in source pixels
        np.testing.assert_allclose(det["boxes"], rec.boxes, atol=3.0)
    assert res["num_images"] == 5 and res["timing"]["model_s"] <= res["timing"]["total_s"]
    best = res["f1_best"]  # every object found (scores 0.9 red, 0.8 green): keep them all
    assert (best["tp"], best["fp"], best["num_gt"], best["f1"]) == (9, 0, 9, 1.0)
    assert best["lowest_kept"] == pytest.approx(0.8) and 0 < best["score"] < 0.8
    line = [l for l in format_table(res).splitlines() if l.startswith("F1-best score")]
    assert line == [f"F1-best score {best['score']:.3g} (all classes pooled): P 1.000  R 1.000  F1 1.000  "
                    "(9 TP, 0 FP, 9 GT); predict.py's --conf default when stored in the model"]
    assert json.loads(open(write_report(res, tmp_path / "report")["json"]).read())["f1_best"] == pytest.approx(best)


def test_tiny_model_end_to_end_is_well_formed(records, tmp_path):
    meta = {"class_names": ["red", "green"], "anchors": ANCHORS, "input_shape": (96, 128)}
    detector = Detector(tiny_body((96, 128), 2), meta)
    res = evaluate_records(detector, records, batch_size=3, max_det=50, prf_score_thresh=0.3)
    assert len(res["per_class"]) == 2 and len(res["pr_curves"]) == 2
    assert 0.0 <= res["map"] <= 1.0 and 0.0 <= res["coco"]["map_50_95"] <= 1.0
    assert res["per_class"][0]["num_detections"] > 0
    m = np.asarray(res["confusion_matrix"])
    assert m.shape == (3, 3)
    assert m[:2].sum() == 9  # each non-difficult object counted once: found or missed
    n_at = sum(pc["num_detections_at_thresh"] for pc in res["per_class"])
    assert m[:, :2].sum() <= n_at  # detections on difficult objects are not counted
    assert res["settings"]["max_det"] == 50 and res["settings"]["prf_score_thresh"] == 0.3

    paths = write_report(res, tmp_path / "report")
    doc = json.loads(open(paths["json"]).read())
    assert doc["class_names"] == ["red", "green"] and len(doc["pr_curves"]["recall_levels"]) == 101
    assert doc["map"] == pytest.approx(res["map"]) and len(doc["confusion_matrix"]) == 3
    for key in ("pr", "ap", "cm"):
        with Image.open(paths[key]) as im:
            assert im.size[0] > 100
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["Class", "GT", "Dets@0.3", "AP@0.5"]
    assert any(l.split()[:2] == ["red", "5"] for l in lines) and any(l.split()[:2] == ["all", "9"] for l in lines)
    assert "COCO mAP@[.5:.95]" in table
    assert "P/R/F1 at score >= 0.3" in table and "F1-best score" in table  # both: at --prf-conf and F1-best
    assert set(doc["f1_best"]) >= {"score", "precision", "recall", "f1", "tp", "fp", "num_gt"}


def test_empty_records_and_missing_image_are_clear_errors(records):
    with pytest.raises(ValueError, match="no records to evaluate"):
        evaluate_records(ColourBoxDetector(), [])
    bad = VocRecord("/nonexistent/img.png", np.zeros((0, 4), np.float32), np.zeros(0, np.int32),
                    np.zeros(0, bool), 10, 10)
    with pytest.raises(ImageReadError, match="/nonexistent/img.png: image file not found"):
        evaluate_records(ColourBoxDetector(), records[:1] + [bad], batch_size=1)


class GroundTruthDetector:
    """Returns each record's objects, letterboxed, as detections (batches arrive in order)."""
    input_hw = (320, 416)
    preprocess = Detector.preprocess
    finish = staticmethod(Detector.finish)

    def __init__(self, records, class_names):
        self.queue = list(records)
        self.class_names, self.num_classes = list(class_names), len(class_names)

    def infer(self, batch, score_thresh, iou_thresh, max_det, nms):
        recs, self.queue = self.queue[:len(batch)], self.queue[len(batch):]
        n = max(len(r.labels) for r in recs)
        out = (np.zeros((len(batch), n, 4), np.float32), np.zeros((len(batch), n), np.float32),
               np.zeros((len(batch), n), np.int32), np.zeros(len(batch), np.int32))
        for i, r in enumerate(recs):
            lb = Letterbox.compute((r.height, r.width), self.input_hw)
            k = len(r.labels)
            out[0][i, :k] = letterbox_boxes(r.boxes, lb)
            out[1][i, :k] = np.linspace(0.9, 0.5, k)
            out[2][i, :k] = r.labels
            out[3][i] = k
        return out


def test_bccd_ground_truth_round_trip_scores_one(bccd_root):
    names = ["RBC", "WBC", "Platelets"]
    records = load_voc(bccd_root, "test", names, log=None)[:10]
    res = evaluate_records(GroundTruthDetector(records, names), records, batch_size=4)
    assert res["map"] == pytest.approx(1.0)
    assert res["coco"]["map_50_95"] == pytest.approx(1.0)  # letterbox round trip is exact: IoU ~ 1
    assert sum(pc["num_gt"] + pc["num_difficult"] for pc in res["per_class"]) == sum(len(r.labels) for r in records)
