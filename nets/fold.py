"""Inference-time graph simplification: fold BatchNormalization into the convolution before it.

``fold_batchnorm(model)`` returns a new functional model, equal to ``model(x, training=False)``
up to float round-off, in which every BatchNormalization that directly follows a convolution
is gone: the conv keeps its name and gets ``use_bias=True`` with

    s = gamma / sqrt(moving_variance + epsilon)      (gamma = 1 when scale=False)
    kernel' = kernel * s   (per output channel)
    bias'   = (bias - moving_mean) * s + beta         (bias = 0 without one, beta = 0 when center=False)

and every ``ZeroPadding2D`` whose only consumer is a ``padding="valid"`` 2-D convolution and whose
padding is exactly what ``padding="same"`` would pad for that input size, kernel and stride is
dropped and the conv switched to ``"same"`` (keras.applications MobileNetV1/V2/V3 pad
explicitly before each stride-2 depthwise conv; on even sizes that is "same"'s bottom/right
pad exactly). "Same" is TensorFlow's rule (``same_padding``: the odd extra pixel goes
bottom/right), which JAX shares; the check uses the static input size, so a model with
unknown spatial sizes keeps its pads.

Why
---
A Keras BatchNormalization at inference is 7 TensorFlow ops (AddV2, Rsqrt, 3 Mul, Sub, AddV2),
two of them (a Mul and an AddV2) over the whole feature map; the BN variables being resource
variables, TensorFlow's graph optimiser cannot fold them into the conv's weights (a frozen graph
can: benchmarks/latency.py --frozen). Folded, each conv + BN + ReLU6 becomes conv + bias + ReLU6,
which TF's remapper fuses into one ``_FusedConv2D`` / ``_FusedDepthwiseConv2dNative`` op.

Measured while this module was written, with Keras' BatchNormalization in the model (a one-off
script; the recorded before/after of the project is ``python benchmarks/latency.py --compare-bn``,
docs/benchmarks.md) (yolo_body x1, batch 1, 416x416,
20 classes, tf.function without XLA, oneDNN on; AMD EPYC, 2 CPUs shared with other jobs, load
average ~4; 30 interleaved rounds; median wall ms, ratio to the original in brackets):

    backbone       original   folded BN      folded BN+pad   frozen original (reference)
    mobilenetv1    184.5      160.5 (0.87)   153.7 (0.83)    159.5 (0.86)
    mobilenetv2    207.4      158.0 (0.76)   154.3 (0.74)    173.1 (0.83)
    ghostnet       157.3      122.6 (0.78)   (no pad)        128.7 (0.82)
    shufflenetv2    96.6       79.8 (0.83)   (no pad)         74.6 (0.77)

i.e. 13-24% less latency (median CPU time per call 12-22% less), as much as freezing the graph
gives, without leaving Keras. For ghostnet and shufflenetv2 "folded BN+pad" is the same graph
as "folded BN" and came out 2-3% apart: whole-model differences below ~3% are noise here.
mobilenetv2's graph goes from 985 to 573 ops (Mul 311 -> 5, AddV2 223 -> 19, Rsqrt and Sub
102 -> 0, Pad 4 -> 0). tf.profiler op time per call, summed over threads: original 369 ms =
Conv2D 65%, Mul 11%, DepthwiseConv2dNative 8%, AddV2 6%, Relu6 5%, Pad 2%; folded 228 ms =
_FusedConv2D (conv + bias + ReLU6) 80%, _FusedDepthwiseConv2dNative 15%, ConcatV2 2%, MaxPool,
Mul, AddV2 and Tile (SPP, upsampling, residual adds) about 1% each: what is left is
convolution, mostly the neck's 1x1 convs.

The pad fold alone is below that noise in the whole model, so it was timed per layer (each
ZeroPadding2D + stride-2 depthwise + ReLU6 of mobilenetv2 x1 against the same conv with
padding="same", 200 interleaved rounds): 7.64 -> 5.58, 3.62 -> 2.86, 2.83 -> 2.37 and
3.29 -> 2.64 ms (208x208x96 ... 26x26x576), 17.4 -> 13.5 ms in all (CPU 15.6 -> 12.3), about
2.5% of the folded model: faster in every layer, and exact, so it is done by default.

What is folded and what is not
------------------------------
Folded: a BatchNormalization (or subclass, e.g. a fused variant; a subclass is checked
numerically against the formula above, once per layer, and left alone if it differs) on the
channel axis, whose input is the output of a Conv1D/2D/3D (``groups`` > 1 included),
DepthwiseConv1D/2D (any depth multiplier), SeparableConv1D/2D or Conv1D/2D/3DTranspose
with a linear activation, when that output is used by the BN only.

Left in place (listed by ``plan_folds(model).kept`` with the reason):

- a BN whose input is not a conv output: after a Concatenate/Add/activation/pool
  (DenseNet121's pre-activation BNs after each dense-block concatenation);
- a BN whose conv output is also used elsewhere, or is a model output;
- a BN whose own output is a model output (folding would rename that output);
- a BN or conv called more than once (shared weights: folding one call would change the other);
- a conv with a non-linear activation, LoRA or a quantized dtype policy.

Not done, because it is not exact or not faster:

- ``ZeroPadding2D`` + valid conv where the padding is not "same"'s, e.g. DenseNet's
  ZeroPadding2D(3) before the 7x7/2 stem conv ("same" pads (2, 3) there) or any symmetric
  (1, 1) pad before a stride-2 3x3 conv on an even input ("same" pads (0, 1)).
- Activation("relu6") vs ReLU(max_value=6): both lower to the same single ``Relu6`` op; nothing
  to gain.
- Rescaling before the first conv: folding it into the weights is only exact for an unpadded
  conv (the "same" zero padding happens after the rescale, i.e. pads with 127.5 in input
  units); every Rescaling/Normalization here feeds a padded conv (DenseNet's Normalization an
  explicit ZeroPadding2D). It costs a Cast, Mul and AddV2 on the 416x416x3 input: 1.27 ms per
  call against 0.87 ms for an Identity layer, i.e. ~0.4 ms, 0.3% of the folded model.

The returned model is not compiled; it shares no variables with ``model``; its layers are new
instances made from ``get_config()`` (custom layers must be registered / have ``from_config``).
Nested functional or Sequential models are flattened into the outer graph (their layer names
must not clash with the outer ones); subclassed models inside the graph raise ``TypeError``.
Relies on the Keras 3 functional-graph internals ``Functional._nodes_by_depth`` and
``Node.arguments`` (the same ones keras' own ``Functional.call`` and ``clone_model`` use).
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import layers

from nets.layers import BatchNormalization as ProjectBatchNormalization

__all__ = ["FoldPlan", "plan_folds", "fold_batchnorm", "refold_weights", "same_padding"]

_CONV = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
_DEPTHWISE = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_SEPARABLE = (layers.SeparableConv1D, layers.SeparableConv2D)
_TRANSPOSE = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
_ALL_CONV = _CONV + _DEPTHWISE + _SEPARABLE + _TRANSPOSE
_PAD_TARGETS = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)  # not transposed


@dataclasses.dataclass
class FoldPlan:
    """What ``fold_batchnorm`` will do to a model.

    ``bn_into_conv``: (conv name, BN name) pairs to fold; ``pad_into_conv``: (ZeroPadding2D name,
    conv name) pairs whose pad becomes the conv's ``padding="same"``; ``kept``: BN name -> why
    it stays.
    """
    bn_into_conv: list = dataclasses.field(default_factory=list)
    pad_into_conv: list = dataclasses.field(default_factory=list)
    kept: dict = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------ graph walk

@dataclasses.dataclass
class _Step:
    op: object  # the layer / operation
    node: object  # the keras Node (its arguments give the call's structure)
    inputs: list  # canonical keys of the input KerasTensors
    outputs: list  # canonical keys of the output KerasTensors


class _Graph:
    """A functional model flattened into one list of calls in topological order.

    Tensors are identified by ``id(KerasTensor)``; a nested model's input tensors are aliased
    to the outer tensors it was called on and the outer outputs of its call to its inner
    outputs, so every tensor has one canonical key.
    """

    def __init__(self, model: keras.Model):
        if not _is_functional(model):
            raise TypeError(f"fold_batchnorm needs a functional keras.Model, got {type(model).__name__} "
                            f"{getattr(model, 'name', '')!r} (subclassed models have no graph to rewrite)")
        self.model = model
        self.functional = _functional_of(model)  # a Sequential's inner Functional
        self.alias: dict[int, int] = {}
        self.steps: list[_Step] = []
        self._walk(self.functional, path=model.name)
        self.input_keys = [self.key(t) for t in self.functional.inputs]
        self.output_keys = [self.key(t) for t in self.functional.outputs]
        self.producer = {k: s for s in self.steps for k in s.outputs}
        self.consumers: dict[int, list[_Step]] = {}
        for s in self.steps:
            for k in s.inputs:
                self.consumers.setdefault(k, []).append(s)
        self.calls: dict[int, int] = {}
        for s in self.steps:
            self.calls[id(s.op)] = self.calls.get(id(s.op), 0) + 1

    def key(self, tensor) -> int:
        k = id(tensor)
        while k in self.alias:
            k = self.alias[k]
        return k

    def _walk(self, fmodel, path: str) -> None:
        for depth in sorted(fmodel._nodes_by_depth, reverse=True):
            for node in fmodel._nodes_by_depth[depth]:
                op = node.operation
                if op is None or node.is_input or isinstance(op, layers.InputLayer):
                    continue
                if isinstance(op, keras.Model):
                    self._inline(op, node, f"{path}/{op.name}")
                    continue
                self.steps.append(_Step(op, node, [self.key(t) for t in node.input_tensors],
                                        [self.key(t) for t in node.outputs]))

    def _inline(self, inner: keras.Model, node, path: str) -> None:
        if not _is_functional(inner):
            raise TypeError(f"{path}: a {type(inner).__name__} (subclassed model) inside the graph cannot be "
                            "rewritten; build it functionally or fold it separately")
        fmodel = _functional_of(inner)
        args, kwargs = node.arguments.args, node.arguments.kwargs
        if len(args) != 1 or any(isinstance(v, keras.KerasTensor) for v in keras.tree.flatten(kwargs)):
            raise TypeError(f"{path}: nested model called with {len(args)} positional arguments / tensor "
                            "keyword arguments; only model(inputs) can be flattened")
        outer_in = keras.tree.flatten(args[0])
        if len(outer_in) != len(fmodel.inputs):
            raise TypeError(f"{path}: called on {len(outer_in)} tensors, has {len(fmodel.inputs)} inputs")
        for inner_t, outer_t in zip(fmodel.inputs, outer_in):
            self.alias[id(inner_t)] = self.key(outer_t)
        self._walk(fmodel, path)
        for outer_t, inner_t in zip(node.outputs, fmodel.outputs):
            self.alias[id(outer_t)] = self.key(inner_t)


def _is_functional(model) -> bool:
    return isinstance(model, keras.Model) and (hasattr(model, "_nodes_by_depth") or
                                               isinstance(model, keras.Sequential))


def _functional_of(model):
    if isinstance(model, keras.Sequential):
        fmodel = getattr(model, "_functional", None)
        if fmodel is None:
            raise TypeError(f"Sequential model {model.name!r} has no input shape yet (not built)")
        return fmodel
    return model


# ------------------------------------------------------------------------------ planning

def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zero padding that TensorFlow's ``padding="SAME"`` applies on one axis.

    out = ceil(size / stride); total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0);
    before = total // 2, after = total - before: the extra pixel of an odd total goes bottom/right.
    E.g. a 3x3 stride-2 conv on an even size pads (0, 1), on an odd size (1, 1).
    """
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _channel_axis(conv, rank: int) -> int:
    return 1 if getattr(conv, "data_format", "channels_last") == "channels_first" else rank - 1


