"""utils/data/coco.py: COCO instances JSON read into VocRecords (by category name), splits, writing."""
import json

import numpy as np
import pytest

from _data_helpers import write_jpg
from utils.data.coco import coco_class_names, load_coco, write_coco
from utils.data.voc import DatasetError, VocRecord, split_ids

CLASSES = ["cat", "dog"]


def coco_set(tmp_path, images, annotations, categories=({"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}),
             missing=(), **extra):
    """Write an instances file and 64x48 JPEGs (unless in ``missing``); images: (id, file_name[, w, h])."""
    img_dir = tmp_path / "imgs"
    entries = []
    for im in images:
        iid, name, w, h = (tuple(im) + (64, 48))[:4]
        entries.append({"id": iid, "file_name": name, "width": w, "height": h})
        if name not in missing:
            write_jpg(img_dir / name, 64, 48)
    anns = [dict({"id": k + 1, "iscrowd": 0, "segmentation": [[0, 0, 1, 1, 2, 2]]}, **a)
            for k, a in enumerate(annotations)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(dict({"images": entries, "annotations": anns, "categories": list(categories)},
                                    **extra)))
    return path, img_dir


def test_load_coco_boxes_by_category_name_crowd_and_negatives(tmp_path):
    path, img_dir = coco_set(tmp_path, [(1, "a.jpg"), (2, "b.jpg"), (5, "neg.jpg")], [
        {"image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 15]},       # dog -> xyxy [10, 5, 30, 20]
        {"image_id": 1, "category_id": 3, "bbox": [0.5, 1.5, 3, 4], "iscrowd": 1},  # crowd cat
        {"image_id": 2, "category_id": 3, "bbox": [40, 30, 24, 18]},      # touches the corner exactly
    ])
    log = []
    recs = load_coco(path, img_dir, None, CLASSES, log=log.append)
    assert [r.image_id for r in recs] == ["a", "b", "neg"]  # file order
    a, b, neg = recs
    assert isinstance(a, VocRecord) and a.image_path == str(img_dir / "a.jpg") and a.annotation_path == str(path)
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 20], [0.5, 1.5, 3.5, 5.5]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int32 and a.difficult.dtype == bool
    assert a.labels.tolist() == [1, 0]  # mapped by name: dog is class 1, cat class 0 (ids 7 and 3 ignored)
    assert a.difficult.tolist() == [False, True]  # crowd kept, flagged
    assert (a.width, a.height) == (64, 48)
    np.testing.assert_array_equal(b.boxes, [[40, 30, 64, 48]])
    assert neg.boxes.shape == (0, 4) and neg.labels.shape == (0,) and neg.difficult.shape == (0,)
    assert log == [f"{path} [all]: loaded 3 images with 3 boxes, 0 boxes dropped, 0 images skipped"]


def test_load_coco_every_bad_input_reported_and_the_rest_loads(tmp_path):
    cats = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 9, "name": "Cat"}, {"id": 4, "name": "bird"}]
    path, img_dir = coco_set(tmp_path, [(1, "good.jpg"), (2, "gone.jpg"), (3, "bad.jpg"), (4, "sized.jpg", 640, 480)], [
        {"image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 10]},
        {"image_id": 2, "category_id": 7, "bbox": [1, 2, 10, 10]},      # image file missing
        {"image_id": 3, "category_id": 99, "bbox": [1, 2, 10, 10]},     # category id not in categories
        {"image_id": 3, "category_id": 99, "bbox": [2, 2, 10, 10]},
        {"image_id": 3, "category_id": 3, "bbox": [5, 5, 0, 10]},       # zero width
        {"image_id": 3, "category_id": 3, "bbox": [5, 5, 10, -3]},      # negative height
        {"image_id": 3, "category_id": 3, "bbox": [70, 5, 10, 10]},     # wholly right of the 64-wide image
        {"image_id": 3, "category_id": 3, "bbox": [-4, 40, 20, 20]},    # clipped to [0, 40, 16, 48]
        {"image_id": 3, "category_id": 3, "bbox": [1, 2, "x", 4]},      # malformed
        {"image_id": 3, "category_id": 9, "bbox": [1, 1, 4, 4]},        # 'Cat': not in the list, hint
        {"image_id": 3, "category_id": 9, "bbox": [2, 2, 4, 4]},
        {"image_id": 3, "category_id": 4, "bbox": [1, 1, 4, 4]},        # 'bird': not in the list
        {"image_id": 3, "category_id": 3, "bbox": [1, 1, 8, 8]},        # fine
        {"image_id": 42, "category_id": 3, "bbox": [1, 1, 8, 8]},       # image id not in 'images'
        {"image_id": 4, "category_id": 3, "bbox": [1, 1, 8, 8]},        # JSON size disagrees with the image
    ], categories=cats, missing=("gone.jpg",))
    log = []
    recs = load_coco(path, img_dir, "all", CLASSES, log=log.append)
    by_id = {r.image_id: r for r in recs}
    assert sorted(by_id) == ["bad", "good", "sized"]
    np.testing.assert_array_equal(by_id["bad"].boxes, [[0, 40, 16, 48], [1, 1, 9, 9]])
    assert by_id["bad"].labels.tolist() == [0, 0]
    assert (by_id["sized"].width, by_id["sized"].height) == (64, 48)  # the image is trusted

    warns = [m[len("warning: "):] for m in log if m.startswith("warning: ")]
    assert all(m.startswith(str(path)) for m in warns)  # every message names the JSON file
    assert len(warns) == len(set(warns)) == 11
    text = "\n".join(warns)
    assert "image gone.jpg (id 2) not found" in text and "image skipped" in text
    assert "category_id 99 is not in 'categories': 2 box(es) dropped (first: annotation id 3 on bad.jpg)" in text
    assert "annotation 5 (bad.jpg): bbox [5, 5, 0, 10] has zero or negative width; box dropped" in text
    assert "annotation 6 (bad.jpg): bbox [5, 5, 10, -3] has zero or negative height" in text
    assert "annotation 7 (bad.jpg): bbox [70, 5, 10, 10] lies outside the 64x48 image; box dropped" in text
    assert "clipped to xyxy [0, 40, 16, 48]" in text
    assert "annotation 9 (bad.jpg): bbox [1, 2, 'x', 4] is not 4 finite numbers" in text
    assert "category 'Cat' (id 9) is not in the class list: 2 box(es) in 1 image(s) dropped (did you mean 'cat'?)" \
        in text
    assert "category 'bird' (id 4) is not in the class list: 1 box(es) in 1 image(s) dropped" in text
    assert "did you mean" not in next(m for m in warns if "'bird'" in m)
    assert "1 annotation(s) refer to image ids that are not in 'images' (first: annotation id 14, image_id 42)" in text
    assert "size in JSON 640x480 disagrees with the image 64x48" in text
    summary = log[-1]
    assert "loaded 3 images with 4 boxes" in summary and "1 clipped" in summary
    assert "10 boxes dropped" in summary and "3 unknown class" in summary and "2 zero-area" in summary
    assert "2 unknown category id" in summary and "1 unknown image id" in summary
    assert "1 image skipped (1 missing image)" in summary


@pytest.mark.parametrize("text, match", [
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [', "malformed JSON"),
    ('{"annotations": [], "categories": []}', "no 'images' list"),
    ('{"images": [], "categories": []}', "no 'annotations' list"),
    ('[1, 2]', "top level is a list"),
], ids=["truncated", "no-images", "no-annotations", "not-an-object"])
def test_load_coco_unusable_file_names_it(tmp_path, text, match):
    p = tmp_path / "broken.json"
    p.write_text(text)
    with pytest.raises(DatasetError, match=rf"broken\.json.*{match}"):
        load_coco(p, tmp_path, None, CLASSES, log=None)


def test_load_coco_missing_file_and_no_usable_image(tmp_path):
    with pytest.raises(DatasetError, match=r"not found: .*nope\.json"):
        load_coco(tmp_path / "nope.json", tmp_path, None, CLASSES, log=None)
    path, img_dir = coco_set(tmp_path, [(1, "a.jpg")], [], missing=("a.jpg",))
    img_dir.mkdir()
    with pytest.raises(DatasetError, match=r"no usable images.*1 missing image"):
        load_coco(path, img_dir, None, CLASSES, log=None)


def test_load_coco_split_is_split_ids_over_stems(tmp_path):
    names = [f"im{i:02d}.jpg" for i in range(20)]
    path, img_dir = coco_set(tmp_path, list(enumerate(names, 1)),
                             [{"image_id": i, "category_id": 7, "bbox": [1, 1, 5, 5]} for i in range(1, 21)])
    expected = split_ids([n[:-4] for n in names], (0.6, 0.2, 0.2), seed=5)
    parts = {s: [r.image_id for r in load_coco(path, img_dir, s, CLASSES, ratios=(0.6, 0.2, 0.2), seed=5,
                                               check_images=False, log=None)]
             for s in ("train", "val", "test", "trainval")}
    assert parts == expected  # same ids, same (sorted) order, as a flat VOC folder pair would get
    assert [len(parts[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    again = [r.image_id for r in load_coco(path, img_dir, "val", CLASSES, ratios=(0.6, 0.2, 0.2), seed=5, log=None)]
    assert again == parts["val"]
    with pytest.raises(DatasetError, match="'holdout' is not one of the ratio parts"):
        load_coco(path, img_dir, "holdout", CLASSES, log=None)


def test_coco_class_names_sorted_by_id_and_used_by_default(tmp_path):
    cats = [{"id": 5, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    path, img_dir = coco_set(tmp_path, [(1, "a.jpg")], [{"image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 4]}],
                             categories=cats)
    assert coco_class_names(path) == ["person", "car", "zebra"]
    recs = load_coco(path, img_dir, None, None, log=None)
    assert recs[0].labels.tolist() == [2]


def test_images_dir_found_beside_the_json(tmp_path):
    path, img_dir = coco_set(tmp_path, [(1, "a.jpg")], [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]}])
    (tmp_path / "annotations").mkdir()
    moved = path.rename(tmp_path / "annotations" / "instances.json")
    img_dir.rename(tmp_path / "images")
    log = []
    recs = load_coco(moved, None, None, CLASSES, log=log.append)
    assert recs[0].image_path == str(tmp_path / "images" / "a.jpg")
    assert any(f"resolved relative to {tmp_path / 'images'}" in m for m in log)


def test_write_coco_round_trip(tmp_path):
    write_jpg(tmp_path / "im" / "x.jpg", 64, 48)
    write_jpg(tmp_path / "im" / "y.png", 64, 48)
    recs = [VocRecord(str(tmp_path / "im" / "x.jpg"), np.array([[1, 2, 30, 40], [5.25, 6, 20.5, 21]], np.float32),
                      np.array([2, 0], np.int32), np.array([False, True]), 64, 48),
            VocRecord(str(tmp_path / "im" / "y.png"), np.zeros((0, 4), np.float32), np.zeros(0, np.int32),
                      np.zeros(0, bool), 64, 48)]
    names = ["cat", "dog", "bird"]
    out = write_coco(recs, names, tmp_path / "ann" / "out.json")
    data = json.loads((tmp_path / "ann" / "out.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "cat", "supercategory": "none"},
                                  {"id": 2, "name": "dog", "supercategory": "none"},
                                  {"id": 3, "name": "bird", "supercategory": "none"}]
    assert data["images"] == [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 48},
                              {"id": 2, "file_name": "y.png", "width": 64, "height": 48}]
    a0, a1 = data["annotations"]
    assert a0["bbox"] == [1, 2, 29, 38] and a0["category_id"] == 3 and a0["iscrowd"] == 0 and a0["area"] == 29 * 38
    assert a1["bbox"] == [5.25, 6, 15.25, 15] and a1["category_id"] == 1 and a1["iscrowd"] == 1
    back = load_coco(out, tmp_path / "im", None, names, log=None)
    for r, b in zip(recs, back):
        np.testing.assert_array_equal(b.boxes, r.boxes)
        assert b.labels.tolist() == r.labels.tolist() and b.difficult.tolist() == r.difficult.tolist()
    write_coco(recs, names, tmp_path / "p.json", images_dir_rel="im")
    assert [im["file_name"] for im in json.loads((tmp_path / "p.json").read_text())["images"]] == ["im/x.jpg",
                                                                                                   "im/y.png"]
    assert len(load_coco(tmp_path / "p.json", tmp_path, None, names, log=None)) == 2
    with pytest.raises(ValueError, match="label 2 is not an index"):
        write_coco(recs[:1], ["cat", "dog"], tmp_path / "q.json")
