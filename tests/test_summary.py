"""nets/summary.py: FLOPs counted from layer shapes (against the hand formula), the report
rows (parameters, heads) and the table / CLI output."""
import keras
import pytest
from keras import layers

from nets import summary
from nets.summary import conv_flops, format_rows, report_rows


def _model(shape, *make):
    inputs = keras.Input(shape)
    x = inputs
    for m in make:
        x = m(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("make,flops", [
    # 2 x H_out x W_out x C_out x kh x kw x C_in
    (lambda: layers.Conv2D(4, 3, padding="same"), 2 * 8 * 10 * 4 * 3 * 3 * 3),
    (lambda: layers.Conv2D(4, 3, strides=2, padding="same"), 2 * 4 * 5 * 4 * 3 * 3 * 3),
    (lambda: layers.Conv2D(5, (1, 3), padding="valid"), 2 * 8 * 8 * 5 * 1 * 3 * 3),
], ids=["3x3", "3x3-stride2", "1x3-valid"])
def test_one_conv_against_the_hand_formula(make, flops):
    assert conv_flops(_model((8, 10, 3), make())) == flops


def test_grouped_depthwise_dense_and_free_layers():
    # grouped: each output channel sees C_in / groups inputs
    assert conv_flops(_model((8, 10, 6), layers.Conv2D(4, 1, groups=2))) == 2 * 8 * 10 * 4 * 1 * 3
    # depthwise: one k x k filter per output channel (C_in x multiplier of them)
    assert conv_flops(_model((8, 10, 6), layers.DepthwiseConv2D(3, padding="same"))) == 2 * 8 * 10 * 6 * 9
    assert conv_flops(_model((8, 10, 6), layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"))) == \
        2 * 8 * 10 * 12 * 9
    # dense: 2 x in x out; BatchNorm, activations, pooling and additions cost nothing here
    model = _model((8, 10, 3), layers.Conv2D(4, 3, padding="same"), layers.BatchNormalization(),
                   layers.ReLU(), layers.GlobalAveragePooling2D(), layers.Dense(7))
    assert conv_flops(model) == 2 * 8 * 10 * 4 * 27 + 2 * 4 * 7


@pytest.mark.slow
def test_report_rows_parameters_flops_and_heads():
    (row,) = report_rows((64, 96), 2, backbones=["mobilenetv1"], alpha=0.25)
    assert row["backbone"] == "mobilenetv1" and row["alpha"] == 0.25
    keras.utils.set_random_seed(0)
    from nets.yolo import yolo_body
    model = yolo_body((64, 96), 2, backbone="mobilenetv1", alpha=0.25)
    assert row["params"] == model.count_params() == sum(int(w.numpy().size) for w in model.weights)
    assert row["gflops"] == pytest.approx(conv_flops(model) / 1e9) and row["gflops"] > 0
    # strides 32, 16, 8 of 64x96; 3 anchors x (5 + 2 classes)
    assert row["heads"] == [(2, 3, 21), (4, 6, 21), (8, 12, 21)]


def test_format_rows_by_hand():
    rows = [{"backbone": "tiny", "alpha": 0.5, "params": 1_234_567, "gflops": 4.5678,
             "heads": [(2, 3, 21), (4, 6, 21), (8, 12, 21)]},
            {"backbone": "a_longer_name", "alpha": 1.0, "params": 25_000_000, "gflops": 30.0,
             "heads": [(2, 3, 21), (4, 6, 21), (8, 12, 21)]}]
    md = format_rows(rows, markdown=True).splitlines()
    assert md[0] == "| backbone | alpha | params (M) | GFLOPs | head s32 | head s16 | head s8 |"
    assert md[1] == "|---|---|---|---|---|---|---|"
    assert md[2] == "| tiny | 0.5 | 1.23 | 4.57 | 2x3x21 | 4x6x21 | 8x12x21 |"
    assert md[3] == "| a_longer_name | 1 | 25.00 | 30.00 | 2x3x21 | 4x6x21 | 8x12x21 |"
    text = format_rows(rows).splitlines()
    assert text[0].split() == ["backbone", "alpha", "params", "(M)", "GFLOPs", "head", "s32", "head", "s16",
                               "head", "s8"]
    assert set(text[1]) == {"-", " "} and text[2].split() == ["tiny", "0.5", "1.23", "4.57", "2x3x21", "4x6x21",
                                                              "8x12x21"]
    assert text[2].index("0.5") == text[3].index("1") == text[0].index("alpha")  # aligned columns
    # a neck width set apart from the alpha gets its own column
    rows[0]["neck"] = 0.25
    md = format_rows(rows, markdown=True).splitlines()
    assert md[0] == "| backbone | alpha | neck | params (M) | GFLOPs | head s32 | head s16 | head s8 |"
    assert md[2] == "| tiny | 0.5 | 0.25 | 1.23 | 4.57 | 2x3x21 | 4x6x21 | 8x12x21 |"
    assert md[3].startswith("| a_longer_name | 1 | 1 | 25.00 |")


def test_cli_errors_exit_2_without_building(capsys):
    assert summary.main(["--backbones", "resnet50"]) == 2
    assert "error: unknown backbone 'resnet50'" in capsys.readouterr().err
    assert summary.main(["--input-size", "100", "--backbones", "mobilenetv1"]) == 2
    assert "multiples of 32, got 100x100" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_prints_a_markdown_table(capsys):
    assert summary.main(["--input-size", "64", "96", "--num-classes", "2", "--backbones", "mobilenetv1",
                         "--alpha", "0.25", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "YOLOv4-lite at 64x96, 2 classes"
    assert lines[1].startswith("| backbone | alpha |") and len(lines) == 4
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells[:2] == ["mobilenetv1", "0.25"] and cells[4:] == ["2x3x21", "4x6x21", "8x12x21"]
