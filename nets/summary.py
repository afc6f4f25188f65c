"""Model report: parameters, GFLOPs and head shapes for every registered backbone.

    python -m nets.summary --input-size 416 --num-classes 20
    python -m nets.summary --input-size 320 512 --backbones mobilenetv2 ghostnet --markdown

FLOPs are counted from the layer shapes (2 x multiply-accumulates of every convolution and
dense layer; BatchNorm, activations, pooling and additions are left out, as they fold into
the convolutions or cost little at deployment). Counting from shapes is exact for these
layers and needs no profiler run, so the whole table builds in seconds.
"""
from __future__ import annotations

import argparse
import sys

import keras
from keras import layers


def conv_flops(model: keras.Model) -> int:
    """2 x MACs of Conv2D / DepthwiseConv2D / Dense layers at the model's input size."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * out[1] * out[2] * out[3] * kh * kw
        elif isinstance(layer, layers.Conv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1] // layer.groups
            total += 2 * out[1] * out[2] * out[3] * kh * kw * cin
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def report_rows(input_size, num_classes, backbones=None, alpha=None, neck_width=None):
    from nets.backbones import available_backbones, get_spec
    from nets.widths import effective_neck_width
    from nets.yolo import yolo_body

    rows = []
    for name in backbones or available_backbones():
        spec = get_spec(name)
        a = spec.default_alpha if alpha is None else alpha
        model = yolo_body(input_size, num_classes, backbone=name, alpha=a, neck_width=neck_width)
        rows.append({
            "backbone": name, "alpha": a, "neck": effective_neck_width(a, neck_width),
            "params": model.count_params(),
            "gflops": conv_flops(model) / 1e9,
            "heads": [tuple(int(d) for d in o.shape[1:]) for o in model.outputs],
        })
        keras.backend.clear_session()
    return rows


def format_rows(rows, markdown=False) -> str:
    # the neck column only where a row's neck width is set apart from its alpha (--neck-width)
    neck = any(r.get("neck", r["alpha"]) != r["alpha"] for r in rows)
    head = ["backbone", "alpha", *(["neck"] if neck else []), "params (M)", "GFLOPs", "head s32", "head s16",
            "head s8"]
    body = [[r["backbone"], f"{r['alpha']:g}", *([f"{r.get('neck', r['alpha']):g}"] if neck else []),
             f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.2f}",
             *("x".join(map(str, h)) for h in r["heads"])] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-size", type=int, nargs="+", default=[416],
                   help="input side (square) or H W; multiples of 32 (default 416)")
    p.add_argument("--num-classes", type=int, default=20, help="number of classes (default 20, VOC)")
    p.add_argument("--backbones", nargs="*", help="backbone names (default: every registered one)")
    p.add_argument("--alpha", type=float, help="width multiplier for all (default: each family's default)")
    p.add_argument("--neck-width", type=float,
                   help="width multiplier of the neck and heads, in (0, 4] (default: each row's alpha; train.py "
                        "--neck-width)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table (for the README)")
    args = p.parse_args(argv)
    size = args.input_size * 2 if len(args.input_size) == 1 else args.input_size[:2]
    try:
        if args.neck_width is not None:
            from nets.widths import check_neck_width
            check_neck_width(args.neck_width, "--neck-width")
        rows = report_rows(size, args.num_classes, args.backbones, args.alpha, args.neck_width)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"YOLOv4-lite at {size[0]}x{size[1]}, {args.num_classes} classes")
    print(format_rows(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
