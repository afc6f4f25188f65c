"""utils/data/anchors.py: k-means recovers synthetic cluster shapes, deterministic, file format,
letterboxed box shapes, and the CLI on BCCD."""
import numpy as np
import pytest

from utils.data.anchors import box_shapes, format_anchors, kmeans_anchors, main, mean_best_iou, save_anchors
from utils.targets import load_anchors
from utils.data.voc import VocRecord

SHAPES = np.array([[8, 12], [20, 14], [18, 40], [45, 30], [40, 90], [100, 70], [90, 200], [220, 160], [380, 330]],
                  np.float32)


def clusters(seed=0, per=60, noise=0.04):
    rng = np.random.default_rng(seed)
    wh = np.repeat(SHAPES, per, axis=0) * rng.normal(1.0, noise, (len(SHAPES) * per, 2))
    return rng.permutation(wh).astype(np.float32)


def test_kmeans_recovers_cluster_shapes_and_is_deterministic():
    wh = clusters()
    anchors = kmeans_anchors(wh, 9, seed=3)
    assert anchors.shape == (9, 2) and anchors.dtype == np.float32
    np.testing.assert_allclose(anchors, SHAPES, rtol=0.05)  # sorted by area like SHAPES
    assert np.all(np.diff(anchors.prod(1)) > 0)
    np.testing.assert_array_equal(anchors, kmeans_anchors(wh, 9, seed=3))
    assert mean_best_iou(wh, anchors) > 0.9
    assert mean_best_iou(wh, anchors) > mean_best_iou(wh, load_anchors())
    small = kmeans_anchors(clusters(1)[:200], 3, seed=0, n_init=1)
    assert small.shape == (3, 2)


def test_kmeans_seed_changes_the_start():
    wh = np.random.default_rng(0).uniform(5, 300, (300, 2)).astype(np.float32)  # no real clusters
    a, b = kmeans_anchors(wh, 9, seed=0, n_init=1), kmeans_anchors(wh, 9, seed=1, n_init=1)
    assert not np.array_equal(a, b)


def test_kmeans_rejects_too_few_shapes():
    with pytest.raises(ValueError, match="at least 9 distinct box shapes"):
        kmeans_anchors(np.array([[10, 10]] * 50), 9)


def test_box_shapes_letterboxed_without_difficult():
    r = VocRecord("x.jpg", np.array([[0, 0, 64, 32], [10, 10, 20, 20], [5, 5, 5, 9]], np.float32),
                  np.array([0, 1, 0]), np.array([False, True, False]), width=640, height=480)
    wh = box_shapes([r], (416, 416))  # scale 0.65 both ways; zero-width box dropped
    np.testing.assert_allclose(wh, [[41.6, 20.8]], rtol=1e-5)
    assert len(box_shapes([r], (416, 416), include_difficult=True)) == 2


def test_file_round_trip(tmp_path):
    path = tmp_path / "a.txt"
    save_anchors(path, SHAPES + 0.4)
    assert format_anchors(SHAPES).startswith("8,12,  20,14,")
    np.testing.assert_array_equal(load_anchors(path), SHAPES)


def test_cli_on_bccd(bccd_root, tmp_path, capsys):
    out = tmp_path / "bccd_anchors.txt"
    argv = ["--root", str(bccd_root), "--split", "train", "--classes", "model_data/bccd_classes.txt",
            "--input-size", "416", "--out", str(out), "--seed", "0", "--n-init", "2"]
    anchors = main(argv)
    printed = capsys.readouterr().out
    assert "mean best IoU" in printed and "default" in printed
    np.testing.assert_array_equal(load_anchors(out), anchors)
    assert np.array_equal(main(argv), anchors)  # deterministic under the seed


def test_cli_takes_every_dataset_format(tmp_path, capsys):
    """The same anchors from the demo set as VOC and from its COCO and YOLO copies."""
    from _data_helpers import demo_copies

    d = demo_copies(tmp_path / "d", num_images=24, seed=0)
    common = ["--input-size", "128", "--seed", "0", "--n-init", "2"]
    voc = main(["--root", str(d["voc"]), "--classes", str(d["classes"]), "--out", str(tmp_path / "voc.txt"), *common])
    for fmt in ("coco", "yolo"):
        got = main(["--data", str(d[fmt]), "--out", str(tmp_path / f"{fmt}.txt"), *common])
        np.testing.assert_allclose(got, voc, atol=1)  # boxes within a pixel, shapes within one after rounding
    assert "classes: 4 from the dataset (YOLO names" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--data", str(d["voc"]), "--out", str(tmp_path / "x.txt")])  # VOC needs its class list
    assert "--classes FILE" in capsys.readouterr().err
