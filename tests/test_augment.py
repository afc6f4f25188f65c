"""utils/data/augment.py: boxes follow the pixels, flip, HSV, mosaic, mixup, tiny boxes,
determinism and the mosaic/mixup epoch switch."""
import numpy as np
import pytest

from utils.data.augment import (AugmentConfig, Augmenter, filter_boxes, hflip, hsv_jitter, letterbox_sample,
                           mixup, mosaic, random_single, sample_rng)

NO_COLOR = dict(hue=0.0, sat=0.0, val=0.0)
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def rect_image(hw, box, color=(255, 255, 255)):
    """Black image of size hw with a filled rectangle ``box`` (xyxy, pixel edges)."""
    img = np.zeros((*hw, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = color
    return img


def color_mask(image, color):
    """Pixels clearly of ``color`` (each channel within 60 of it): interpolated edges and the
    grey canvas do not count."""
    return np.all(np.abs(image.astype(int) - np.array(color)) < 60, axis=-1)


def assert_box_bounds_mask(box, mask, tol):
    ys, xs = np.nonzero(mask)
    assert len(xs), "no pixel of the object's colour is left"
    x1, y1, x2, y2 = box
    # the mask lies inside the box, and the box is tight around it (pixel i spans [i, i+1))
    assert xs.min() >= x1 - tol and xs.max() + 1 <= x2 + tol, (box, xs.min(), xs.max() + 1)
    assert ys.min() >= y1 - tol and ys.max() + 1 <= y2 + tol, (box, ys.min(), ys.max() + 1)
    assert abs(xs.min() - x1) <= tol and abs(xs.max() + 1 - x2) <= tol, (box, xs.min(), xs.max() + 1)
    assert abs(ys.min() - y1) <= tol and abs(ys.max() + 1 - y2) <= tol, (box, ys.min(), ys.max() + 1)


def test_random_single_boxes_follow_pixels_and_stay_on_canvas():
    src_box = (50, 40, 150, 120)
    image = rect_image((200, 300), src_box)
    cfg = AugmentConfig(**NO_COLOR)
    kept = 0
    for seed in range(40):
        out, boxes, labels = random_single(image, np.array([src_box], np.float32), [3], (128, 160),
                                           np.random.default_rng(seed), cfg)
        assert out.shape == (128, 160, 3) and out.dtype == np.uint8
        assert boxes.dtype == np.float32 and labels.dtype == np.int32
        assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= 160)
        assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= 128)
        mask = color_mask(out, (255, 255, 255))
        if len(boxes):
            kept += 1
            assert labels.tolist() == [3]
            assert_box_bounds_mask(boxes[0], mask, tol=1.5)
        else:  # dropped: little (or none) of the object is visible
            assert mask.sum() < 0.1 * 100 * 80 * 4  # scale <= 2 -> area <= 4x
    assert kept >= 25


def test_letterbox_sample_boxes_follow_pixels():
    src_box = (30, 60, 90, 200)
    image = rect_image((240, 320), src_box, (0, 255, 0))
    out, boxes, labels, lb = letterbox_sample(image, np.array([src_box], np.float32), [1], (160, 128))
    assert out.shape == (160, 128, 3) and labels.tolist() == [1]
    assert lb.offset == (32, 0)  # 320x240 -> 128x96, centred vertically in 160
    np.testing.assert_allclose(boxes[0], [12, 32 + 24, 36, 32 + 80], atol=1e-4)
    assert_box_bounds_mask(boxes[0], color_mask(out, (0, 255, 0)), tol=1.0)


def test_hflip_maps_boxes_and_pixels():
    image = rect_image((50, 80), (10, 5, 30, 25), (255, 0, 0))
    out, boxes = hflip(image, np.array([[10, 5, 30, 25]], np.float32))
    np.testing.assert_array_equal(boxes, [[50, 5, 70, 25]])
    np.testing.assert_array_equal(out, image[:, ::-1])
    assert_box_bounds_mask(boxes[0], color_mask(out, (255, 0, 0)), tol=0)


def test_hsv_jitter_against_hand_values():
    grey = np.full((4, 4, 3), 200, np.uint8)
    np.testing.assert_array_equal(hsv_jitter(grey, [1.0, 1.0, 0.5]), np.full((4, 4, 3), 100, np.uint8))
    green = np.zeros((4, 4, 3), np.uint8)
    green[..., 1] = 255  # OpenCV hue 60; x1.5 -> 90 = cyan
    np.testing.assert_array_equal(hsv_jitter(green, [1.5, 1.0, 1.0])[0, 0], [0, 255, 255])
    # hue wraps: 60 * 3.5 = 210 -> 30 (yellow)
    np.testing.assert_array_equal(hsv_jitter(green, [3.5, 1.0, 1.0])[0, 0], [255, 255, 0])
    # saturation 0 -> grey at the value
    np.testing.assert_array_equal(hsv_jitter(green, [1.0, 0.0, 1.0])[0, 0], [255, 255, 255])
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert hsv_jitter(img, [1, 1, 1]) is img


