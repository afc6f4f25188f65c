"""utils/letterbox.py: the Letterbox geometry (hand-computed), the padded canvas (value and
placement), and the box transform and its inverse (tests/test_decode.py has the basic
round trip; these add odd sizes, clipping and agreement with the drawn pixels)."""
import dataclasses

import numpy as np
import pytest

from utils.letterbox import PAD_VALUE, Letterbox, letterbox_boxes, letterbox_image, unletterbox_boxes


@pytest.mark.parametrize("src_hw,dst_hw,new_hw,offset", [
    ((100, 200), (128, 128), (64, 128), (32, 0)),     # wide source: bars top and bottom
    ((200, 100), (128, 128), (128, 64), (0, 32)),     # tall source: bars left and right
    ((10, 20), (33, 40), (20, 40), (6, 0)),           # odd padding 13: 6 above, 7 below
    ((101, 203), (96, 160), (80, 160), (8, 0)),       # 101 * 160 / 203 = 79.6 -> 80
    ((64, 64), (64, 64), (64, 64), (0, 0)),           # same size
    ((1, 1000), (32, 32), (1, 32), (15, 0)),          # 0.032 rows rounds to 0: at least one
])
def test_compute_hand_cases(src_hw, dst_hw, new_hw, offset):
    lb = Letterbox.compute(src_hw, dst_hw)
    assert (lb.src_hw, lb.dst_hw, lb.new_hw, lb.offset) == (src_hw, dst_hw, new_hw, offset)
    assert lb.scale_xy == pytest.approx((new_hw[1] / src_hw[1], new_hw[0] / src_hw[0]))


