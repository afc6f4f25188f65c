"""Evaluate a Detector on VOC records: detections, VOC/COCO metrics, report files and table.

One implementation for eval_map.py and training's in-loop evaluation. Image reading and
letterboxing run in a small thread pool, a few batches ahead of the model (PIL, cv2 and
TensorFlow release the GIL), so the total time stays close to the model's own time.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import math
import os
import time

import numpy as np

from utils.metrics import coco_evaluate, confusion_matrix, evaluate_detections
from utils.data.images import read_image


def _load_batch(detector, records):
    images = [read_image(r.image_path) for r in records]
    batch, letterboxes = detector.preprocess(images)
    return batch, letterboxes, [im.shape[:2] for im in images]


def run_detector(detector, records, batch_size=8, score_thresh=0.001, iou_thresh=0.5, max_det=300, nms="iou",
                 workers=2, progress=False):
    """Detections for ``records`` (one dict per record, source pixels) and timing.

    Returns ``(detections, image_sizes, timing)``; ``timing`` holds ``total_s`` (wall time),
    ``model_s`` (time in the compiled model + NMS, the lower bound of the total) and their
    ratio ``overhead`` (1.0 = reading and letterboxing fully hidden behind the model).
    ``workers`` threads read and letterbox up to ``workers + 1`` batches ahead of the model;
    0 reads each batch only when the model needs it (no overlap).
    """
    records = list(records)
    batch_size = max(1, int(batch_size))
    chunks = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    detections, sizes = [], []
    model_s = 0.0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(records), desc="evaluating", unit="img")
    t0 = time.perf_counter()
    workers = max(0, int(workers))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = collections.deque()
        ahead = workers + 1
        next_chunk = 0
        while next_chunk < len(chunks) or pending:
            while next_chunk < len(chunks) and len(pending) < ahead:
                pending.append(pool.submit(_load_batch, detector, chunks[next_chunk]))
                next_chunk += 1
                if workers == 0:  # serial: wait for each batch (for comparisons and debugging)
                    pending[-1].result()
            batch, letterboxes, hw = pending.popleft().result()
            t = time.perf_counter()
            padded = detector.infer(batch, score_thresh, iou_thresh, max_det, nms)
            model_s += time.perf_counter() - t
            detections += detector.finish(padded, letterboxes)
            sizes += hw
            if bar is not None:
                bar.update(len(letterboxes))
    total_s = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    timing = {"total_s": total_s, "model_s": model_s, "overhead": total_s / model_s if model_s > 0 else float("nan"),
              "images_per_s": len(records) / total_s if total_s > 0 else float("nan")}
    return detections, sizes, timing


def evaluate_records(detector, records, batch_size=8, score_thresh=0.001, iou_thresh=0.5, max_det=300, nms="iou",
                     use_07=False, coco=True, match_iou=0.5, prf_score_thresh=0.5, workers=2, progress=False,
                     return_detections=False) -> dict:
    """Run ``detector`` (utils.inference.detector.Detector) on VOC ``records`` and compute the metrics.

    ``score_thresh`` / ``iou_thresh`` / ``max_det`` / ``nms`` are the detector's NMS
    settings (mAP is computed at a low score threshold and a high max_det, as is standard);
    ``match_iou`` is the VOC matching IoU; ``prf_score_thresh`` the score at which P, R, F1
    and the confusion matrix are taken. Returns a dict: the VOC results of
    utils.metrics.evaluate_detections (``map``, ``per_class``, ``pr_curves``, ...), plus
    ``coco`` (utils.metrics.coco_evaluate, or None), ``confusion_matrix`` ((C+1, C+1),
    rows true, columns predicted, last = background), ``class_names``, ``settings``,
    ``timing`` (see :func:`run_detector`, plus ``metrics_s``) and, when asked,
    ``detections``.
    """
    records = list(records)
    if not records:
        raise ValueError("no records to evaluate")
    detections, sizes, timing = run_detector(detector, records, batch_size, score_thresh, iou_thresh, max_det, nms,
                                             workers, progress)
    t = time.perf_counter()
    num_classes = detector.num_classes
    results = evaluate_detections(detections, records, num_classes, match_iou, use_07, prf_score_thresh)
    results["coco"] = coco_evaluate(detections, records, num_classes, max_det, sizes) if coco else None
    results["confusion_matrix"] = confusion_matrix(detections, records, num_classes, match_iou, prf_score_thresh)
    timing["metrics_s"] = time.perf_counter() - t
    results["timing"] = timing
    results["class_names"] = list(detector.class_names)
    results["settings"] = {"batch_size": int(batch_size), "score_thresh": float(score_thresh),
                           "nms_iou_thresh": float(iou_thresh), "max_det": int(max_det), "nms": str(nms),
                           "match_iou": float(match_iou), "use_07": bool(use_07),
                           "prf_score_thresh": float(prf_score_thresh), "input_hw": list(detector.input_hw)}
    if return_detections:
        results["detections"] = detections
    return results


# ------------------------------------------------------------------ reporting

def _fmt(v, digits=3):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_table(results, class_names=None) -> str:
    """A readable per-class table (class, GT, detections at the P/R score, AP, P, R, F1) + totals,
    and P/R/F1 of all classes pooled at the F1-best score (``results["f1_best"]``)."""
    names = list(class_names or results.get("class_names") or [str(i) for i in range(len(results["per_class"]))])
    iou = results.get("iou_thresh", 0.5)
    conf = results.get("prf_score_thresh", 0.5)
    head = ["Class", "GT", f"Dets@{conf:g}", f"AP@{iou:g}", "P", "R", "F1"]
    rows = [[names[pc["class_id"]], str(pc["num_gt"]), str(pc["num_detections_at_thresh"]), _fmt(pc["ap"]),
             _fmt(pc["precision"]), _fmt(pc["recall"]), _fmt(pc["f1"])] for pc in results["per_class"]]
    rows.append(["all", str(sum(pc["num_gt"] for pc in results["per_class"])),
                 str(sum(pc["num_detections_at_thresh"] for pc in results["per_class"])), _fmt(results["map"]),
                 _fmt(results["mean_precision"]), _fmt(results["mean_recall"]), _fmt(results["mean_f1"])])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(head), "-" * len(line(head))] + [line(r) for r in rows[:-1]] + ["-" * len(line(head)), line(rows[-1])]
    kind = "11-point (VOC07)" if results.get("use_07") else "all-point (VOC2010+)"
    out.append(f"mAP@{iou:g} = {_fmt(results['map'], 4)}  [{kind}; P/R/F1 at score >= {conf:g}]")
    best = results.get("f1_best")
    if best:
        out.append(format_f1_best(best))
    coco = results.get("coco")
    if coco:
        out.append(f"COCO mAP@[.5:.95] = {_fmt(coco['map_50_95'], 4)}   AP@.5 = {_fmt(coco['map_50'], 4)}   "
                   f"AP@.75 = {_fmt(coco['map_75'], 4)}")
    timing = results.get("timing")
    if timing:
        out.append(f"{results.get('num_images', 0)} images in {timing['total_s']:.2f} s "
                   f"({timing['images_per_s']:.1f} img/s; model + NMS {timing['model_s']:.2f} s, "
                   f"x{timing['overhead']:.2f})")
    return "\n".join(out)


def format_f1_best(best) -> str:
    """One line: P/R/F1 of all classes pooled at the F1-best score (utils.metrics.best_f1_threshold)."""
    if best.get("score") is None or math.isnan(best["score"]):
        return "F1-best score: none (no true positive at any score)"
    return (f"F1-best score {best['score']:.3g} (all classes pooled): P {_fmt(best['precision'])}  "
            f"R {_fmt(best['recall'])}  F1 {_fmt(best['f1'])}  ({best['tp']} TP, {best['fp']} FP, "
            f"{best['num_gt']} GT); predict.py's --conf default when stored in the model")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) or math.isinf(obj) else float(obj)
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


def _resample_curve(curve, points=101):
    """Interpolated precision (best at >= recall) at ``points`` recall levels, COCO-style."""
    recall, precision = np.asarray(curve["recall"], float), np.asarray(curve["precision"], float)
    levels = np.linspace(0, 1, points)
    if recall.size == 0 or np.isnan(recall).all():
        return levels, np.zeros(points)
    env = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, levels, side="left")
    return levels, np.where(idx < len(env), env[np.minimum(idx, len(env) - 1)], 0.0)


def write_report(results, out_dir, class_names=None) -> dict:
    """Write results.json, pr_curves.png, ap_per_class.png and confusion_matrix.png.

    The JSON holds every number of ``results``; each PR curve is stored as the interpolated
    precision at 101 recall levels. Returns {name: path}.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(class_names or results.get("class_names") or [str(i) for i in range(len(results["per_class"]))])
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in (("json", "results.json"), ("pr", "pr_curves.png"),
                                                       ("ap", "ap_per_class.png"), ("cm", "confusion_matrix.png"))}
    resampled = [_resample_curve(c) for c in results["pr_curves"]]
    doc = {k: v for k, v in results.items() if k not in ("pr_curves", "detections")}
    doc["class_names"] = names
    doc["pr_curves"] = {"recall_levels": resampled[0][0] if resampled else [],
                        "precision": {names[i]: p for i, (_, p) in enumerate(resampled)}}
    with open(paths["json"], "w") as f:
        json.dump(_jsonable(doc), f, indent=2)

    iou = results.get("iou_thresh", 0.5)
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, curve in enumerate(results["pr_curves"]):
        ap = results["per_class"][i]["ap"]
        if len(curve["recall"]) and not np.isnan(ap):
            ax.plot(curve["recall"], np.maximum.accumulate(np.asarray(curve["precision"])[::-1])[::-1],
                    lw=1.2, label=f"{names[i]} {ap:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Precision-recall (IoU {iou:g}), mAP {_fmt(results['map'])}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left", ncol=1 + len(names) // 20)
    fig.tight_layout()
    fig.savefig(paths["pr"], dpi=120)
    plt.close(fig)

    aps = [0.0 if np.isnan(pc["ap"]) else pc["ap"] for pc in results["per_class"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), aps, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), ylabel=f"AP@{iou:g}", title=f"AP per class, mAP@{iou:g} = {_fmt(results['map'])}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["ap"], dpi=120)
    plt.close(fig)

    plot_confusion_matrix(results["confusion_matrix"], names + ["background"], paths["cm"],
                          f"Confusion matrix (IoU {iou:g}, score >= {results.get('prf_score_thresh', 0.5):g})",
                          hide_zeros=True)
    return paths


def plot_confusion_matrix(cm, labels, path, title: str = "Confusion matrix", hide_zeros: bool = False) -> str:
    """A confusion matrix (rows true, columns predicted) as a PNG: colours by row fraction, counts
    printed (``hide_zeros``: empty cells left blank); written atomically. The detector's report
    and the classifier's evaluation (utils.classify) both draw theirs here."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.checkpoint import atomic_path

    m = np.asarray(cm, float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 30:
        for (r, c), v in np.ndenumerate(m):
            if v or not hide_zeros:
                ax.text(c, r, f"{int(v)}", ha="center", va="center", fontsize=7 if hide_zeros else 8,
                        color="white" if norm[r, c] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the row (counts printed)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return os.fspath(path)
