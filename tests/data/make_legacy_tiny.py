"""Made at commit b357dd3 (before the layout move): a small detector using every registered layer."""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, ".")
import numpy as np, keras
from keras import layers
from nets.layers import ChannelShuffle, ChannelSlice, apply_conv_bn, apply_dwsep
from utils.checkpoint import save_detector
from utils.decode import end_to_end_model
from utils.targets import load_anchors
keras.utils.set_random_seed(0)
nc = 2
inp = keras.Input((64, 64, 3), name="image")
x = layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inp)
x = apply_conv_bn(x, 16, 3, 2, name="stem")              # 32
x = ChannelShuffle(2, name="shuffle")(x)
a = ChannelSlice(0, 8, name="slice_a")(x)
b = ChannelSlice(8, 16, name="slice_b")(x)
x = layers.Concatenate(name="cat")([b, a])
x = apply_dwsep(x, 16, 3, 2, name="d8")                   # 16? input 64 -> stride 4
x = apply_dwsep(x, 16, 3, 2, name="s8")                   # stride 8
c3 = x
x = apply_dwsep(x, 24, 3, 2, name="s16"); c4 = x
x = apply_dwsep(x, 32, 3, 2, name="s32"); c5 = x
outs = [layers.Conv2D(3 * (5 + nc), 1, name=f"head{s}")(c) for s, c in ((32, c5), (16, c4), (8, c3))]
model = keras.Model(inp, outs, name="legacy_tiny")
# non-trivial BN statistics
for l in model.layers:
    if isinstance(l, layers.BatchNormalization):
        n = l.moving_mean.shape[0]
        l.moving_mean.assign(np.random.RandomState(1).normal(0, 0.1, n).astype("float32"))
        l.moving_variance.assign(np.random.RandomState(2).uniform(0.5, 1.5, n).astype("float32"))
anchors = load_anchors()
meta = dict(backbone="legacy_tiny", alpha=1.0, class_names=["a", "b"], anchors=anchors, input_shape=[64, 64])
save_detector(model, "tests/data/legacy_tiny.keras", meta)
e2e = end_to_end_model(model, anchors, nc, score_thresh=0.0)
e2e.save("tests/data/legacy_tiny_e2e.keras")
img = np.random.RandomState(3).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
heads = [o.numpy() for o in model(img, training=False)]
out = e2e(img, training=False)
np.savez("tests/data/legacy_tiny_outputs.npz", image=img, head32=heads[0], head16=heads[1], head8=heads[2],
         boxes=out["boxes"].numpy(), scores=out["scores"].numpy(), classes=out["classes"].numpy(), num_valid=out["num_valid"].numpy())
print(model.count_params())
