"""utils/inference/sources.py: what --source names, the run folder and output names, and the
writers (JSON lines, VOC XML, images, crops, videos), each checked by reading back."""
import json

import numpy as np
import pytest

from _data_helpers import make_source_folder, random_rgb, write_rgb

from utils.data.images import ImageReadError, read_image
from utils.data.voc import parse_voc_xml
from utils.data.images import save_image
from utils.inference.sources import Display, JsonLinesWriter, OutputNames, SourceItem, VideoReadError, VideoReader, VideoWriter, detection_record, increment_dir, iter_images, resolve_source, safe_name, save_crops, save_voc_prediction

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_source_folder(tmp_path_factory.mktemp("images"))


# ----------------------------------------------------------------------------- sources

def test_sources_and_run_dirs(folder, tmp_path):
    items = resolve_source(str(folder))
    assert [(i.path.rsplit("/", 1)[-1], i.kind) for i in items] == [("a.jpg", "image"), ("b.png", "image"),
                                                                    ("c_corrupt.jpg", "image")]
    assert [i.path for i in resolve_source(str(folder / "*.png"))] == [str(folder / "b.png")]
    assert resolve_source("0")[0].kind == "webcam"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images or videos"):
        resolve_source(str(tmp_path / "empty"))
    base = tmp_path / "runs" / "exp"
    assert increment_dir(base) == base and increment_dir(base) == tmp_path / "runs" / "exp2"
    assert increment_dir(base) == tmp_path / "runs" / "exp3" and increment_dir(base, exist_ok=True) == base
    names = OutputNames()
    assert [names.stem(p) for p in ("a/x.jpg", "b/x.png", "x")] == ["x", "x_2", "x_3"]


def test_resolve_source_files_videos_and_patterns(tmp_path):
    write_rgb(tmp_path / "x.png", random_rgb(0, 8, 8))
    (tmp_path / "clip.MP4").write_bytes(b"")  # by extension, case-insensitive; not opened here
    (tmp_path / "scan.TIFF").write_bytes(b"")
    (tmp_path / "data.bin").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    write_rgb(tmp_path / "sub" / "y.jpg", random_rgb(1, 8, 8))
    assert resolve_source(tmp_path / "x.png") == [SourceItem(str(tmp_path / "x.png"), "image")]
    assert resolve_source(str(tmp_path / "clip.MP4"))[0].kind == "video"
    assert resolve_source(str(tmp_path / "data.bin"))[0].kind == "image"  # named: read (and maybe skipped)
    # a folder: its images and videos sorted by name, other files and sub-folders left out
    assert [(i.path, i.kind) for i in resolve_source(tmp_path)] == [
        (str(tmp_path / "clip.MP4"), "video"), (str(tmp_path / "scan.TIFF"), "image"),
        (str(tmp_path / "x.png"), "image")]
    assert [i.path for i in resolve_source(str(tmp_path / "**" / "*.*g"))] == [
        str(tmp_path / "sub" / "y.jpg"), str(tmp_path / "x.png")]  # ** recurses; sorted
    with pytest.raises(ValueError, match=r"matches 1 file\(s\) but no images or videos"):
        resolve_source(str(tmp_path / "*.bin"))
    with pytest.raises(FileNotFoundError, match=r"source not found: no file matches .*\*\.gif"):
        resolve_source(str(tmp_path / "*.gif"))
    with pytest.raises(FileNotFoundError, match=r"source not found: .*missing\.jpg$"):
        resolve_source(tmp_path / "missing.jpg")


def test_webcam_index_unless_a_file_has_that_name(tmp_path, monkeypatch):
    assert resolve_source(0) == [SourceItem("0", "webcam")]
    assert resolve_source(" 2 ") == [SourceItem("2", "webcam")]
    monkeypatch.chdir(tmp_path)
    write_rgb(tmp_path / "1.png", random_rgb(0, 4, 4))
    (tmp_path / "1").write_bytes((tmp_path / "1.png").read_bytes())
    assert resolve_source("1") == [SourceItem("1", "image")]  # an existing file named "1" wins


def test_iter_images_reads_or_reports(folder):
    items = resolve_source(folder)
    got = list(iter_images(items))
    assert [(i.path.rsplit("/", 1)[-1], img is None, err is None) for i, img, err in got] == [
        ("a.jpg", False, True), ("b.png", False, True), ("c_corrupt.jpg", True, False)]
    np.testing.assert_array_equal(got[1][1], random_rgb(1, 120, 160))  # PNG: lossless, RGB kept
    assert "c_corrupt.jpg" in got[2][2]


# ----------------------------------------------------------------------------- run folder and names

def test_increment_dir_takes_the_first_free_number(tmp_path):
    base = tmp_path / "runs" / "predict" / "exp"
    assert increment_dir(base) == base and base.is_dir()  # parents created
    (tmp_path / "runs" / "predict" / "exp3").mkdir()
    assert increment_dir(base) == tmp_path / "runs" / "predict" / "exp2"  # the gap, not after the last
    assert increment_dir(base) == tmp_path / "runs" / "predict" / "exp4"
    assert (tmp_path / "runs" / "predict" / "exp4").is_dir()


def test_output_names_never_repeat():
    names = OutputNames()
    got = [names.stem(p) for p in ("x_2.jpg", "a/x.jpg", "b/x.png", "c/x.bmp", "dir/", "")]
    # the literal x_2 is taken first, so the second x becomes x_3; no stem: "image"
    assert got == ["x_2", "x", "x_3", "x_4", "image", "image_2"]


