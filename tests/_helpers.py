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