def test_compute_rejects_empty_sizes_and_is_frozen():
    with pytest.raises(ValueError, match=r"positive sizes.*\(0, 10\)"):
        Letterbox.compute((0, 10), (32, 32))
    with pytest.raises(ValueError, match="positive sizes"):
        Letterbox.compute((10, 10), (32, -1))
    lb = Letterbox.compute((10, 10), (32, 32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        lb.offset = (1, 1)


@pytest.mark.parametrize("src_hw,dst_hw", [((100, 200), (128, 128)), ((75, 51), (96, 64)), ((33, 33), (32, 64)),
                                           ((300, 200), (416, 416))])
def test_canvas_padding_value_and_placement(src_hw, dst_hw):
    image = np.full((*src_hw, 3), 7, np.uint8)  # any resize of a flat image stays flat
    canvas, lb = letterbox_image(image, dst_hw)
    assert canvas.shape == (*dst_hw, 3) and canvas.dtype == np.uint8
    (nh, nw), (dy, dx) = lb.new_hw, lb.offset
    inside = np.zeros(dst_hw, bool)
    inside[dy:dy + nh, dx:dx + nw] = True
    assert np.all(canvas[inside] == 7)
    assert np.all(canvas[~inside] == PAD_VALUE) and PAD_VALUE == 128
    # padding is split evenly, the odd pixel going below / right
    assert dy == (dst_hw[0] - nh) // 2 and dst_hw[0] - nh - dy in (dy, dy + 1)
    assert dx == (dst_hw[1] - nw) // 2 and dst_hw[1] - nw - dx in (dx, dx + 1)
    canvas, _ = letterbox_image(image, dst_hw, pad_value=0)
    assert np.all(canvas[~inside] == 0)


def test_same_size_image_is_returned_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    canvas, lb = letterbox_image(image, (32, 48))
    np.testing.assert_array_equal(canvas, image)
    assert lb.offset == (0, 0) and lb.scale_xy == (1.0, 1.0)
    np.testing.assert_allclose(letterbox_boxes([[1, 2, 30, 20]], lb), [[1, 2, 30, 20]])


@pytest.mark.parametrize("src_hw,dst_hw", [((120, 90), (96, 128)), ((81, 243), (128, 128)), ((40, 60), (256, 320))])
def test_box_transform_agrees_with_drawn_pixels(src_hw, dst_hw):
    """A white rectangle drawn in the source lands where letterbox_boxes puts its box."""
    h, w = src_hw
    box = np.array([w * 0.2, h * 0.3, w * 0.7, h * 0.8])
    x1, y1, x2, y2 = np.round(box).astype(int)
    image = np.zeros((h, w, 3), np.uint8)
    image[y1:y2, x1:x2] = 255
    canvas, lb = letterbox_image(image, dst_hw, pad_value=0)
    nx1, ny1, nx2, ny2 = letterbox_boxes([[x1, y1, x2, y2]], lb)[0]
    white = np.argwhere(canvas[..., 0] > 127)  # (row, col) of the drawn rectangle
    assert abs(white[:, 1].min() - nx1) <= 1 and abs(white[:, 1].max() + 1 - nx2) <= 1
    assert abs(white[:, 0].min() - ny1) <= 1 and abs(white[:, 0].max() + 1 - ny2) <= 1


@pytest.mark.parametrize("src_hw,dst_hw", [((101, 203), (96, 160)), ((7, 5), (416, 416)), ((999, 1), (64, 96))])
def test_round_trip_at_odd_sizes_both_ways(src_hw, dst_hw):
    rng = np.random.default_rng(1)
    h, w = src_hw
    lb = Letterbox.compute(src_hw, dst_hw)
    xy = rng.uniform(0, 0.5, (30, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + rng.uniform(0, 0.5, (30, 2)) * [w, h]], 1).astype(np.float32)
    net = letterbox_boxes(boxes, lb)
    np.testing.assert_allclose(unletterbox_boxes(net, lb), boxes, rtol=1e-5, atol=1e-3)
    # network boxes inside the image area come back to the same network boxes
    (nh, nw), (dy, dx) = lb.new_hw, lb.offset
    nxy = rng.uniform(0, 0.5, (30, 2)) * [nw, nh] + [dx, dy]
    net_boxes = np.concatenate([nxy, nxy + rng.uniform(0, 0.5, (30, 2)) * [nw, nh]], 1).astype(np.float32)
    np.testing.assert_allclose(letterbox_boxes(unletterbox_boxes(net_boxes, lb), lb), net_boxes, atol=1e-3)


def test_unletterbox_clips_to_the_image_only_when_asked():
    lb = Letterbox.compute((100, 200), (128, 128))  # image rows 32..96 of the canvas
    net = np.array([[-10, 0, 140, 20], [10, 40, 60, 127]], np.float32)  # into the bars and beyond
    got = unletterbox_boxes(net, lb)
    assert got[:, [0, 2]].min() >= 0 and got[:, [0, 2]].max() <= 200
    assert got[:, [1, 3]].min() >= 0 and got[:, [1, 3]].max() <= 100
    np.testing.assert_allclose(got[0], [0, 0, 200, 0])
    raw = unletterbox_boxes(net, lb, clip=False)
    np.testing.assert_allclose(raw[0], [-10 / 0.64, -32 / 0.64, 140 / 0.64, -12 / 0.64], rtol=1e-6)
    np.testing.assert_allclose(raw[1], [10 / 0.64, 8 / 0.64, 60 / 0.64, 95 / 0.64], rtol=1e-6)


def test_box_functions_do_not_modify_their_input_and_accept_one_box():
    lb = Letterbox.compute((100, 200), (128, 128))
    boxes = np.array([[10, 10, 50, 50]], np.float32)
    before = boxes.copy()
    out = letterbox_boxes(boxes, lb)
    unletterbox_boxes(out, lb)
    np.testing.assert_array_equal(boxes, before)
    np.testing.assert_allclose(letterbox_boxes([10, 10, 50, 50], lb), [[6.4, 38.4, 32, 64]], rtol=1e-6)
    assert letterbox_boxes(np.zeros((0, 4)), lb).shape == (0, 4)


def test_single_channel_image_keeps_its_channel_axis():
    gray = np.arange(16 * 32, dtype=np.uint8).reshape(16, 32, 1)
    out, lb = letterbox_image(gray, (32, 32))
    assert out.shape == (32, 32, 1)
    (nh, nw), (dy, dx) = lb.new_hw, lb.offset
    np.testing.assert_array_equal(out[dy:dy + nh, dx:dx + nw, 0], gray[..., 0])
