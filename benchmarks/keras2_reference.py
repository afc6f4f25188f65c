"""This project against Keras 2 on the identical network: batch-1 call and training step.

    pip install "tf_keras~=2.21.0"        # Keras 2, TensorFlow's legacy tf.keras (not in requirements.txt)
    python benchmarks/keras2_reference.py                      # mobilenetv1, mobilenetv2, ghostnet, mobilenetv3large
    python benchmarks/keras2_reference.py --backbones mobilenetv1 --runs 20 --steps 8

Issue 12 measured this project against bubbliiiing's mobilenet-yolov4-tf2 (Keras 2) on networks
with the same parameter counts and found it slower. This script repeats that comparison on any
machine, without the reference repository: it rebuilds this project's own ``yolo_body`` layer by
layer in tf_keras (``to_tf_keras``: same layer classes, configs, connections and weights; the
outputs are checked equal), so the two sides are the identical graph and differ only in the
framework that runs it. Keras 2 runs it as tf.keras did (its BatchNormalization on TensorFlow's
fused kernel, no folding); this project runs what it ships (``nets.layers.BatchNormalization``
for training, the BN-folded model of ``nets.fold`` for inference). A third column, "before",
is this project as it was when the issue was filed: the same body with Keras 3's own
BatchNormalization, not folded.

Timed, interleaved round by round so that load from other processes hits both alike:

- call: batch 1, 416x416 (``--input-size``), ``tf.function(model(x, training=False))``, no XLA;
  the median wall time of ``--runs`` calls after 5 warm-up calls;
- step: batch 8, ``training=True``, the issue's stand-in loss (mean square of the three heads)
  and SGD, forward + backward + update as one ``tf.function``; the median of ``--steps`` steps.

Records in docs/benchmarks.md, section "Keras 2 reference on the same network".
"""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks._record import command_line, record  # noqa: E402

SECTION = "Keras 2 reference on the same network"
DEFAULT_BACKBONES = ("mobilenetv1", "mobilenetv2", "ghostnet", "mobilenetv3large")


# ----------------------------------------------------------------------------- conversion
def _hard_sigmoid(x):
    import tensorflow as tf
    return tf.nn.relu6(x + 3.0) / 6.0  # Keras 3's hard_sigmoid; Keras 2's is clip(0.2 x + 0.5)


def _hard_silu(x):
    return x * _hard_sigmoid(x)


def _activation(name):
    """A tf_keras activation equal to Keras 3's ``name`` (Keras 2 names or defines some otherwise)."""
    import tf_keras
    return {"hard_sigmoid": _hard_sigmoid, "hard_silu": _hard_silu, "hard_swish": _hard_silu}.get(
        name, None) or tf_keras.activations.get(name)


