"""yolo_body over every registered backbone: shapes, save/load round trips, weight checks."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from nets.backbones import available_backbones, get_spec
from nets.summary import conv_flops, format_rows, main as summary_main
from nets.yolo import OUTPUT_NAMES, neck_widths, yolo_body
from utils import checkpoint as ck

NUM_CLASSES = 3
SIZES = [(416, 416), (320, 320), (320, 512)]


@pytest.fixture(autouse=True)
def _clear():
    yield
    keras.backend.clear_session()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", available_backbones())
def test_head_shapes_for_every_backbone_and_size(backbone):
    for h, w in SIZES:
        model = yolo_body((h, w), NUM_CLASSES, backbone=backbone, alpha=None)
        shapes = [tuple(o.shape[1:]) for o in model.outputs]
        c = 3 * (5 + NUM_CLASSES)
        assert shapes == [(h // 32, w // 32, c), (h // 16, w // 16, c), (h // 8, w // 8, c)], (backbone, h, w)
        assert [o._keras_history[0].name for o in model.outputs] == list(OUTPUT_NAMES)
        keras.backend.clear_session()


@pytest.mark.slow
def test_no_lambda_layers_and_unique_explicit_names():
    model = yolo_body((320, 320), NUM_CLASSES, backbone="mobilenetv2")
    assert not any(isinstance(l, keras.layers.Lambda) for l in model.layers)
    names = [l.name for l in model.layers]
    assert len(names) == len(set(names))
    neck = [n for n in names if n.startswith(("neck_", "spp_", "head_"))]
    assert "spp_pool13" in neck and "spp_pool9" in neck and "spp_pool5" in neck


@pytest.mark.slow
def test_neck_scales_with_alpha_and_kernels_get_weight_decay():
    assert neck_widths(1.0) == (128, 256, 512)
    assert neck_widths(0.5) == (64, 128, 256)
    model = yolo_body((320, 320), NUM_CLASSES, backbone="mobilenetv2", alpha=0.5, weight_decay=1e-3)
    assert model.get_layer("neck_p5_c1_conv").filters == 256
    assert model.get_layer("head_p5_out").kernel_regularizer is not None
    # one L2 term per regularised neck/head kernel, each finite and positive
    assert len(model.losses) > 20 and all(float(v) > 0 for v in model.losses)


def test_neck_width_sets_the_neck_apart_from_the_backbone():
    """--neck-width scales the neck and heads alone: the backbone's layers and weights are those
    of its alpha, the neck's channels those of the neck width, and the FLOPs drop with it."""
    from nets.summary import conv_flops
    full = yolo_body((128, 128), NUM_CLASSES, backbone="mobilenetv1", alpha=0.5)
    narrow = yolo_body((128, 128), NUM_CLASSES, backbone="mobilenetv1", alpha=0.5, neck_width=0.25)
    assert yolo_body((128, 128), NUM_CLASSES, backbone="mobilenetv1", alpha=0.5,
                     neck_width=0.5).count_params() == full.count_params()  # the default is the alpha
    backbone = [l.name for l in full.layers if l.weights and not l.name.startswith(("neck_", "spp_", "head_"))]
    for name in backbone:
        assert [w.shape for w in full.get_layer(name).weights] == [w.shape for w in narrow.get_layer(name).weights]
    c8, c16, c32 = neck_widths(0.25)
    assert (c8, c16, c32) == (32, 64, 128)
    assert narrow.get_layer("neck_p5_c1_conv").filters == c32 and full.get_layer("neck_p5_c1_conv").filters == 256
    assert narrow.get_layer("neck_p3_c1_conv").filters == c8
    assert [o.shape for o in narrow.outputs] == [o.shape for o in full.outputs]
    assert conv_flops(narrow) < 0.6 * conv_flops(full)  # the neck and heads are ~3/4 of the FLOPs here
    for bad in (0, -1, 5, float("nan"), "wide"):
        with pytest.raises(ValueError, match="neck_width must be"):
            yolo_body((128, 128), NUM_CLASSES, backbone="mobilenetv1", alpha=0.5, neck_width=bad)


