"""utils/inference/heatmap.py: objectness maps (sigmoid of the raw heads, best anchor per cell,
letterbox cut away, source pixels), their combination and the colour overlay."""
import cv2
import numpy as np
import pytest

from utils.inference.heatmap import combine_maps, objectness_maps, overlay_heatmap
from utils.letterbox import Letterbox
from utils.targets import load_anchors

ANCHORS = load_anchors()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _heads(input_hw, batch, num_classes, fill):
    """Raw heads (stride 32, 16, 8) of ``batch`` images; ``fill(b, stride)`` -> (gh, gw, 3) objectness logits."""
    rng = np.random.default_rng(0)
    heads = []
    for s in (32, 16, 8):
        gh, gw = input_hw[0] // s, input_hw[1] // s
        raw = rng.normal(0, 3, (batch, gh, gw, 3, 5 + num_classes)).astype(np.float32)  # boxes, classes: noise
        for b in range(batch):
            raw[b, ..., 4] = fill(b, s, gh, gw)
        heads.append(raw.reshape(batch, gh, gw, 3 * (5 + num_classes)))
    return heads


def test_objectness_maps_against_numpy():
    # one image 64x128 (h, w) in a 128x128 input: dy = 32, rows 32..96 of the input are the image
    lb = Letterbox.compute((64, 128), (128, 128))
    heads = []
    for s in (32, 16, 8):
        g = 128 // s
        raw = np.full((1, g, g, 3, 8), -3.0, np.float32)
        raw[0, :, : g // 2, 1, 4] = 3.0  # left half: objectness sigmoid(3) on anchor 1
        heads.append(raw.reshape(1, g, g, 24))
    maps = objectness_maps(heads, ANCHORS, (128, 128), 3, [lb])[0]
    hi, lo = 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(3.0))
    for stride, m in maps.items():
        assert m.shape == (64, 128)
        np.testing.assert_allclose(m[:, :40], hi, atol=1e-5)  # far from the edge: exact cell values
        np.testing.assert_allclose(m[:, -40:], lo, atol=1e-5)


def test_each_stride_and_image_gets_its_own_head_and_the_best_anchor():
    # per image and stride a different constant; per anchor a different logit, the max is kept
    logit = {(0, 32): 2.0, (0, 16): -1.0, (0, 8): 0.5, (1, 32): -3.0, (1, 16): 4.0, (1, 8): 0.0}
    heads = _heads((96, 128), 2, 4, lambda b, s, gh, gw: np.broadcast_to(
        logit[(b, s)] + np.array([-2.0, 0.0, -5.0], np.float32), (gh, gw, 3)))
    sources = [(50, 200), (300, 120)]  # wide: padded top and bottom; tall: left and right
    lbs = [Letterbox.compute(hw, (96, 128)) for hw in sources]
    maps = objectness_maps(heads, ANCHORS, (96, 128), 4, lbs)
    assert len(maps) == 2
    for b, (per_stride, hw) in enumerate(zip(maps, sources)):
        assert sorted(per_stride) == [8, 16, 32]
        for s, m in per_stride.items():
            assert m.shape == hw and m.dtype == np.float32  # source pixels, (h, w)
            np.testing.assert_allclose(m, _sigmoid(logit[(b, s)]), rtol=1e-5)


def test_letterbox_padding_is_cut_away():
    # a 64x128 image in a 128x128 input sits in rows 32..96; the stride-8 grid's rows 0-3 and
    # 12-15 are padding. Hot padding rows must not show in the map, except where the bilinear
    # upsampling blends the cell next to the image edge (within half a cell, 4 pixels).
    lb = Letterbox.compute((64, 128), (128, 128))
    assert lb.offset == (32, 0) and lb.new_hw == (64, 128)

    def fill(b, s, gh, gw):
        rows = np.full((gh, gw, 3), -6.0, np.float32)
        pad = 32 // s
        rows[:pad] = rows[gh - pad:] = 6.0
        return rows

    maps = objectness_maps(_heads((128, 128), 1, 2, fill), ANCHORS, (128, 128), 2, [lb])[0]
    m = maps[8]
    assert m.shape == (64, 128)
    np.testing.assert_allclose(m[4:-4], _sigmoid(-6.0), rtol=1e-4)  # no padding anywhere inside
    assert m[0].min() > _sigmoid(-6.0) + 0.1 and m[-1].min() > _sigmoid(-6.0) + 0.1  # blended edge rows
    assert m.max() < 0.5  # the hot rows themselves are gone


def test_combine_maps_is_the_pixelwise_max():
    a = np.array([[0.1, 0.9], [0.5, 0.0]], np.float32)
    b = np.array([[0.3, 0.2], [0.5, 0.7]], np.float32)
    c = np.zeros((2, 2), np.float32)
    np.testing.assert_array_equal(combine_maps({32: a, 16: b, 8: c}), np.array([[0.3, 0.9], [0.5, 0.7]], np.float32))


def test_overlay_keeps_the_image_size_and_uses_an_absolute_scale():
    image = np.full((30, 40, 3), 200, np.uint8)
    heat = np.zeros((30, 40), np.float32)
    heat[:, 20:] = 1.0
    out = overlay_heatmap(image, heat, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    cold, hot = out[0, 0].astype(int), out[0, -1].astype(int)
    assert cold[2] > cold[0] + 50 and hot[0] > hot[2] + 50  # 0 is blue, 1 is red (RGB order)
    np.testing.assert_array_equal(overlay_heatmap(image, heat, alpha=0.0), image)
    jet = cv2.cvtColor(cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0]
    full = overlay_heatmap(image, heat, alpha=1.0)
    assert full[0, 0].tolist() == jet[0].tolist() and full[0, -1].tolist() == jet[1].tolist()
    # absolute: a map that is 0.5 everywhere is not stretched to the full range
    half = overlay_heatmap(image, np.full((30, 40), 0.5, np.float32), alpha=1.0)
    mid = cv2.cvtColor(cv2.applyColorMap(np.array([[128]], np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0, 0]
    assert (half == mid).all()
    with pytest.raises(ValueError, match=r"heatmap \(30, 20\) does not match the image \(30, 40\)"):
        overlay_heatmap(image, heat[:, :20])