def _conv_problem(conv) -> str | None:
    """Why ``conv`` cannot take a folded BN (None if it can)."""
    act = keras.activations.serialize(conv.activation) if callable(conv.activation) else conv.activation
    if act not in (None, "linear"):
        return f"{conv.name} has activation {act!r} before the BN"
    if getattr(conv, "lora_enabled", False):
        return f"{conv.name} has LoRA enabled"
    if getattr(conv, "quantization_mode", None) or getattr(conv.dtype_policy, "quantization_mode", None):
        return f"{conv.name} is quantized"
    return None


def _bn_matches_formula(bn, shape) -> bool:
    """True when a BatchNormalization subclass computes the standard inference BN."""
    rank = len(shape)
    axis = bn.axis % rank
    probe = [1] + [2] * (rank - 1)
    probe[axis] = int(shape[axis])
    x = np.random.default_rng(0).normal(0, 3, probe).astype("float32")
    got = keras.ops.convert_to_numpy(bn(x, training=False)).astype("float64")
    scale, shift = _bn_affine(bn)
    bshape = [1] * rank
    bshape[axis] = -1
    want = x.astype("float64") * scale.reshape(bshape) + shift.reshape(bshape)
    return bool(np.allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max())))


def _numpy(variable) -> np.ndarray:
    return np.asarray(variable.numpy(), "float64")


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) of the inference BN as y = x * s + t, in float64."""
    mean, var = _numpy(bn.moving_mean), _numpy(bn.moving_variance)
    gamma = _numpy(bn.gamma) if bn.scale else 1.0
    beta = _numpy(bn.beta) if bn.center else 0.0
    s = gamma / np.sqrt(var + float(bn.epsilon))
    return s * np.ones_like(mean), beta - mean * s


def _plan(graph: _Graph, fold_padding: bool, check_subclasses: bool) -> FoldPlan:
    plan = FoldPlan()
    outputs = set(graph.output_keys)
    for step in graph.steps:
        bn = step.op
        if not isinstance(bn, layers.BatchNormalization):
            continue
        reason = _bn_problem(graph, step, outputs, check_subclasses)
        if reason:
            plan.kept[bn.name] = reason
        else:
            plan.bn_into_conv.append((graph.producer[step.inputs[0]].op.name, bn.name))
    if fold_padding:
        for step in graph.steps:
            pad = _pad_target(graph, step, outputs)
            if pad is not None:
                plan.pad_into_conv.append((step.op.name, pad.name))
    return plan


def _bn_problem(graph: _Graph, step: _Step, outputs: set, check_subclasses: bool) -> str | None:
    bn = step.op
    if graph.calls[id(bn)] > 1:
        return "the BN layer is called more than once (shared)"
    if len(step.inputs) != 1:
        return "the BN is called with more than one tensor (a mask?)"
    producer = graph.producer.get(step.inputs[0])
    if producer is None:
        return "its input is a model input"
    conv = producer.op
    if not isinstance(conv, _ALL_CONV):
        return f"its input comes from {type(conv).__name__} {conv.name!r}, not a convolution"
    if graph.calls[id(conv)] > 1:
        return f"{conv.name} is called more than once (shared weights)"
    users = graph.consumers.get(step.inputs[0], [])
    if len(users) != 1 or step.inputs[0] in outputs:
        return f"the output of {conv.name} is also used elsewhere"
    problem = _conv_problem(conv)
    if problem:
        return problem
    if any(k in outputs for k in step.outputs):
        return "its output is a model output (folding would rename the output)"
    if not isinstance(bn.axis, int):
        return f"BN over several axes {bn.axis}"
    rank = len(step.node.input_tensors[0].shape)
    if bn.axis % rank != _channel_axis(conv, rank):
        return f"BN axis {bn.axis} is not the channel axis of {conv.name}"
    # the project's fused BN is tested to be Keras' layer (tests/test_batchnorm.py): no probe needed
    if check_subclasses and type(bn) not in (layers.BatchNormalization, ProjectBatchNormalization):
        if not _bn_matches_formula(bn, step.node.input_tensors[0].shape):
            return f"{type(bn).__name__} does not compute the standard inference batch norm"
    return None


def _pad_target(graph: _Graph, step: _Step, outputs: set):
    """The conv a ZeroPadding2D step can be folded into as padding='same', else None."""
    pad = step.op
    if type(pad) is not layers.ZeroPadding2D or graph.calls[id(pad)] > 1:
        return None
    if step.outputs[0] in outputs:
        return None
    users = graph.consumers.get(step.outputs[0], [])
    if len(users) != 1 or not isinstance(users[0].op, _PAD_TARGETS):
        return None
    conv = users[0].op
    if graph.calls[id(conv)] > 1 or conv.padding != "valid" or conv.data_format != pad.data_format:
        return None
    shape = step.node.input_tensors[0].shape
    sizes = shape[1:3] if pad.data_format == "channels_last" else shape[2:4]
    if any(s is None for s in sizes):
        return None  # "same" depends on the size: only fold when it is known
    strides, dilation = tuple(conv.strides), tuple(conv.dilation_rate)
    if max(strides) > 1 and max(dilation) > 1:
        return None  # keras rejects that combination with padding="same"
    want = tuple(same_padding(int(n), int(k), int(s), int(d))
                 for n, k, s, d in zip(sizes, conv.kernel_size, strides, dilation))
    have = tuple(tuple(int(p) for p in axis) for axis in pad.padding)
    return conv if have == want else None


def plan_folds(model: keras.Model, *, fold_padding: bool = True, check_subclasses: bool = True) -> FoldPlan:
    """What ``fold_batchnorm`` would fold, and why each remaining BN stays (nothing is built)."""
    return _plan(_Graph(model), fold_padding, check_subclasses)


# ------------------------------------------------------------------------------ rebuild

def _folded_weights(conv, bn) -> dict:
    """{attribute name: new value} of ``conv`` with ``bn`` folded in (float64 numpy)."""
    scale, shift = _bn_affine(bn)
    get = _numpy
    bias = get(conv.bias) if conv.use_bias else 0.0
    new_bias = bias * scale + shift  # (bias - mean) * s + beta, as shift = beta - mean * s
    if isinstance(conv, _SEPARABLE):
        out = {"depthwise_kernel": get(conv.depthwise_kernel),
               "pointwise_kernel": get(conv.pointwise_kernel) * scale}
    elif isinstance(conv, _DEPTHWISE):
        kernel = get(conv.kernel)  # (*k, C, M); output channel c * M + m
        out = {"kernel": kernel * scale.reshape(kernel.shape[-2:])}
    elif isinstance(conv, _TRANSPOSE):
        kernel = get(conv.kernel)  # (*k, out, in)
        out = {"kernel": kernel * scale[:, None]}
    else:
        out = {"kernel": get(conv.kernel) * scale}  # (*k, in / groups, out)
    out["bias"] = new_bias
    return out


def _clone(op, config_changes=None):
    config = op.get_config()
    config.update(config_changes or {})
    return op.__class__.from_config(config)


def _copy_weights(src, dst) -> None:
    if len(src.weights) != len(dst.weights):
        raise RuntimeError(f"{src.name}: the clone has {len(dst.weights)} weights, the original "
                           f"{len(src.weights)}")
    dst.set_weights(src.get_weights())


def fold_batchnorm(model: keras.Model, *, fold_padding: bool = True, check_subclasses: bool = True,
                   return_plan: bool = False):
    """A copy of functional ``model`` with conv-BN pairs (and exact pads) folded.

    Same input and output names and structure (list or dict) and the same layer names, less the
    folded BatchNormalization (and ZeroPadding2D) layers; outputs equal
    ``model(x, training=False)`` up to float round-off (~1e-6 relative in float32).
    ``fold_padding=False`` keeps every ZeroPadding2D. ``check_subclasses``: run each BN subclass
    once on a small random tensor and fold it only if it matches the standard formula.
    ``return_plan=True`` returns ``(new_model, FoldPlan)``. Raises TypeError for a subclassed
    model (also nested) and ValueError when flattening nested models gives clashing names.
    """
    graph = _Graph(model)
    plan = _plan(graph, fold_padding, check_subclasses)
    by_name = {}
    for step in graph.steps:
        by_name.setdefault(step.op.name, []).append(step.op)
    clashes = sorted(n for n, ops in by_name.items() if len({id(o) for o in ops}) > 1)
    if clashes:
        raise ValueError(f"flattening the nested models of {model.name!r} gives layers with the same name: "
                         f"{', '.join(clashes[:10])}")

    bn_of_conv = {conv: bn for conv, bn in plan.bn_into_conv}
    dropped_bn = set(bn_of_conv.values())
    padded_conv = {conv for _, conv in plan.pad_into_conv}
    dropped_pad = {pad for pad, _ in plan.pad_into_conv}
    bn_layer = {s.op.name: s.op for s in graph.steps if s.op.name in dropped_bn}

    new_inputs = []
    values: dict[int, object] = {}
    source = graph.functional
    for key, tensor in zip(graph.input_keys, source.inputs):
        layer = tensor._keras_history.operation
        new = keras.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype, name=layer.name,
                          sparse=getattr(tensor, "sparse", False) or None)
        new_inputs.append(new)
        values[key] = new

    clones: dict[int, object] = {}
    for step in graph.steps:
        op, name = step.op, step.op.name
        if any(k not in values for k in step.inputs):
            continue  # not reachable from the inputs (keras skips these too)
        if name in dropped_bn or name in dropped_pad:
            values[step.outputs[0]] = values[step.inputs[0]]
            continue
        first_call = id(op) not in clones
        if first_call:
            changes = {}
            if name in bn_of_conv:
                changes["use_bias"] = True
            if name in padded_conv:
                changes["padding"] = "same"
            clones[id(op)] = _clone(op, changes) if isinstance(op, keras.layers.Layer) else op
        new_op = clones[id(op)]
        tensor_map = {id(t): values[graph.key(t)] for t in step.node.input_tensors}
        args, kwargs = step.node.arguments.fill_in(tensor_map)
        result = new_op(*args, **kwargs)
        for k, t in zip(step.outputs, keras.tree.flatten(result)):
            values[k] = t
        if first_call and new_op is not op:
            if name in bn_of_conv:
                for attr, value in _folded_weights(op, bn_layer[bn_of_conv[name]]).items():
                    var = getattr(new_op, attr)
                    var.assign(value.astype(keras.backend.standardize_dtype(var.dtype)))
            else:
                _copy_weights(op, new_op)

    missing = [k for k in graph.output_keys if k not in values]
    if missing:
        raise ValueError(f"{len(missing)} outputs of {model.name!r} are not connected to its inputs")
    inputs = keras.tree.pack_sequence_as(source._inputs_struct, new_inputs)
    outputs = keras.tree.pack_sequence_as(source._outputs_struct, [values[k] for k in graph.output_keys])
    folded = keras.Model(inputs, outputs, name=model.name)
    return (folded, plan) if return_plan else folded


def refold_weights(model: keras.Model, folded: keras.Model, plan: FoldPlan) -> None:
    """Copy ``model``'s current weights into ``folded`` (made by ``fold_batchnorm(model,
    return_plan=True)``), folding the BN statistics again.

    The graph of ``folded`` is kept, so a tf.function around it is not traced again: this is
    how a Detector that evaluates a model in training sees each epoch's weights.
    """
    source = {}
    for layer in _flat_layers(model):
        source[layer.name] = layer
    bn_of_conv = dict(plan.bn_into_conv)
    for layer in _flat_layers(folded):
        if not layer.weights:
            continue
        if layer.name in bn_of_conv:
            values = _folded_weights(source[layer.name], source[bn_of_conv[layer.name]])
            for attr, value in values.items():
                var = getattr(layer, attr)
                var.assign(value.astype(keras.backend.standardize_dtype(var.dtype)))
        else:
            _copy_weights(source[layer.name], layer)


def _flat_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer
