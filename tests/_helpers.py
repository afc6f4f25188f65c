"""Shared test helpers (imported as ``from _helpers import ...``: pytest puts tests/ on sys.path).

Imported by name ``_helpers`` rather than ``tests._helpers`` because site-packages ships an
unrelated ``tests`` package that would shadow or merge with ours.
"""
import keras
from keras import layers


def tiny_body(input_hw, num_classes, seed=0, activation=None):
    """A few-layer stand-in for yolo_body with the same input and outputs (stride 32, 16, 8).

    ``seed`` seeds Keras' initialisers (``None``: leave the global random state alone);
    ``activation`` is passed to the down-sampling convolutions (heads stay linear).
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inp = keras.Input((*input_hw, 3), name="image")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inp)
    outs = []
    for i, stride in enumerate((8, 16, 32)):
        x = layers.Conv2D(8, 3, strides=8 if i == 0 else 2, padding="same", activation=activation,
                          name=f"down{stride}")(x)
        outs.append(layers.Conv2D(3 * (5 + num_classes), 1, name=f"head{stride}")(x))
    return keras.Model(inp, outs[::-1], name="tiny_body")


# --------------------------------------------------------------------------- backbones

def backbone_model(builder, shape, **kwargs):
    """``(keras.Model, [C3, C4, C5])`` of ``builder(Input(shape), **kwargs)``."""
    inputs = keras.Input(shape)
    feats = builder(inputs, **kwargs)
    return keras.Model(inputs, feats), feats


def layer_names(model):
    return [layer.name for layer in model.layers]


def check_pyramid(feats, shape, channels):
    """``feats`` are (H/8, W/8, c3), (H/16, W/16, c4), (H/32, W/32, c5) of an input ``shape``."""
    h, w = shape[:2]
    got = [tuple(f.shape[1:]) for f in feats]
    want = [(h // s, w // s, c) for s, c in zip((8, 16, 32), channels)]
    assert got == want


def auto_named_layers(model):
    """Layers that kept a Keras default name (``conv2d``, ``re_lu_3``, ...) instead of an explicit one."""
    import re

    from keras.src.utils.naming import to_snake_case

    return [layer.name for layer in model.layers[1:]
            if re.fullmatch(rf"{re.escape(to_snake_case(type(layer).__name__))}(_\d+)?", layer.name)]


def check_backbone_contract(name, alpha, input_hw, seed=0, **options):
    """The contract of every registered backbone, through the registry's ``build_backbone``:

    three maps at strides 8, 16 and 32 of a (possibly non-square) input; every layer named
    explicitly and uniquely; a Keras model of it that saves to ``.keras`` and loads back with
    ``safe_mode=True`` (no Lambda, every custom layer registered) giving the same outputs.
    Returns ``(model, channels)`` for family-specific checks.
    """
    import os
    import tempfile

    import numpy as np

    from nets.backbones import build_backbone

    h, w = input_hw
    inputs = keras.Input((h, w, 3))
    feats = build_backbone(name, inputs, alpha, None, **options)
    assert len(feats) == 3
    channels = [int(f.shape[-1]) for f in feats]
    assert [tuple(f.shape[1:3]) for f in feats] == [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    model = keras.Model(inputs, feats, name=f"{name}_contract")
    names = layer_names(model)
    assert len(names) == len(set(names)), "duplicate layer names"
    assert auto_named_layers(model) == [], "layers left with Keras' default names"
    assert not [layer.name for layer in model.layers if isinstance(layer, layers.Lambda)]
    x = np.random.default_rng(seed).uniform(0, 255, (2, h, w, 3)).astype("float32")
    want = [keras.ops.convert_to_numpy(t) for t in model(x, training=False)]
    assert all(np.isfinite(t).all() for t in want)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    assert layer_names(loaded) == names
    got = [keras.ops.convert_to_numpy(t) for t in loaded(x, training=False)]
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt, rtol=1e-5, atol=1e-5)
    return model, channels


def check_finite_forward(model, input_hw=(64, 96), grids=((8, 12), (4, 6), (2, 3)), seed=2):
    """Both modes give the stride-8/16/32 grids, finite and not constant, on a batch of 2."""
    import numpy as np
    x = np.random.default_rng(seed).uniform(0, 255, size=(2, *input_hw, 3)).astype("float32")
    for training in (False, True):
        outs = [keras.ops.convert_to_numpy(o) for o in model(x, training=training)]
        assert [o.shape[1:3] for o in outs] == list(grids)
        assert all(np.isfinite(o).all() and o.std() > 0 for o in outs)