def test_bad_input_size_and_unknown_backbone_are_clear_errors():
    with pytest.raises(ValueError, match="multiples of 32"):
        yolo_body((300, 320), NUM_CLASSES)
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*mobilenetv2"):
        yolo_body((320, 320), NUM_CLASSES, backbone="resnet9")
    with pytest.raises(ValueError, match="alpha 0.3 is not valid.*0.5, 0.75, 1, 1.3"):
        yolo_body((320, 320), NUM_CLASSES, backbone="mobilenetv2", alpha=0.3)


# One backbone per distinct set of layer types (the neck and heads are the same for all):
# keras.applications with Rescaling (v2), with MobileNetV3's own preprocessing and hard-swish
# (v3small), with Normalization (densenet121); ChannelSlice + SE (ghostnet); grouped convs and
# avg-pool shortcuts (shufflenetv1); ChannelShuffle (shufflenetv2); fire modules with bypass
# Add (squeezenet_bypass); Mish (cspdarknet53). Every backbone module also round-trips its own
# custom blocks in its own test file.
ROUND_TRIP = ["mobilenetv2", "mobilenetv3small", "densenet121", "ghostnet", "shufflenetv1", "shufflenetv2",
              "squeezenet_bypass", "cspdarknet53"]


def test_round_trip_set_covers_every_family():
    from nets.backbones import get_spec
    modules = {get_spec(b).builder.__module__ for b in available_backbones()}
    assert modules == {get_spec(b).builder.__module__ for b in ROUND_TRIP}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ROUND_TRIP)
def test_keras_round_trip_safe_mode_same_outputs(backbone, tmp_path):
    # the narrowest width of each family keeps this fast; the layers are the same at any alpha
    model = yolo_body((128, 128), NUM_CLASSES, backbone=backbone, alpha=min(get_spec(backbone).alphas))
    x = np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype("float32")
    ref = [np.asarray(o) for o in model(x, training=False)]
    meta = {"backbone": backbone, "alpha": 1.0, "class_names": ["a", "b", "c"],
            "anchors": np.arange(18).reshape(9, 2) + 1, "input_shape": (128, 128)}
    path = ck.save_detector(model, tmp_path / "m.keras", meta)
    loaded, meta2 = ck.load_detector(path)  # keras.saving.load_model(..., safe_mode=True) inside
    assert meta2["class_names"] == ["a", "b", "c"] and meta2["num_classes"] == 3
    out = [np.asarray(o) for o in loaded(x, training=False)]
    for a, b in zip(ref, out):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_weights_round_trip_and_class_count_mismatch(tmp_path):
    model = yolo_body((128, 128), NUM_CLASSES, backbone="mobilenetv2", alpha=0.5)
    path = ck.save_weights(model, tmp_path / "w.weights.h5")
    fresh = yolo_body((128, 128), NUM_CLASSES, backbone="mobilenetv2", alpha=0.5)
    assert ck.load_weights(fresh, path) == []
    x = np.random.default_rng(1).uniform(0, 255, (1, 128, 128, 3)).astype("float32")
    for a, b in zip(model(x), fresh(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)

    other = yolo_body((128, 128), 7, backbone="mobilenetv2", alpha=0.5)
    with pytest.raises(ck.WeightsMismatchError, match="trained for 3 classes but this model has 7 classes"):
        ck.load_weights(other, path)
    skipped = ck.load_weights(other, path, skip_mismatch=True)
    assert sorted(skipped) == sorted(OUTPUT_NAMES)
    # everything but the heads came from the file
    np.testing.assert_array_equal(other.get_layer("neck_p5_c1_conv").get_weights()[0],
                                  model.get_layer("neck_p5_c1_conv").get_weights()[0])


@pytest.mark.slow
def test_weights_of_another_backbone_and_bad_files_are_named(tmp_path):
    path = ck.save_weights(yolo_body((128, 128), NUM_CLASSES, backbone="squeezenet"), tmp_path / "sq.weights.h5")
    target = yolo_body((128, 128), NUM_CLASSES, backbone="mobilenetv2", alpha=0.5)
    with pytest.raises(ck.WeightsMismatchError, match="sq.weights.h5 holds weights for another model"):
        ck.load_weights(target, path)
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ck.WeightsMismatchError, match="junk.weights.h5 is not a readable"):
        ck.load_weights(target, junk)
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        ck.load_weights(target, tmp_path / "missing.weights.h5")
    bad_zip = tmp_path / "bad.keras"
    bad_zip.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="bad.keras is not a valid .keras file"):
        ck.load_detector(bad_zip)