def test_filter_boxes_clips_and_drops_tiny():
    boxes = np.array([[10, 10, 50, 50],      # inside: kept
                      [-90, 10, 5, 50],      # 5% left after clipping: dropped
                      [-30, 10, 10, 50],     # 25% left: kept, clipped
                      [20, 20, 21.5, 60],    # 1.5 px wide: dropped
                      [98.5, 0, 120, 10],    # 1.5 px wide after clipping: dropped
                      [0, 0, 2, 2]],         # exactly 2 px: kept
                     np.float32)
    out, labels = filter_boxes(boxes, [0, 1, 2, 3, 4, 5], (0, 0, 100, 100), min_px=2, min_area_frac=0.1)
    np.testing.assert_array_equal(out, [[10, 10, 50, 50], [0, 10, 10, 50], [0, 0, 2, 2]])
    assert labels.tolist() == [0, 2, 5]
    out, labels = filter_boxes(boxes[:0], [], (0, 0, 100, 100))
    assert out.shape == (0, 4) and labels.shape == (0,)


def tile_samples():
    sizes = [(120, 160), (200, 150), (90, 90), (160, 240)]
    samples = []
    for k, (h, w) in enumerate(sizes):
        box = (w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 3)
        samples.append((rect_image((h, w), box, COLORS[k]), np.array([box], np.float32), np.array([k])))
    return samples


def test_mosaic_shape_boxes_inside_and_following_pixels():
    cfg = AugmentConfig(**NO_COLOR)
    seen = set()
    for seed in range(12):
        out, boxes, labels = mosaic(tile_samples(), (160, 192), np.random.default_rng(seed), cfg)
        assert out.shape == (160, 192, 3) and out.dtype == np.uint8
        assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= 192) and np.all(boxes[:, [1, 3]] <= 160)
        assert len(set(labels.tolist())) == len(labels)  # one object per tile at most
        for box, k in zip(boxes, labels):
            seen.add(int(k))
            assert_box_bounds_mask(box, color_mask(out, COLORS[k]), tol=1.5)
    assert seen == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="4 samples"):
        mosaic(tile_samples()[:3], (160, 192), np.random.default_rng(0), cfg)


def test_mixup_blends_and_concatenates():
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), np.array([[1, 2, 10, 12]], np.float32), np.array([0]))
    b = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), np.array([[3, 3, 9, 9], [5, 5, 30, 30]], np.float32),
         np.array([2, 1]))
    image, boxes, labels = mixup(a, b, 0.25)
    want = np.rint(0.25 * a[0].astype(np.float64) + 0.75 * b[0].astype(np.float64))
    assert np.abs(image.astype(int) - want).max() <= 1
    np.testing.assert_array_equal(boxes, [[1, 2, 10, 12], [3, 3, 9, 9], [5, 5, 30, 30]])
    assert labels.tolist() == [0, 2, 1] and labels.dtype == np.int32


class CountingLoader:
    def __init__(self, samples):
        self.samples, self.calls = samples, 0

    def __call__(self, i, rng):
        self.calls += 1
        return self.samples[i]


def test_train_sample_deterministic_under_seed_and_differs_across_seeds():
    samples = tile_samples()
    aug = Augmenter((128, 128), AugmentConfig(mosaic_prob=0.5, mixup_prob=0.5))

    def run(seed, epoch, index):
        return aug.train_sample(index, CountingLoader(samples), 4, sample_rng(seed, epoch, index))

    for index in range(4):
        x, y = run(7, 3, index), run(7, 3, index)
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(run(7, 3, i)[0], run(8, 3, i)[0]) for i in range(4))
    assert not np.array_equal(run(7, 3, 0)[0], run(7, 4, 0)[0])


def test_mosaic_mixup_switch_follows_epochs_and_flag():
    samples = tile_samples()
    aug = Augmenter((128, 128), AugmentConfig(mosaic_prob=1.0, mixup_prob=1.0, mosaic_fraction=0.7))
    aug.set_epoch(6, 10)
    assert aug.special_enabled
    loader = CountingLoader(samples)
    aug.train_sample(0, loader, 4, sample_rng(0, 6, 0))
    assert loader.calls == 5  # 4 mosaic tiles + 1 mixup partner
    aug.set_epoch(7, 10)
    assert not aug.special_enabled
    loader = CountingLoader(samples)
    aug.train_sample(0, loader, 4, sample_rng(0, 7, 0))
    assert loader.calls == 1
    aug.set_special(True)
    assert aug.special_enabled
    aug.set_special(None)
    assert not aug.special_enabled