def _lambda_for(layer):
    """tf_keras Lambda equivalents of the project's own layers (nets/layers.py)."""
    import tensorflow as tf
    cls = type(layer).__name__
    if cls == "ChannelSlice":
        start, stop = layer.start, layer.stop
        return lambda x: x[..., start:stop]
    if cls == "ChannelShuffle":
        g = layer.groups

        def shuffle(x):
            s, c = tf.shape(x), x.shape[-1]
            x = tf.reshape(x, (s[0], s[1], s[2], g, c // g))
            return tf.reshape(tf.transpose(x, (0, 1, 2, 4, 3)), (s[0], s[1], s[2], c))
        return shuffle
    return None


def _tf_keras_layer(layer):
    """The tf_keras layer with ``layer``'s class and config (initialisers, regularisers and dtype
    left out: weights are copied, and the comparison uses no weight decay)."""
    import tf_keras
    fn = _lambda_for(layer)
    if fn is not None:
        return tf_keras.layers.Lambda(fn, name=layer.name)
    cls = getattr(tf_keras.layers, type(layer).__name__, None)
    if cls is None:
        raise NotImplementedError(f"{layer.name}: no tf_keras layer for {type(layer).__name__}")
    config = layer.get_config()
    accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable"}
    config = {k: v for k, v in config.items() if k in accepted and k != "dtype"
              and not k.endswith(("_initializer", "_regularizer", "_constraint"))}
    if "activation" in config:
        config["activation"] = _activation(config["activation"])
    if type(layer).__name__ == "Activation":
        return tf_keras.layers.Activation(_activation(layer.get_config()["activation"]), name=layer.name)
    return cls(**config)


def _tf_keras_op(op, args):
    """A keras.ops call (``Add``, ``Multiply``, ...) of a functional model as a tf_keras layer."""
    import tensorflow as tf
    import tf_keras
    fn = {"Add": tf.add, "Multiply": tf.multiply, "Subtract": tf.subtract, "Divide": tf.divide}.get(type(op).__name__)
    if fn is None:
        raise NotImplementedError(f"{op.name}: no tf_keras equivalent of keras.ops {type(op).__name__}")
    symbolic = [i for i, a in enumerate(args) if tf.is_tensor(a) or hasattr(a, "_keras_history")]
    if len(symbolic) == len(args):
        return tf_keras.layers.Lambda(lambda xs: fn(*xs), name=op.name)(list(args))
    consts = list(args)
    only = symbolic[0]

    def call(x):
        return fn(*[x if i == only else c for i, c in enumerate(consts)])
    return tf_keras.layers.Lambda(call, name=op.name)(args[only])


def to_tf_keras(model):
    """``model`` (a Keras 3 functional model of standard layers and the project's own) rebuilt in
    tf_keras: the same layers, in the same order, connected the same way, with the same weights."""
    import keras
    import tf_keras
    from keras import tree

    tensors = {}
    for inp in model.inputs:
        tensors[id(inp)] = tf_keras.Input(inp.shape[1:], name=inp.name)
    for layer in model.operations:  # layers, and keras.ops calls (keras.applications' MobileNetV3 has some)
        if type(layer).__name__ == "InputLayer":
            continue
        node = layer._inbound_nodes[0]
        args = tree.map_structure(lambda t: tensors[id(t)] if id(t) in tensors else t, node.arguments.args)
        if isinstance(layer, keras.layers.Layer):
            new = _tf_keras_layer(layer)
            out = new(*args)
            if layer.weights:
                new.set_weights(layer.get_weights())
        else:
            out = _tf_keras_op(layer, args)
        for k3, k2 in zip(tree.flatten(node.outputs), tree.flatten(out)):
            tensors[id(k3)] = k2
    return tf_keras.Model([tensors[id(t)] for t in model.inputs], [tensors[id(t)] for t in model.outputs],
                          name=model.name + "_tf_keras")


# ----------------------------------------------------------------------------- timing
def _tf_keras_version() -> str:
    import tf_keras
    return tf_keras.__version__



def compare(backbone: str, alpha: float, size: int, num_classes: int, runs: int, steps: int, batch: int,
            profile: bool = False) -> dict:
    """Times of the three models (module docstring) and, with ``profile``, tf.profiler's op time
    of this project's training step by op type."""
    import numpy as np
    import tensorflow as tf

    from benchmarks.latency import compiled_call, profile_ops, random_input, time_interleaved

    from nets.fold import fold_batchnorm
    from nets.layers import use_keras_batchnorm
    from nets.yolo import yolo_body

    body = yolo_body((size, size), num_classes, backbone=backbone, alpha=alpha, weight_decay=0.0)
    before = use_keras_batchnorm(body)  # this project before issue 12: Keras 3's own BatchNormalization
    reference = to_tf_keras(before)
    x1 = random_input((size, size))
    ours_out = body(x1, training=False)
    ref_out = reference(x1, training=False)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(a))) + 1e-12))
               for a, b in zip(ours_out, ref_out))  # relative to the output's scale
    params = (body.count_params(), reference.count_params())
    if params[0] != params[1] or diff > 1e-3:
        raise AssertionError(f"{backbone}: the tf_keras copy is not the same network "
                             f"(parameters {params[0]:,} vs {params[1]:,}, max output difference {diff:.2e})")

    folded = fold_batchnorm(body)
    calls = {k: compiled_call(m, (size, size)) for k, m in (("before", before), ("reference", reference),
                                                             ("ours", folded))}  # latency.py's protocol

    xb = tf.constant(np.random.default_rng(1).uniform(0, 255, (batch, size, size, 3)).astype("float32"))

    def make_step(model, variables, optimizer):
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in model(x, training=True)])
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        return step

    import keras
    import tf_keras
    steps_fn = {
        "before": make_step(before, before.trainable_variables, keras.optimizers.SGD(1e-6)),
        "reference": make_step(reference, reference.trainable_variables, tf_keras.optimizers.SGD(1e-6)),
        "ours": make_step(body, body.trainable_variables, keras.optimizers.SGD(1e-6)),
    }
    result = {"params": params[0], "max_diff": diff}
    for kind, fns, x, n, warmup in (("call", calls, x1, runs, 5), ("step", steps_fn, xb, steps, 2)):
        for k, (wall, _cpu) in time_interleaved(fns, x, n, warmup).items():
            result[f"{kind}_{k}"] = statistics.median(wall)
    if profile:
        result["profile"] = profile_ops(steps_fn["ours"], xb, 3)
    keras.backend.clear_session()
    tf_keras.backend.clear_session()
    return result


