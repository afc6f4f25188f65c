"""utils/checkpoint.py with tiny models: atomic writes, .keras detectors with their metadata,
.weights.h5 shape checks. (tests/test_yolo.py covers the same functions on real yolo_body
models: round trip per backbone family, class-count mismatch message, bad files, atomic save.)"""
import json
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest
from keras import layers

from _helpers import tiny_body
from utils import checkpoint as ck
from utils.targets import load_anchors

HW = (64, 64)


def meta_for(names, **extra):
    meta = dict(backbone="tiny", alpha=1.0, class_names=list(names), anchors=load_anchors(), input_shape=[*HW])
    meta.update(extra)
    return meta


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def small(*middle, head=3 * (5 + 2), width=4, seed=0):
    """Input -> Conv2D(width, 'body') -> middle layers -> Conv2D(head, 'head')."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(width, 3, padding="same", name="body")(inp)
    for layer in middle:
        x = layer(x)
    return keras.Model(inp, layers.Conv2D(head, 1, name="head")(x))


def same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


# ----------------------------------------------------------------------------- atomic_path

def test_atomic_path_renames_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with ck.atomic_path(target) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".json")
            assert os.path.basename(tmp).startswith(".state.json.")
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old" and listing(tmp_path) == ["state.json"]

    with ck.atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
        assert target.read_text() == "old"  # nothing under the real name until the block ends
    assert target.read_text() == "new" and listing(tmp_path) == ["state.json"]


def test_atomic_path_creates_the_folder_and_keeps_the_ending(tmp_path):
    for name, ending in [("w.weights.h5", ".weights.h5"), ("m.keras", ".keras"), ("x.h5", ".h5"),
                         ("notes.txt", ".tmp")]:
        with ck.atomic_path(tmp_path / "new" / "deeper" / name) as tmp:
            assert tmp.endswith(ending), (name, tmp)
            open(tmp, "w").close()
    with ck.atomic_path(tmp_path / "plot.png", suffix=".png") as tmp:
        assert tmp.endswith(".png")
        open(tmp, "w").close()
    assert listing(tmp_path / "new" / "deeper") == ["m.keras", "notes.txt", "w.weights.h5", "x.h5"]
    # a block that never creates the file leaves nothing behind either
    with pytest.raises(KeyError):
        with ck.atomic_path(tmp_path / "never.json") as tmp:
            os.remove(tmp)
            raise KeyError("x")
    assert not (tmp_path / "never.json").exists()


# ----------------------------------------------------------------------------- .keras detectors

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det")
    model = tiny_body(HW, 2, seed=1)
    meta = meta_for([0, "b"], input_shape=(64, 64, 3))  # not yet normalised: int name, 3-tuple size
    path = ck.save_detector(model, folder / "det.keras", meta)
    return model, path


def test_save_detector_round_trip_with_normalised_meta(saved):
    model, path = saved
    meta = ck.read_meta(path)
    assert meta["class_names"] == ["0", "b"] and meta["num_classes"] == 2
    assert meta["input_shape"] == [64, 64] and meta["anchors_per_scale"] == 3
    np.testing.assert_allclose(meta["anchors"], load_anchors())
    assert meta["backbone"] == "tiny" and meta["alpha"] == 1.0
    loaded, meta2 = ck.load_detector(path)
    assert meta2 == meta
    x = np.random.default_rng(0).uniform(0, 255, (2, *HW, 3)).astype("float32")
    for a, b in zip(model(x), loaded(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # the metadata member does not stop Keras' own loader
    plain = keras.saving.load_model(path, safe_mode=True)
    assert [o.shape for o in plain.outputs] == [o.shape for o in model.outputs]
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read(ck.META_NAME)) == meta


def test_update_meta_rewrites_only_the_metadata_atomically(saved, tmp_path, monkeypatch):
    import shutil

    model, original = saved
    path = shutil.copy(original, tmp_path / "best.keras")
    before = ck.read_meta(path)
    conf = {"score": 0.21, "source": "F1-best score on the validation split", "f1": 0.6}
    meta = ck.update_meta(path, conf_threshold=conf)
    assert meta == {**before, "conf_threshold": conf} == ck.read_meta(path)
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(path) as b:  # the model members are unchanged
        assert sorted(a.namelist()) == sorted(b.namelist())
        for name in a.namelist():
            if name != ck.META_NAME:
                assert a.read(name) == b.read(name), name
    loaded, _ = ck.load_detector(path)
    x = np.random.default_rng(1).uniform(0, 255, (1, *HW, 3)).astype("float32")
    for a, b in zip(model(x), loaded(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert "conf_threshold" not in ck.update_meta(path, conf_threshold=None)  # None removes
    # a failure half-way leaves the file as it was and no temporary beside it
    data = open(path, "rb").read()
    def full(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    with pytest.raises(OSError, match="disk full"):
        ck.update_meta(path, conf_threshold=conf)
    assert open(path, "rb").read() == data and listing(tmp_path) == ["best.keras"]


def test_save_detector_rejects_bad_requests_and_writes_nothing(tmp_path):
    model = tiny_body(HW, 2)
    with pytest.raises(ValueError, match=r"saved as a \.keras file, got .*m\.h5"):
        ck.save_detector(model, tmp_path / "m.h5", meta_for("ab"))
    meta = meta_for("ab")
    del meta["alpha"], meta["anchors"]
    with pytest.raises(ValueError, match="detector metadata lacks alpha, anchors"):
        ck.save_detector(model, tmp_path / "m.keras", meta)
    with pytest.raises(ValueError, match="heads have 21 channels but the metadata names 3 classes with 3 anchors"):
        ck.save_detector(model, tmp_path / "m.keras", meta_for("abc"))
    with pytest.raises(ValueError, match="names 5 classes with 2 anchors per scale"):
        ck.save_detector(model, tmp_path / "m.keras", meta_for("abcde", anchors_per_scale=2))
    assert listing(tmp_path) == []


def test_keras_file_without_meta_and_missing_file(tmp_path):
    path = tmp_path / "plain.keras"
    tiny_body(HW, 2).save(path)
    for fn in (ck.read_meta, ck.load_detector):
        with pytest.raises(ValueError, match=r"plain\.keras is a Keras model without detector metadata "
                                             r"\(yolo_meta\.json\).*save_detector"):
            fn(path)
    with pytest.raises(FileNotFoundError, match=r"model file not found: .*gone\.keras"):
        ck.read_meta(tmp_path / "gone.keras")


def test_truncated_and_foreign_zips_name_the_file(saved, tmp_path):
    _, path = saved
    data = open(path, "rb").read()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.keras is not a valid \.keras file \(corrupt or truncated"):
        ck.read_meta(cut)
    # a zip with the metadata but no model in it: read_meta works, the model load names the file
    fake = tmp_path / "fake.keras"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(ck.META_NAME, json.dumps(ck.read_meta(path)))
    assert ck.read_meta(fake)["class_names"] == ["0", "b"]
    with pytest.raises(ValueError, match=r"could not load model .*fake\.keras"):
        ck.load_detector(fake)


# ----------------------------------------------------------------------------- .weights.h5

def test_save_weights_round_trip_and_meta_attribute(tmp_path):
    src, dst = tiny_body(HW, 2, seed=1), tiny_body(HW, 2, seed=2)
    assert not same_weights(src, dst)
    with pytest.raises(ValueError, match=r"saved as a \.weights\.h5 file, got .*w\.h5"):
        ck.save_weights(src, tmp_path / "w.h5")
    path = ck.save_weights(src, tmp_path / "w.weights.h5", meta={"num_classes": 2})
    assert listing(tmp_path) == ["w.weights.h5"]
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs[ck.META_NAME]) == {"num_classes": 2}
    assert ck.load_weights(dst, path) == []
    assert same_weights(src, dst)
    with h5py.File(ck.save_weights(src, tmp_path / "plain.weights.h5"), "r") as f:
        assert ck.META_NAME not in f.attrs


def test_class_count_mismatch_loads_nothing_unless_skipped(tmp_path):
    src = tiny_body(HW, 2, seed=1)
    path = ck.save_weights(src, tmp_path / "two.weights.h5")
    dst = tiny_body(HW, 4, seed=2)
    before = dst.get_weights()
    with pytest.raises(ck.WeightsMismatchError, match="trained for 2 classes but this model has 4 classes"):
        ck.load_weights(dst, path)
    assert all(np.array_equal(a, b) for a, b in zip(before, dst.get_weights()))  # all or nothing
    skipped = ck.load_weights(dst, path, skip_mismatch=True)
    assert sorted(skipped) == ["head16", "head32", "head8"]
    for name in ("down8", "down16", "down32"):
        assert same_weights(dst.get_layer(name), src.get_layer(name)), name
    for name in skipped:  # the heads keep their own weights
        np.testing.assert_array_equal(dst.get_layer(name).get_weights()[0],
                                      before[[w.path for w in dst.weights].index(f"{name}/kernel")])
    assert issubclass(ck.WeightsMismatchError, ValueError)


def test_other_architectures_are_named(tmp_path):
    path = ck.save_weights(small(width=4), tmp_path / "a.weights.h5")
    with pytest.raises(ck.WeightsMismatchError,
                       match=r"a\.weights\.h5 holds weights for another model \(2 of 2 layers differ; first: "
                             r"layer body: file has \[\(3, 3, 3, 4\), \(4,\)\], model has \[\(3, 3, 3, 6\), \(6,\)\]\)"):
        ck.load_weights(small(width=6), path)
    # a layer the file does not have
    target = small(layers.DepthwiseConv2D(1, name="dw"), seed=3)
    with pytest.raises(ck.WeightsMismatchError, match=r"\(1 of 3 layers differ; first: layer dw is not in the file\)"):
        ck.load_weights(target, path)
    assert ck.load_weights(target, path, skip_mismatch=True) == ["dw"]
    assert same_weights(target.get_layer("body"), small(width=4).get_layer("body"))


def test_files_that_are_not_keras_weights(tmp_path):
    model = small()
    empty = tmp_path / "empty.weights.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ck.WeightsMismatchError, match=r"empty\.weights\.h5 is not a Keras 3 weights file"):
        ck.load_weights(model, empty)
    text = tmp_path / "text.weights.h5"
    text.write_text("hello")
    with pytest.raises(ck.WeightsMismatchError, match=r"text\.weights\.h5 is not a readable \.weights\.h5 file"):
        ck.load_weights(model, text)
