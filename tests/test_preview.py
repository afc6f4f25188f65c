"""utils/data/preview.py: the sample-grid CLI ``python -m utils.data.preview``."""
import cv2
import numpy as np
import pytest

from _data_helpers import make_root, voc_xml
from utils.data.preview import main


@pytest.fixture
def voc(tmp_path):
    """Two tiny VOC roots (6 + 2 images) and their class file."""
    a = make_root(tmp_path / "A", {f"a{i}": voc_xml([("cat", (4, 4, 40, 30), 0)]) for i in range(6)})
    b = make_root(tmp_path / "B", {f"b{i}": voc_xml([("dog", (10, 8, 60, 44), 0)]) for i in range(2)})
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    return a, b, classes


def test_visual_check_cli_writes_grid(bccd_root, tmp_path, capsys):
    import cv2
    from utils.data.preview import main
    out = tmp_path / "samples.png"
    main(["--root", str(bccd_root), "--classes", "model_data/bccd_classes.txt", "--out", str(out),
          "--num", "4", "--input-size", "128"])
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * 128 + 4, 2 * 128 + 4, 3)  # 2x2 tiles, 4 px apart
    assert "4 augmented samples" in capsys.readouterr().out


def test_grid_of_the_requested_samples(voc, tmp_path, capsys):
    a, b, classes = voc
    out = tmp_path / "grid.png"
    main(["--root", str(a), "--root", str(b), "--classes", str(classes), "--out", str(out), "--num", "3",
          "--input-size", "64x96", "--special", "off"])
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * 64 + 4, 2 * 96 + 4, 3)  # 3 tiles -> 2 columns, 2 rows, 4 px apart
    assert (grid[-64:, -96:] == 255).all()  # the 4th place stays empty (white)
    assert not (grid[:64, :96] == 255).all()
    lines = capsys.readouterr().out.strip().splitlines()
    assert "loaded 8 images with 8 boxes" in lines[0]  # both roots
    assert lines[-1] == f"wrote {out}: 3 augmented samples of 8 records (64x96, mosaic/mixup off)"


def test_num_is_capped_by_the_records_and_seed_decides(voc, tmp_path, capsys):
    a, _, classes = voc
    args = ["--root", str(a), "--classes", str(classes), "--num", "50", "--input-size", "64", "--special", "on"]
    main(args + ["--out", str(tmp_path / "s0.png"), "--seed", "0"])
    assert "6 augmented samples of 6 records (64x64, mosaic/mixup on)" in capsys.readouterr().out
    main(args + ["--out", str(tmp_path / "s0_again.png"), "--seed", "0"])
    main(args + ["--out", str(tmp_path / "s1.png"), "--seed", "1"])
    s0, again, s1 = (cv2.imread(str(tmp_path / n)) for n in ("s0.png", "s0_again.png", "s1.png"))
    assert s0.shape == (2 * 64 + 4, 3 * 64 + 8, 3)  # 6 tiles -> 3 columns, 2 rows
    np.testing.assert_array_equal(s0, again)
    assert not np.array_equal(s0, s1)


def test_unwritable_output_is_named(voc, tmp_path):
    a, _, classes = voc
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(SystemExit, match=r"could not write .*taken\.png"):
        main(["--root", str(a), "--classes", str(classes), "--out", str(tmp_path / "taken.png"), "--num", "1",
              "--input-size", "64"])


def test_grid_from_a_coco_file_and_its_image_folder(voc, tmp_path, capsys):
    from utils.data.coco import write_coco
    from utils.data.voc import load_voc

    a, _, classes = voc
    write_coco(load_voc(a, None, classes, log=None), classes, tmp_path / "ann" / "a.json")
    out = tmp_path / "coco.png"
    main(["--data", str(tmp_path / "ann" / "a.json"), "--images", str(a / "JPEGImages"), "--split", "all",
          "--out", str(out), "--num", "2", "--input-size", "64", "--special", "off"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "classes: 2 from the dataset (COCO categories of " + str(tmp_path / "ann" / "a.json") \
        + "): cat, dog; --classes FILE overrides"
    assert "loaded 6 images with 6 boxes" in lines[1] and lines[-1].startswith(f"wrote {out}: 2 augmented samples")
