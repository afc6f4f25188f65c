"""utils/data/demo_data.py: the synthetic shapes VOC dataset."""
import os
import pathlib

import numpy as np
import pytest

from utils.data import demo_data
from utils.data.demo_data import DEMO_CLASSES, DEMO_COLOURS, make_demo_dataset, render_sample
from utils.data.check import dataset_stats
from utils.data.images import read_image
from utils.data.voc import load_voc, read_class_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
N = 24


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", num_images=N, seed=0)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_classes(demo):
    assert sorted(p.name for p in (demo / "ImageSets" / "Main").iterdir()) == ["test.txt", "train.txt",
                                                                              "trainval.txt", "val.txt"]
    assert len(list((demo / "Annotations").glob("*.xml"))) == N == len(list((demo / "JPEGImages").glob("*.jpg")))
    assert read_class_names(demo / "demo_classes.txt") == list(DEMO_CLASSES)
    assert read_class_names(ROOT / "model_data" / "demo_classes.txt") == list(DEMO_CLASSES)
    colours = np.array(list(DEMO_COLOURS.values()), float)
    assert min(np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[i + 1:]) > 100


def test_deterministic_same_bytes_and_seed_matters(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", num_images=N, seed=0)
    assert _files(again) == _files(demo)
    prefix = make_demo_dataset(tmp_path / "prefix", num_images=5, seed=0)
    assert (prefix / "JPEGImages" / "demo_00004.jpg").read_bytes() == (demo / "JPEGImages" / "demo_00004.jpg").read_bytes()
    other = make_demo_dataset(tmp_path / "other", num_images=5, seed=1)
    assert (other / "JPEGImages" / "demo_00000.jpg").read_bytes() != (demo / "JPEGImages" / "demo_00000.jpg").read_bytes()


def test_loads_cleanly_with_disjoint_complete_splits(demo):
    log = []
    parts = {s: load_voc(demo, s, demo / "demo_classes.txt", log=log.append) for s in ("train", "val", "test")}
    assert not any(m.startswith("warning") for m in log)
    ids = [r.image_id for recs in parts.values() for r in recs]
    assert sorted(ids) == [f"demo_{i:05d}" for i in range(N)]
    trainval = load_voc(demo, "trainval", DEMO_CLASSES, log=None)
    assert {r.image_id for r in trainval} == {r.image_id for s in ("train", "val") for r in parts[s]}


def test_boxes_inside_images_and_on_the_drawn_shapes(demo):
    """Independent check from pixels: in the lossless render each box is exactly the extent of
    pixels of its class colour (every box edge touches such a pixel; the 1-px ring outside holds
    none, since same-class shapes never touch); in the written JPEG the colour fills the box."""
    recs = load_voc(demo, None, DEMO_CLASSES, log=None)
    n_boxes = 0
    for r in recs:
        i = int(r.image_id.split("_")[1])
        img, objects = render_sample(0, i)
        h, w = img.shape[:2]
        assert (r.width, r.height) == (w, h)
        np.testing.assert_array_equal(r.boxes, np.array([o["box"] for o in objects], np.float32).reshape(-1, 4))
        jpg = read_image(r.image_path).astype(float)
        for box, label in zip(r.boxes.astype(int), r.labels):
            x1, y1, x2, y2 = box - 1  # VOC 1-based inclusive -> 0-based inclusive columns / rows
            assert 0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h
            colour = np.array(DEMO_COLOURS[DEMO_CLASSES[label]], float)
            near = np.linalg.norm(img.astype(float) - colour, axis=-1) < 45
            inside = near[y1:y2 + 1, x1:x2 + 1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            ring = np.zeros_like(near)
            ring[max(y1 - 1, 0):y2 + 2, max(x1 - 1, 0):x2 + 2] = True
            ring[y1:y2 + 1, x1:x2 + 1] = False
            assert not (near & ring).any()
            jnear = np.linalg.norm(jpg[y1:y2 + 1, x1:x2 + 1] - colour, axis=-1) < 60
            assert jnear.mean() > 0.15
            n_boxes += 1
    assert n_boxes > N  # several objects per image on average


def test_variety_of_sizes_counts_and_negatives():
    stats = {"small": 0, "large": 0}
    sizes, counts = set(), []
    for i in range(40):
        img, objects = render_sample(7, i)
        sizes.add(img.shape[:2])
        counts.append(len(objects))
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            area = (x2 - x1 + 1) * (y2 - y1 + 1)
            stats["small"] += area < 32 ** 2
            stats["large"] += area >= 96 ** 2
        assert 240 <= img.shape[0] <= 480 and 240 <= img.shape[1] <= 480
    assert len(sizes) > 30 and stats["small"] > 0 and stats["large"] > 0
    assert 0 in counts and max(counts) >= 4
    fixed, _ = render_sample(7, 0, image_size=(320, 256))
    assert fixed.shape == (256, 320, 3)


def test_reused_when_complete_replaced_when_different_refuses_foreign(demo, tmp_path):
    stamp = (demo / "JPEGImages" / "demo_00000.jpg").stat().st_mtime_ns
    assert make_demo_dataset(demo, num_images=N, seed=0) == demo
    assert (demo / "JPEGImages" / "demo_00000.jpg").stat().st_mtime_ns == stamp
    out = make_demo_dataset(tmp_path / "d", num_images=4, seed=0)
    out = make_demo_dataset(out, num_images=3, seed=0)
    assert len(list((out / "JPEGImages").iterdir())) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="mine.*not a demo dataset"):
        make_demo_dataset(foreign, num_images=2)
    assert (foreign / "keep.txt").read_text() == "user data"


def test_cli(tmp_path, capsys):
    assert demo_data.main(["--out", str(tmp_path / "c"), "--num-images", "10", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "10 images (train 7, val 2, test 1)" in out
    assert os.path.isfile(tmp_path / "c" / "demo_manifest.json")
    st = dataset_stats(load_voc(tmp_path / "c", None, DEMO_CLASSES, log=None), DEMO_CLASSES)
    assert st["images"] == 10