@pytest.mark.slow
def test_atomic_save_leaves_previous_file_when_write_fails(tmp_path, monkeypatch):
    model = yolo_body((128, 128), NUM_CLASSES, backbone="squeezenet")
    meta = {"backbone": "squeezenet", "alpha": 1.0, "class_names": list("abc"),
            "anchors": np.ones((9, 2)), "input_shape": (128, 128)}
    path = ck.save_detector(model, tmp_path / "last.keras", meta)
    before = (tmp_path / "last.keras").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt  # a kill in the middle of the write
    monkeypatch.setattr(keras.Model, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        ck.save_detector(model, path, meta)
    assert (tmp_path / "last.keras").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.keras"]  # no temporary left behind


def test_flops_count_matches_hand_computation():
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)                 # 2*32*32*8*9*3
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)   # 2*16*16*8*9
    x = keras.layers.Conv2D(6, 1, groups=2)(x)                          # 2*16*16*6*4
    model = keras.Model(inp, x)
    assert conv_flops(model) == 2 * 32 * 32 * 8 * 27 + 2 * 16 * 16 * 8 * 9 + 2 * 16 * 16 * 6 * 4


@pytest.mark.slow
def test_summary_command_prints_a_row_per_backbone(capsys):
    assert summary_main(["--input-size", "128", "--num-classes", "20",
                         "--backbones", "mobilenetv2", "squeezenet"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv2" in out and "squeezenet" in out and "4x4x75" in out and "16x16x75" in out
    assert summary_main(["--backbones", "nope"]) == 2
    table = format_rows([{"backbone": "x", "alpha": 1.0, "params": 2e6, "gflops": 1.5,
                          "heads": [(1, 1, 3)] * 3}], markdown=True)
    assert table.splitlines()[2] == "| x | 1 | 2.00 | 1.50 | 1x1x3 | 1x1x3 | 1x1x3 |"


@pytest.mark.slow
def test_neck_shortcut_starts_as_identity_and_adds_no_weights():
    model = yolo_body((128, 128), NUM_CLASSES, backbone="squeezenet", alpha=0.5)  # shortcut on by default
    plain = yolo_body((128, 128), NUM_CLASSES, backbone="squeezenet", alpha=0.5, neck_shortcut=False)
    assert model.count_params() == plain.count_params()
    adds = sorted(l.name for l in model.layers if isinstance(l, keras.layers.Add) and l.name.startswith("neck_"))
    assert adds == sorted(f"neck_{b}_{c}_add" for b in ("p3", "p4", "n4", "n5") for c in ("c3", "c5"))
    assert not any(isinstance(l, keras.layers.Add) and l.name.startswith("neck_") for l in plain.layers)
    # the residual branches end in a zero-scale BN: at initialisation a block is its first 1x1
    probe = keras.Model(model.input, [model.get_layer("neck_n4_c1_relu6").output,
                                      model.get_layer("neck_n4_c5_add").output])
    x = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
    first, block = (np.asarray(t) for t in probe(x, training=False))
    assert first.std() > 0
    np.testing.assert_allclose(block, first, atol=1e-6)
    # ... but the branch is live: one gradient step moves the zero-initialised scales
    gamma = model.get_layer("neck_n4_c5_bn").gamma
    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_sum(tf.square(o)) for o in model(x, training=True))
    assert float(tf.norm(tape.gradient(loss, gamma))) > 0
