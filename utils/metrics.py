"""Detection metrics: VOC AP (all-point and 11-point), P/R/F1, COCO AP, confusion matrix.

Inputs, one entry per image, in the same order:

* detections: dicts ``{"boxes": (N, 4) xyxy, "scores": (N,), "classes": (N,) int}`` (what
  utils.inference.detector.Detector.detect returns), source-image pixels;
* ground truths: utils.data.voc.VocRecord objects or dicts with ``boxes`` (M, 4) xyxy,
  ``labels`` (M,) and optionally ``difficult`` (M,) bool.

Box convention: coordinates are continuous (area = (x2 - x1) * (y2 - y1), no "+1"), in the
VOC evaluation as in the COCO one, so both compute the same IoUs (mmdetection's
``use_legacy_coordinate=False``). The official VOC devkit adds 1 pixel to widths and
heights; that changes the IoU of small boxes slightly, so numbers can differ from the devkit
by a small amount. COCO boxes are written as [x1, y1, x2 - x1, y2 - y1].

Difficult objects are ignored as VOC does: they do not count as positives, and a detection
whose best-overlapping ground truth is difficult is neither a true nor a false positive.
For pycocotools they are written with ``iscrowd=1``, COCO's "ignore" flag (pycocotools
overwrites any ``ignore`` field from ``iscrowd``); note that COCO matches crowd regions by
intersection over the *detection's* area.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from utils.boxes import box_iou


# ------------------------------------------------------------------ inputs

def _gt_arrays(gt):
    """(boxes (M, 4) float32, labels (M,) int64, difficult (M,) bool) of one ground truth."""
    get = gt.get if isinstance(gt, dict) else (lambda k, d=None: getattr(gt, k, d))
    boxes = np.asarray(get("boxes"), np.float32).reshape(-1, 4)
    labels = np.asarray(get("labels"), np.int64).reshape(-1)
    difficult = get("difficult", None)
    difficult = np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    if not len(boxes) == len(labels) == len(difficult):
        raise ValueError(f"ground truth with {len(boxes)} boxes, {len(labels)} labels, {len(difficult)} difficult flags")
    return boxes, labels, difficult


def _det_arrays(det):
    boxes = np.asarray(det["boxes"], np.float32).reshape(-1, 4)
    scores = np.asarray(det["scores"], np.float32).reshape(-1)
    classes = np.asarray(det["classes"], np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"detection with {len(boxes)} boxes, {len(scores)} scores, {len(classes)} classes")
    return boxes, scores, classes


def _prepare(detections, ground_truths, num_classes):
    detections, ground_truths = list(detections), list(ground_truths)
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection entries for {len(ground_truths)} ground-truth entries; "
                         "give one of each per image, in the same order")
    dets = [_det_arrays(d) for d in detections]
    gts = [_gt_arrays(g) for g in ground_truths]
    for what, arrays in (("detection class", [d[2] for d in dets]), ("ground-truth label", [g[1] for g in gts])):
        for i, a in enumerate(arrays):
            if a.size and (a.min() < 0 or a.max() >= num_classes):
                raise ValueError(f"image {i}: {what} {int(a.max() if a.max() >= num_classes else a.min())} "
                                 f"is outside 0..{num_classes - 1}")
    return dets, gts


# ------------------------------------------------------------------ VOC

def voc_ap(recall, precision, use_07: bool = False) -> float:
    """Average precision from a PR curve (recall ascending, as cumulated in score order).

    ``use_07=False``: all-point interpolation (VOC2010+): the area under the curve made
    monotone by taking, at each recall, the best precision at that recall or higher.
    ``use_07=True``: VOC2007's 11-point mean of that precision at recall 0, 0.1, ..., 1.
    (The devkit's formula; no maintained pip package exposes it on its own.)
    """
    recall = np.asarray(recall, np.float64).reshape(-1)
    precision = np.asarray(precision, np.float64).reshape(-1)
    if recall.size == 0:
        return 0.0
    if use_07:
        return float(np.mean([precision[recall >= t].max() if np.any(recall >= t) else 0.0
                              for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _match_image(det_boxes, det_scores, gt_boxes, gt_difficult, iou_thresh):
    """VOC greedy matching of one image and class -> per detection +1 TP, 0 FP, -1 ignored."""
    out = np.zeros(len(det_scores), np.int8)
    if not len(gt_boxes):
        return out
    order = np.argsort(-det_scores, kind="stable")
    ious = box_iou(det_boxes[order], gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    for row, d in enumerate(order):
        j = int(np.argmax(ious[row]))
        if ious[row, j] > iou_thresh:
            if gt_difficult[j]:
                out[d] = -1
            elif not taken[j]:
                taken[j] = True
                out[d] = 1
    return out


def evaluate_detections(detections, ground_truths, num_classes: int, iou_thresh: float = 0.5,
                        use_07: bool = False, score_thresh_for_prf: float = 0.5) -> dict:
    """VOC-style evaluation.

    Returns a dict: ``map`` (mean AP over the classes that have non-difficult ground truth;
    NaN when none has), ``per_class`` (one dict per class: ``ap``, ``precision``, ``recall``,
    ``f1`` at score >= ``score_thresh_for_prf``, ``num_gt`` (non-difficult),
    ``num_difficult``, ``num_detections`` (all given), ``num_detections_at_thresh``, ``tp``,
    ``fp``), ``mean_precision`` / ``mean_recall`` / ``mean_f1`` (over the same classes as
    the mAP), ``pr_curves`` (per class ``recall``, ``precision``, ``scores`` arrays in score
    order), ``f1_best`` (:func:`best_f1_threshold`: the score at which F1 over all classes
    pooled is highest, with P, R, F1 there, from the same matching as the AP) and the
    settings. Classes without ground truth get NaN AP, recall and F1.
    Matching within an image follows the devkit: detections in score order, each taken by
    its highest-IoU ground truth when IoU > ``iou_thresh`` and that one is still free.
    """
    num_classes = int(num_classes)
    dets, gts = _prepare(detections, ground_truths, num_classes)
    scores_c = [[] for _ in range(num_classes)]
    flags_c = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, np.int64)
    num_diff = np.zeros(num_classes, np.int64)
    num_det = np.zeros(num_classes, np.int64)
    for (db, ds, dc), (gb, gl, gd) in zip(dets, gts):
        np.add.at(num_gt, gl[~gd], 1)
        np.add.at(num_diff, gl[gd], 1)
        np.add.at(num_det, dc, 1)
        for c in np.union1d(np.unique(dc), np.unique(gl)):
            dm, gm = dc == c, gl == c
            if not dm.any():
                continue
            scores_c[c].append(ds[dm])
            flags_c[c].append(_match_image(db[dm], ds[dm], gb[gm], gd[gm], iou_thresh))

    per_class, curves, pooled = [], [], []
    for c in range(num_classes):
        s = np.concatenate(scores_c[c]) if scores_c[c] else np.zeros(0, np.float32)
        f = np.concatenate(flags_c[c]) if flags_c[c] else np.zeros(0, np.int8)
        keep = f >= 0  # difficult matches are dropped from the ranking
        s, f = s[keep], f[keep]
        pooled.append((s, f))
        order = np.argsort(-s, kind="stable")
        s, f = s[order], f[order]
        tp = np.cumsum(f == 1)
        fp = np.cumsum(f == 0)
        npos = int(num_gt[c])
        precision = tp / np.maximum(tp + fp, 1)
        recall = tp / npos if npos else np.full(len(tp), np.nan)
        ap = voc_ap(recall, precision, use_07) if npos else float("nan")
        n_at = int(np.sum(s >= score_thresh_for_prf))
        tp_at = int(tp[n_at - 1]) if n_at else 0
        fp_at = int(fp[n_at - 1]) if n_at else 0
        p = tp_at / n_at if n_at else 0.0
        r = tp_at / npos if npos else float("nan")
        f1 = (2 * p * r / (p + r) if p + r > 0 else 0.0) if npos else float("nan")
        per_class.append({"class_id": c, "ap": ap, "precision": p, "recall": r, "f1": f1, "num_gt": npos,
                          "num_difficult": int(num_diff[c]), "num_detections": int(num_det[c]),
                          "num_detections_at_thresh": n_at, "tp": tp_at, "fp": fp_at})
        curves.append({"recall": recall.astype(np.float32), "precision": precision.astype(np.float32),
                       "scores": s.astype(np.float32)})

    valid = [pc for pc in per_class if pc["num_gt"] > 0]

    def mean(key):
        return float(np.mean([pc[key] for pc in valid])) if valid else float("nan")

    f1_best = best_f1_threshold(np.concatenate([p[0] for p in pooled]) if pooled else np.zeros(0),
                                np.concatenate([p[1] for p in pooled]) if pooled else np.zeros(0, np.int8),
                                int(num_gt.sum()))
    return {"map": mean("ap"), "mean_precision": mean("precision"), "mean_recall": mean("recall"),
            "mean_f1": mean("f1"), "per_class": per_class, "pr_curves": curves, "f1_best": f1_best,
            "iou_thresh": float(iou_thresh), "use_07": bool(use_07),
            "prf_score_thresh": float(score_thresh_for_prf), "num_images": len(gts)}


def _between(lo: float, hi: float) -> float:
    """A short decimal t with lo < t < hi in float32 (what the detector compares with),
    near their midpoint; the float32 just under ``hi`` when none fits."""
    mid = (lo + hi) / 2
    for digits in (2, 3, 4, 5, 6, 7):
        t = round(mid, digits)
        if np.float32(lo) < np.float32(t) < np.float32(hi):
            return t
    return float(np.nextafter(np.float32(hi), np.float32(0)))


def best_f1_threshold(scores, flags, num_gt: int) -> dict:
    """The score threshold at which micro-averaged F1 (every class pooled) is highest.

    ``scores`` / ``flags``: every ranked detection of every class (difficult matches already
    left out) with its VOC match, 1 true positive, 0 false positive; ``num_gt``: the
    non-difficult ground truths of all classes. Keeping the detections with score >= s
    gives TP(s), FP(s) and F1 = 2 TP / (TP + FP + num_gt); only the distinct scores are
    candidates (ties go in or out together), and on equal F1 the highest score wins.

    Returns ``score`` (the threshold: a short decimal near halfway between the lowest kept
    score and the highest left-out one (or 0), so ``score > s`` and ``score >= s`` keep the
    same detections, in float32 as the detector compares), ``lowest_kept``,
    ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``num_gt``. Without a true positive
    there is no such threshold: ``score`` is NaN and P/R/F1 are 0 (NaN without ground truth).
    """
    scores = np.asarray(scores, np.float32).reshape(-1)
    flags = np.asarray(flags).reshape(-1)
    num_gt = int(num_gt)
    order = np.argsort(-scores, kind="stable")
    s, f = scores[order], flags[order]
    tp = np.cumsum(f == 1)
    fp = np.cumsum(f != 1)
    last = np.nonzero(np.append(s[1:] != s[:-1], True))[0] if len(s) else np.zeros(0, np.int64)
    nan = float("nan")
    out = {"score": nan, "lowest_kept": nan, "precision": 0.0, "recall": 0.0 if num_gt else nan,
           "f1": 0.0 if num_gt else nan, "tp": 0, "fp": 0, "num_gt": num_gt}
    if not num_gt or not len(last) or tp[-1] == 0:
        return out
    f1 = 2.0 * tp[last] / (tp[last] + fp[last] + num_gt)
    k = int(last[int(np.argmax(f1))])  # argmax: the first maximum, i.e. the highest score
    low = float(s[k])
    thresh = _between(float(s[k + 1]) if k + 1 < len(s) else 0.0, low)
    t, n = int(tp[k]), int(k + 1)
    p, r = t / n, t / num_gt
    return {**out, "score": thresh, "lowest_kept": low, "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r), "tp": t, "fp": n - t}


# ------------------------------------------------------------------ COCO

def coco_evaluate(detections, ground_truths, num_classes: int, max_det: int = 100, image_sizes=None) -> dict:
    """COCO-style AP through pycocotools, with COCO objects built in memory.

    Returns ``map_50_95`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``per_class_map_50_95``,
    ``per_class_map_50`` (NaN for classes without ground truth), all at max(100, ``max_det``)
    detections per image, and ``summary`` (the text COCOeval.summarize prints, COCO's
    standard 100 detections per image). ``image_sizes``: optional (h, w) per image for the image table.
    Values are NaN when there is no non-difficult ground truth; 0 when there is no detection.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    num_classes = int(num_classes)
    dets, gts = _prepare(detections, ground_truths, num_classes)
    nan_list = [float("nan")] * num_classes
    images, annotations, results = [], [], []
    for i, ((gb, gl, gd), (db, ds, dc)) in enumerate(zip(gts, dets)):
        h, w = image_sizes[i] if image_sizes is not None else (0, 0)
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for box, label, diff in zip(gb, gl, gd):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": [float(box[0]), float(box[1]), bw, bh], "area": bw * bh,
                                "iscrowd": int(diff)})
        for box, score, cls in zip(db, ds, dc):
            results.append({"image_id": i + 1, "category_id": int(cls) + 1, "score": float(score),
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    out = {"map_50_95": float("nan"), "map_50": float("nan"), "map_75": float("nan"),
           "per_class_map_50_95": nan_list, "per_class_map_50": list(nan_list), "summary": ""}
    has_gt = np.zeros(num_classes, bool)
    for a in annotations:
        if not a["iscrowd"]:
            has_gt[a["category_id"] - 1] = True
    if not has_gt.any():
        return out
    if not results:  # pycocotools' loadRes cannot take an empty list
        zeros = [0.0 if g else float("nan") for g in has_gt]
        return {**out, "map_50_95": 0.0, "map_50": 0.0, "map_75": 0.0, "per_class_map_50_95": zeros,
                "per_class_map_50": list(zeros)}

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints progress on every call
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        # summarize() hard-codes maxDets=100 for its first line, so keep 100 in the list (the
        # printed summary stays COCO's standard) and read our numbers at max_det (the last).
        ev.params.maxDets = [1, 10, 100] + ([int(max_det)] if int(max_det) > 100 else [])
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # (iou thresholds, recall points, classes), area "all"

    def mean_valid(p):
        return float(np.mean(p[p > -1])) if np.any(p > -1) else float("nan")

    def per_class(p):
        vals = []
        for k in range(num_classes):
            v = p[..., k]
            vals.append(float(np.mean(v[v > -1])) if np.any(v > -1) and has_gt[k] else float("nan"))
        return vals

    iou_thrs = list(np.round(ev.params.iouThrs, 2))
    return {"map_50_95": mean_valid(prec), "map_50": mean_valid(prec[iou_thrs.index(0.5)]),
            "map_75": mean_valid(prec[iou_thrs.index(0.75)]),
            "per_class_map_50_95": per_class(prec), "per_class_map_50": per_class(prec[0]),
            "summary": summary.getvalue()}


# ------------------------------------------------------------------ confusion matrix

def confusion_matrix(detections, ground_truths, num_classes: int, iou_thresh: float = 0.5,
                     score_thresh: float = 0.25) -> np.ndarray:
    """(C + 1, C + 1) counts: rows = true class, columns = predicted class; index C = background.

    Per image, the detections with score >= ``score_thresh`` and the ground truths are
    paired greedily by IoU (highest first, IoU > ``iou_thresh``, each used once, any class,
    as ultralytics does). A pair counts at [true, predicted]; an unpaired ground truth at
    [true, C] (missed); an unpaired detection at [C, predicted] (false alarm). Difficult
    ground truths and the detections paired with them are not counted.
    """
    num_classes = int(num_classes)
    dets, gts = _prepare(detections, ground_truths, num_classes)
    m = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    bg = num_classes
    for (db, ds, dc), (gb, gl, gd) in zip(dets, gts):
        sel = ds >= score_thresh
        db, dc = db[sel], dc[sel]
        det_used = np.zeros(len(db), bool)
        gt_used = np.zeros(len(gb), bool)
        if len(db) and len(gb):
            ious = box_iou(gb, db)
            gi, di = np.nonzero(ious > iou_thresh)
            for k in np.argsort(-ious[gi, di], kind="stable"):
                g, d = gi[k], di[k]
                if gt_used[g] or det_used[d]:
                    continue
                gt_used[g] = det_used[d] = True
                if not gd[g]:
                    m[gl[g], dc[d]] += 1
        np.add.at(m, (gl[~gt_used & ~gd], bg), 1)
        np.add.at(m, (bg, dc[~det_used]), 1)
    return m