@pytest.mark.parametrize("text,expected", [
    ("dog", "dog"), ("traffic light", "traffic_light"), ("a/b\\c", "a_b_c"), ("../etc", "etc"),
    ("c++", "c++"), ("...", "_"), ("", "_"), ("ñandú", "ñandú"), (3, "3"), ("big  dog?", "big_dog"),
])
def test_safe_name(text, expected):
    assert safe_name(text) == expected


# ----------------------------------------------------------------------------- records and writers

def test_detection_record_by_hand():
    det = {"boxes": np.array([[1.234567, 2, 3.004, 4], [0, 0, 1, 1]], np.float32),
           "scores": np.array([0.1234567, 0.9], np.float32), "classes": np.array([1, 7])}
    rec = detection_record("a/b.jpg", 3, 640, 480, det, CLASSES)
    assert rec["source"] == "a/b.jpg" and (rec["frame"], rec["width"], rec["height"]) == (3, 640, 480)
    d0, d1 = rec["detections"]
    assert d0 == {"class_id": 1, "class_name": "dog", "score": 0.12346, "box": [1.23, 2.0, 3.0, 4.0]}
    assert d1["class_name"] == "7"  # an id beyond the class list keeps its number
    json.dumps(rec)  # plain Python types only


def test_json_lines_writer_round_trip(tmp_path):
    records = [{"source": "ü.jpg", "n": 1}, {"source": "b", "detections": []}, {"x": [1.5, None]}]
    path = tmp_path / "deep" / "run" / "p.jsonl"
    with JsonLinesWriter(path) as writer:
        for r in records:
            writer.write(r)
        assert writer.lines == 3
        assert len(path.read_text(encoding="utf-8").splitlines()) == 3  # flushed line by line
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == records
    assert "ü" in path.read_text(encoding="utf-8")  # not \u-escaped
    with JsonLinesWriter(tmp_path / "none.jsonl"):
        pass
    assert not (tmp_path / "none.jsonl").exists()  # opened on the first record only


def test_save_voc_prediction_round_trip(tmp_path):
    det = {"boxes": np.array([[10, 20, 50, 60], [0, 0, 5, 7], [90, 70, 100, 80]], np.float32),
           "scores": np.array([0.9, 0.8, 0.5], np.float32), "classes": np.array([1, 0, 2])}
    path = save_voc_prediction(tmp_path / "Annotations" / "img.xml", tmp_path / "img.jpg", det, (80, 100), CLASSES)
    rec, warnings = parse_voc_xml(path, CLASSES)
    assert warnings == [] and rec.image_path == "img.jpg"
    assert (rec.width, rec.height) == (100, 80)  # image_hw is (height, width)
    np.testing.assert_array_equal(rec.boxes, det["boxes"])
    assert rec.labels.tolist() == [1, 0, 2] and not rec.difficult.any()


def test_save_image_round_trip_and_error(tmp_path):
    rgb = random_rgb(3, 10, 12)
    path = save_image(tmp_path / "new" / "x.png", rgb)
    np.testing.assert_array_equal(read_image(path), rgb)  # RGB in, RGB back
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(OSError, match=r"taken\.png: could not write the image"):
        save_image(tmp_path / "taken.png", rgb)


def test_save_crops_floor_ceil_and_class_folders(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[3:8, 2:11] = 250
    det = {"boxes": np.array([[2.5, 3.2, 10.1, 8.0], [5.0, 5.0, 5.0, 9.0], [25.5, -4, 40, 3.5]], np.float32),
           "classes": np.array([0, 1, 3])}
    paths = save_crops(image, det, ["traffic light", "dog"], tmp_path / "crops", "im")
    # box 0 -> pixels x 2..11, y 3..8; box 1 is zero-width: skipped; box 2 clipped to the image
    assert [p.replace(str(tmp_path / "crops"), "") for p in paths] == ["/traffic_light/im_0.jpg", "/3/im_2.jpg"]
    first = read_image(paths[0])
    assert first.shape == (5, 9, 3) and first.min() > 200  # exactly the bright patch
    assert read_image(paths[1]).shape == (4, 5, 3)  # x 25..30, y 0..4


def test_video_writer_and_reader_round_trip(tmp_path):
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (240, 240, 20), (128, 128, 128)]
    path = tmp_path / "out" / "v.mp4"
    with VideoWriter(path, 12.0) as writer:
        for c in colours:
            writer.write(np.full((48, 64, 3), c, np.uint8))
        assert writer.frames == 5
    with VideoReader(str(path)) as reader:
        assert (reader.width, reader.height, reader.frame_count) == (64, 48, 5)
        assert reader.fps_known and reader.fps == pytest.approx(12.0)
        frames = list(reader)
    assert len(frames) == 5 and all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    for frame, c in zip(frames, colours):  # lossy codec: colours within a few levels, channel order kept
        assert np.abs(frame.reshape(-1, 3).mean(axis=0) - c).max() < 12


def test_unreadable_video_is_named(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    with pytest.raises(VideoReadError, match=r"broken\.mp4: not a readable video"):
        VideoReader(tmp_path / "broken.mp4")
    assert issubclass(VideoReadError, ImageReadError)


def test_display_without_a_screen_warns_once_and_shows_nothing(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    log = []
    display = Display(True, log=log.append)
    assert not display.enabled and log == ["warning: --show ignored: no display (DISPLAY is not set)"]
    assert display.show("x", np.zeros((4, 4, 3), np.uint8)) is True
    assert Display(False, log=log.append).enabled is False and len(log) == 1
