"""Files written by earlier versions still load: the registered layer names are part of the
``.keras`` format. The fixtures in tests/data were saved by the code before the layout move
(see tests/data/README.md) with their outputs on fixed images."""
import pathlib

import keras
import numpy as np
import pytest

from utils.checkpoint import load_detector
from utils.inference.detector import Detector
from utils.inference.runtime import open_model

DATA = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def recorded():
    return dict(np.load(DATA / "legacy_tiny_outputs.npz"))


def test_old_detector_file_loads_with_the_same_outputs(recorded):
    model, meta = load_detector(DATA / "legacy_tiny.keras")
    assert meta["class_names"] == ["a", "b"] and meta["input_shape"] == [64, 64]
    heads = model(recorded["image"], training=False)
    for got, key in zip(heads, ("head32", "head16", "head8")):
        np.testing.assert_allclose(np.asarray(got), recorded[key], atol=1e-5)


def test_old_detector_file_opens_through_the_one_opener(recorded):
    runtime = open_model(DATA / "legacy_tiny.keras")
    assert runtime.format == "keras" and runtime.num_classes == 2
    for got, key in zip(runtime(recorded["image"]), ("head32", "head16", "head8")):
        np.testing.assert_allclose(got, recorded[key], atol=1e-4)
    det = Detector.from_file(DATA / "legacy_tiny.keras", score_thresh=0.0)
    assert det.class_names == ["a", "b"]


def test_old_end_to_end_file_loads_in_safe_mode(recorded):
    import nets.postprocess  # noqa: F401  registers YoloPostprocess under its old name

    model = keras.saving.load_model(DATA / "legacy_tiny_e2e.keras", safe_mode=True)
    out = model(recorded["image"], training=False)
    n = recorded["num_valid"]
    np.testing.assert_array_equal(np.asarray(out["num_valid"]), n)
    for b in range(len(n)):
        k = int(n[b])
        np.testing.assert_allclose(np.asarray(out["boxes"])[b, :k], recorded["boxes"][b, :k], atol=1e-3)
        np.testing.assert_allclose(np.asarray(out["scores"])[b, :k], recorded["scores"][b, :k], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(out["classes"])[b, :k], recorded["classes"][b, :k])
