"""utils/targets.py: hand-computed assignments and a loop reference of the convention."""
import numpy as np
import pytest

import functools

from utils.targets import (ANCHOR_MASKS, STRIDES, build_targets, grid_shapes, load_anchors, parse_input_hw)

# the centre-cell rule alone (YOLOv4); the neighbour cells have their own tests below
build_v4 = functools.partial(build_targets, neighbor_cells=False)

# Square anchors whose neighbours have shape-IoU < 0.213 ((a/b)^2 <= 0.2025), so a box that
# equals one anchor matches only that one.
SIDES = [3, 7, 16, 36, 80, 180, 400, 900, 2000]
SEP_ANCHORS = np.array([[s, s] for s in SIDES], np.float32)
DEFAULT = np.array([[12, 16], [19, 36], [40, 28], [36, 75], [76, 55], [72, 146], [142, 110],
                    [192, 243], [459, 401]], np.float32)


def box(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def assigned_entries(y_true):
    """[(level, gy, gx, a)] of every obj=1 entry."""
    out = []
    for level, y in enumerate(y_true):
        for gy, gx, a in zip(*np.nonzero(y[..., 4])):
            out.append((level, int(gy), int(gx), int(a)))
    return sorted(out)


def test_constants_follow_convention():
    assert [list(m) for m in ANCHOR_MASKS] == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    assert list(STRIDES) == [32, 16, 8]
    assert grid_shapes((320, 416)) == [(10, 13), (20, 26), (40, 52)]
    with pytest.raises(ValueError, match="multiples of 32"):
        grid_shapes((300, 416))


def test_one_box_cell_anchor_and_encoding():
    y_true, gt = build_v4([box(100, 150, 80, 80)], [2], (416, 416), SEP_ANCHORS, num_classes=3)
    assert [y.shape for y in y_true] == [(13, 13, 3, 8), (26, 26, 3, 8), (52, 52, 3, 8)]
    assert all(y.dtype == np.float32 for y in y_true)
    # 80x80 equals anchor 4 -> output 1 (stride 16, mask [3,4,5]) position 1;
    # cell floor(100/16)=6, floor(150/16)=9.
    assert assigned_entries(y_true) == [(1, 9, 6, 1)]
    np.testing.assert_allclose(y_true[1][9, 6, 1],
                               [100 / 416, 150 / 416, 80 / 416, 80 / 416, 1, 0, 0, 1], rtol=1e-6)
    assert sum(float(np.abs(y).sum()) for y in y_true) == pytest.approx(float(np.abs(y_true[1][9, 6, 1]).sum()))
    np.testing.assert_allclose(gt[0], [100 / 416, 150 / 416, 80 / 416, 80 / 416], rtol=1e-6)
    assert gt.shape == (100, 4) and not gt[1:].any()


def test_non_square_input_normalises_per_axis():
    y_true, gt = build_v4([box(200, 100, 16, 16)], [0], (320, 416), SEP_ANCHORS, 1)
    # anchor 2 -> stride 8 output, position 2; cell (gy, gx) = (12, 25)
    assert assigned_entries(y_true) == [(2, 12, 25, 2)]
    np.testing.assert_allclose(y_true[2][12, 25, 2, :4], [200 / 416, 100 / 320, 16 / 416, 16 / 320], rtol=1e-6)
    assert y_true[0].shape == (10, 13, 3, 6)


def test_box_passing_threshold_with_two_anchors_gets_two_entries():
    # 27x27: IoU with 16x16 anchor (2) = (16/27)^2 = 0.351, with 36x36 (3) = (27/36)^2 = 0.5625,
    # both > 0.213; others < 0.213. Best = anchor 3 (stride 16), extra = anchor 2 (stride 8).
    y_true, _ = build_v4([box(50, 70, 27, 27)], [0], (416, 416), SEP_ANCHORS, 2)
    assert assigned_entries(y_true) == [(1, 4, 3, 0), (2, 8, 6, 2)]
    for level, gy, gx, a in assigned_entries(y_true):
        np.testing.assert_allclose(y_true[level][gy, gx, a], [50 / 416, 70 / 416, 27 / 416, 27 / 416, 1, 1, 0],
                                   rtol=1e-6)
    # Raising the threshold above 0.351 leaves the best anchor only.
    y_true, _ = build_v4([box(50, 70, 27, 27)], [0], (416, 416), SEP_ANCHORS, 2, iou_thresh=0.36)
    assert assigned_entries(y_true) == [(1, 4, 3, 0)]


def test_best_anchor_assigned_even_below_threshold():
    # 1x50: shape-IoU with every anchor is small; the best one is still used.
    y_true, _ = build_v4([box(100, 100, 1, 50)], [0], (416, 416), SEP_ANCHORS, 1)
    ents = assigned_entries(y_true)
    assert len(ents) == 1


def test_centres_on_cell_boundaries_and_image_border():
    # centre x exactly on the right border (416) -> last column gw-1; centre 32 -> column 1.
    y_true, _ = build_v4([box(416, 32, 400, 400), box(32, 416, 400, 400)], [0, 0], (416, 416),
                              SEP_ANCHORS, 1)
    # 400x400 = anchor 6 -> stride 32 output, position 0
    assert assigned_entries(y_true) == [(0, 1, 12, 0), (0, 12, 1, 0)]
    y_true, _ = build_v4([box(0, 0, 16, 16)], [0], (416, 416), SEP_ANCHORS, 1)
    assert assigned_entries(y_true) == [(2, 0, 0, 2)]


def test_conflict_higher_iou_wins_regardless_of_order():
    a = box(100, 100, 36, 36)   # IoU 1.0 with anchor 3
    b = box(101, 99, 50, 50)    # IoU 0.518 with anchor 3, 0.39 with anchor 4 (same cell at stride 16)
    for boxes, labels, winner in (([a, b], [0, 1], 0), ([b, a], [1, 0], 0)):
        y_true, _ = build_v4(boxes, labels, (416, 416), SEP_ANCHORS, 2)
        entry = y_true[1][6, 6, 0]
        assert entry[4] == 1 and entry[5 + winner] == 1 and entry[2] == pytest.approx(36 / 416)
        # b still owns anchor 4 in the same cell
        assert y_true[1][6, 6, 1, 4] == 1 and y_true[1][6, 6, 1, 6] == 1


def test_conflict_tie_earlier_box_wins():
    boxes = [box(100, 100, 36, 36), box(102, 98, 36, 36)]
    y_true, _ = build_v4(boxes, [0, 1], (416, 416), SEP_ANCHORS, 2)
    np.testing.assert_allclose(y_true[1][6, 6, 0, :6], [100 / 416, 100 / 416, 36 / 416, 36 / 416, 1, 1], rtol=1e-6)
    y_true, _ = build_v4(boxes[::-1], [1, 0], (416, 416), SEP_ANCHORS, 2)
    np.testing.assert_allclose(y_true[1][6, 6, 0, :7], [102 / 416, 98 / 416, 36 / 416, 36 / 416, 1, 0, 1], rtol=1e-6)


def reference_targets(boxes, labels, input_hw, anchors, num_classes, thresh, max_boxes, neighbors=False):
    """Straight loop transcription of the convention (independent of the vectorised code).

    Every candidate (level, cell, anchor) gets a priority (neighbour?, -shape IoU, box index);
    the smallest priority owns the slot.
    """
    H, W = input_hw
    ys = [np.zeros((H // s, W // s, 3, 5 + num_classes), np.float32) for s in STRIDES]
    owner = [dict() for _ in STRIDES]
    gt = np.zeros((max_boxes, 4), np.float32)
    j = 0
    for i, (bx, lab) in enumerate(zip(boxes, labels)):
        x1, y1, x2, y2 = bx
        w, h, cx, cy = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
        if w <= 0 or h <= 0:
            continue
        if j < max_boxes:
            gt[j] = [cx / W, cy / H, w / W, h / H]
            j += 1
        ious = []
        for aw, ah in anchors:
            inter = min(w, aw) * min(h, ah)
            ious.append(inter / (w * h + aw * ah - inter))
        best = int(np.argmax(ious))
        for k in range(9):
            if not (k == best or ious[k] > thresh):
                continue
            level = [lvl for lvl, m in enumerate(ANCHOR_MASKS) if k in m][0]
            a = list(ANCHOR_MASKS[level]).index(k)
            s = STRIDES[level]
            gw, gh = W // s, H // s
            gx = min(int(np.floor(cx / s)), gw - 1)
            gy = min(int(np.floor(cy / s)), gh - 1)
            cells = [(0, gy, gx)]
            if neighbors:
                u, v = cx / s, cy / s
                if u % 1 < 0.5 and u > 1:
                    cells.append((1, gy, gx - 1))
                elif u % 1 > 0.5 and gw - u > 1:
                    cells.append((1, gy, gx + 1))
                if v % 1 < 0.5 and v > 1:
                    cells.append((1, gy - 1, gx))
                elif v % 1 > 0.5 and gh - v > 1:
                    cells.append((1, gy + 1, gx))
            for rank, cy_, cx_ in cells:
                key, prio = (cy_, cx_, a), (rank, -ious[k], i)
                if key in owner[level] and owner[level][key][0] <= prio:
                    continue
                owner[level][key] = (prio, [cx / W, cy / H, w / W, h / H], lab)
    for level, slots in enumerate(owner):
        for (gy, gx, a), (_, enc, lab) in slots.items():
            ys[level][gy, gx, a, :4] = enc
            ys[level][gy, gx, a, 4] = 1
            ys[level][gy, gx, a, 5 + lab] = 1
    return ys, gt


def test_neighbor_cells_hand_case():
    # 36x36 box = anchor 3 only -> stride 16. Centre (120, 125) is (7.5, 7.8125) cells: x sits
    # exactly on the middle (no horizontal neighbour), y is in the lower half -> the cell below.
    y_true, _ = build_targets([box(120, 125, 36, 36)], [1], (416, 416), SEP_ANCHORS, 2, neighbor_cells=True)
    assert assigned_entries(y_true) == [(1, 7, 7, 0), (1, 8, 7, 0)]
    np.testing.assert_allclose(y_true[1][8, 7, 0], y_true[1][7, 7, 0])
    # centre (100, 150) = (6.25, 9.375) cells: left and upper neighbours
    y_true, _ = build_targets([box(100, 150, 36, 36)], [0], (416, 416), SEP_ANCHORS, 2, neighbor_cells=True)
    assert assigned_entries(y_true) == [(1, 8, 6, 0), (1, 9, 5, 0), (1, 9, 6, 0)]
    default, _ = build_targets([box(100, 150, 36, 36)], [0], (416, 416), SEP_ANCHORS, 2)  # on by default
    assert assigned_entries(default) == assigned_entries(y_true)
    # next to the border: (0.25, 51.625) cells; the left cell is off the grid, the lower one too
    y_true, _ = build_targets([box(2, 413, 16, 16)], [0], (416, 416), SEP_ANCHORS, 2, neighbor_cells=True)
    assert assigned_entries(y_true) == [(2, 51, 0, 2)]
    # neighbor_cells=False: the YOLOv4 rule, the centre cell only
    y_true, _ = build_v4([box(100, 150, 36, 36)], [0], (416, 416), SEP_ANCHORS, 2)
    assert assigned_entries(y_true) == [(1, 9, 6, 0)]


def test_neighbor_cells_stay_on_the_grid_for_centres_outside_the_image():
    # 32x32 input: one cell at stride 32 (a 400x400 box matches anchor 6 only); centres left
    # of / right of the image: the neighbour would be cell 1 / -1 without the clip
    for cx in (-10.0, 45.0):
        y_true, _ = build_targets([box(cx, 16, 400, 400)], [0], (32, 32), SEP_ANCHORS, 1, neighbor_cells=True)
        assert assigned_entries(y_true) == [(0, 0, 0, 0)]


def test_neighbor_cells_never_displace_a_centre_cell():
    # b's centre cell is a's lower neighbour: b keeps it although a matches the anchor better
    a, b = box(104, 108, 36, 36), box(104, 120, 40, 40)
    y_true, _ = build_targets([a, b], [0, 1], (416, 416), SEP_ANCHORS, 2, neighbor_cells=True)
    assert y_true[1][7, 6, 0, 6] == 1 and y_true[1][7, 6, 0, 5] == 0
    assert y_true[1][6, 6, 0, 5] == 1


@pytest.mark.parametrize("neighbors", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_on_random_crowded_boxes(seed, neighbors):
    rng = np.random.default_rng(seed)
    H, W, C, n = 320, 416, 4, 300
    # few distinct centres and shapes so that conflicts happen a lot (and exact ties)
    cx = rng.choice(np.arange(0, W + 1, 8), n).astype(np.float32)
    cy = rng.choice(np.arange(0, H + 1, 8), n).astype(np.float32)
    wh = DEFAULT[rng.integers(0, 9, n)] * rng.choice([0.5, 1.0, 1.5], (n, 1))
    boxes = np.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
    boxes[:3, 2] = boxes[:3, 0]  # degenerate boxes are ignored
    labels = rng.integers(0, C, n)
    y_true, gt = build_targets(boxes, labels, (H, W), DEFAULT, C, max_boxes=50, neighbor_cells=neighbors)
    ref, ref_gt = reference_targets(boxes, labels, (H, W), DEFAULT, C, 0.213, 50, neighbors)
    for got, want in zip(y_true, ref):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(gt, ref_gt, atol=1e-6)
    assert sum(int(y[..., 4].sum()) for y in y_true) > 50


def test_empty_and_validation():
    y_true, gt = build_v4(np.zeros((0, 4)), np.zeros((0,)), (128, 96), DEFAULT, 3, max_boxes=5)
    assert [y.shape for y in y_true] == [(4, 3, 3, 8), (8, 6, 3, 8), (16, 12, 3, 8)]
    assert not any(y.any() for y in y_true) and gt.shape == (5, 4) and not gt.any()
    with pytest.raises(ValueError, match="labels must be in"):
        build_v4([box(10, 10, 5, 5)], [3], (128, 128), DEFAULT, 3)
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        build_v4([box(10, 10, 5, 5)] * 2, [0], (128, 128), DEFAULT, 3)


def test_load_anchors(tmp_path):
    a = load_anchors()
    assert a.shape == (9, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, DEFAULT)
    p = tmp_path / "bad.txt"
    p.write_text("1,2, 3,4")
    with pytest.raises(ValueError, match=r"bad\.txt.*found 4"):
        load_anchors(p)
    p.write_text("10,10, 1,1, " + ", ".join(f"{s},{s}" for s in SIDES[2:]))
    with pytest.warns(UserWarning, match="not sorted"):
        a = load_anchors(p)
    np.testing.assert_array_equal(a[:2], [[1, 1], [10, 10]])
    with pytest.raises(OSError, match="missing.txt"):
        load_anchors(tmp_path / "missing.txt")


def test_parse_input_hw():
    assert parse_input_hw(416) == (416, 416) and parse_input_hw("320x416") == (320, 416)
    assert parse_input_hw((96, 128)) == (96, 128)
    with pytest.raises(ValueError, match="multiples of 32"):
        parse_input_hw("100")
