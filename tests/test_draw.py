"""utils/draw.py: boxes drawn where they are, labels kept inside the image, class colours."""
import numpy as np
import pytest

from utils.draw import class_colors, draw_detections, image_grid


def test_class_colors_distinct_and_stable():
    colors = class_colors(20)
    assert len(set(colors)) == 20 and colors == class_colors(20)
    assert class_colors(3) == colors[:3]
    for a, b in zip(colors, colors[1:]):  # neighbours clearly different
        assert sum(abs(x - y) for x, y in zip(a, b)) > 100


def test_draw_box_edges_and_input_untouched():
    image = np.zeros((100, 120, 3), np.uint8)
    out = draw_detections(image, [[20, 30, 80, 70]], [1], class_names=["a", "b"], show_labels=False,
                          thickness=1)
    assert not image.any() and out.shape == image.shape and out.dtype == np.uint8
    color = np.array(class_colors(2)[1])
    np.testing.assert_array_equal(out[50, 20], color)  # left edge
    np.testing.assert_array_equal(out[30, 50], color)  # top edge
    assert not out[50, 50].any() and not out[5, 5].any()  # inside and outside stay black


def test_label_tag_kept_inside_image():
    image = np.zeros((60, 80, 3), np.uint8)
    # box touching the top-right corner: the tag cannot go above it nor past the right edge
    out = draw_detections(image, [[60, 0, 80, 30]], [0], scores=[0.9], class_names=["longclassname"])
    tag = np.all(out == np.array(class_colors(1)[0]), axis=-1)
    ys, xs = np.nonzero(tag)
    assert ys.min() == 0 and xs.max() <= 79
    assert xs.min() < 60  # shifted left to fit the text
    # a box in the middle gets its tag above it
    out = draw_detections(np.zeros((200, 200, 3), np.uint8), [[50, 100, 150, 150]], [0], class_names=["x"])
    tag_rows = np.nonzero(np.all(out == np.array(class_colors(1)[0]), axis=-1).sum(1) > 5)[0]
    assert tag_rows.min() < 100


def test_draw_validation_and_grid():
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_detections(np.zeros((10, 10, 3)), [[0, 0, 1, 1]] * 2, [0])
    with pytest.raises(ValueError, match="HxWx3"):
        draw_detections(np.zeros((10, 10)), [], [])
    grid = image_grid([np.full((10, 20, 3), v, np.uint8) for v in (1, 2, 3)], pad=2)
    assert grid.shape == (22, 42, 3)  # 2x2 grid
    assert grid[0, 0, 0] == 1 and grid[0, 22, 0] == 2 and grid[12, 0, 0] == 3 and grid[12, 22, 0] == 255