OP_GROUPS = (("convolution", ("Conv2D",)), ("depthwise", ("Depthwise",)), ("batch norm", ("BatchNorm",)),
             ("activation", ("Relu", "Elu", "Sigmoid", "Tanh", "Mish")))


def op_groups(by_type: dict) -> dict:
    """Op time by group (convolution forward/backward, depthwise, batch norm, activation, other)
    from tf.profiler's time by op type; a type goes to the first group one of whose names it has."""
    out = collections.Counter()
    for op_type, ms in by_type.items():
        group = next((g for g, keys in OP_GROUPS if any(k in op_type for k in keys)
                      and not (g == "convolution" and "Depthwise" in op_type)), "other")
        out[group] += ms
    return dict(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--input-size", type=int, default=416)
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--runs", type=int, default=30, help="timed calls per model (default 30)")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per model (default 8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--profile", action="store_true",
                   help="also profile this project's training step (tf.profiler) and split its op time by kind")
    p.add_argument("--no-record", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    try:
        import tf_keras  # noqa: F401
    except ImportError:
        sys.exit("keras2_reference.py needs Keras 2 as tf_keras: pip install 'tf_keras~=2.21.0' "
                 "(the version matching TensorFlow's)")

    lines = [f"{'backbone':17s} {'params':>11s} {'rel diff':>8s} | {'call ms: before':>15s} {'K2':>6s} {'ours':>6s} "
             f"{'K2/ours':>7s} {'before/ours':>11s} | {'step img/s: before':>18s} {'K2':>5s} {'ours':>5s} "
             f"{'ours/K2':>7s} {'ours/before':>11s}"]
    print(lines[0], flush=True)
    shares = []
    for name in args.backbones:
        r = compare(name, args.alpha, args.input_size, args.num_classes, args.runs, args.steps, args.batch_size,
                    args.profile)
        b = args.batch_size
        line = (f"{name:17s} {r['params']:>11,d} {r['max_diff']:>8.1e} | {1e3 * r['call_before']:>15.1f} "
                f"{1e3 * r['call_reference']:>6.1f} {1e3 * r['call_ours']:>6.1f} "
                f"{r['call_reference'] / r['call_ours']:>6.2f}x {r['call_before'] / r['call_ours']:>10.2f}x | "
                f"{b / r['step_before']:>18.2f} {b / r['step_reference']:>5.2f} {b / r['step_ours']:>5.2f} "
                f"{r['step_reference'] / r['step_ours']:>6.2f}x {r['step_before'] / r['step_ours']:>10.2f}x")
        print(line, flush=True)
        lines.append(line)
        if r.get("profile"):
            groups = op_groups(r["profile"]["type"])
            total = sum(groups.values())
            shares.append(f"{name}: " + ", ".join(f"{g} {100 * v / total:.0f}%" for g, v in
                                                  sorted(groups.items(), key=lambda kv: -kv[1]))
                          + f" of {total:.0f} ms op time per step (summed over threads)")
            print(shares[-1], flush=True)
    if not args.no_record:
        record(
            SECTION, command_line("keras2_reference.py", argv),
            f"yolo_body x{args.alpha:g} at {args.input_size}x{args.input_size}, {args.num_classes} classes; "
            f"K2 = the same network rebuilt in tf_keras {_tf_keras_version()} (Keras 2) by to_tf_keras, run as tf.keras runs it; "
            "ours = this project (fused BatchNormalization for training, BN-folded model for the call); "
            "before = this project before issue 12 (Keras 3's BatchNormalization, not folded). "
            f"call: batch 1, median of {args.runs} interleaved calls; step: batch {args.batch_size}, stand-in "
            f"loss (mean square of the heads) + SGD, median of {args.steps} interleaved steps; ratios are "
            "of speeds (x > 1: ours faster); rel diff = the largest output difference between ours and K2 over "
            "the output's scale.",
            lines, *([f"Where this project's step spends its op time (tf.profiler, 3 steps; convolution = Conv2D "
                      "forward, backprop-filter and backprop-input):", shares] if shares else []))


if __name__ == "__main__":
    main()
