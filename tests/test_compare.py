"""utils/compare.py and compare.py: configurations, the Pareto front, reports, a two-configuration
comparison that is stopped midway and continued, the latency-only mode and the CLI's checks."""
import csv
import json
import os

import numpy as np
import pytest

import compare as compare_cli
from utils.compare import (RUNTIMES, CompareError, Comparison, Config, check_runtimes, flat_rows, format_markdown,
                           pareto_front, parse_config, parse_configs, parse_reference, plot_speed_vs_map,
                           time_batch, write_csv)

TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--eval-every", "5", "--verbose", "0",
        "--no-tensorboard", "--workers", "1"]


# ----------------------------------------------------------------------------- configurations

def test_configurations_parse_with_defaults_and_all():
    assert parse_config("mobilenetv2:0.5@320", 416) == [Config("mobilenetv2", 0.5, 320)]
    assert parse_config("GhostNet", 416) == [Config("ghostnet", 1.0, 416)]
    assert parse_config("shufflenetv2@256", 416) == [Config("shufflenetv2", 1.0, 256)]
    every = parse_config("all@320", 416)
    from nets.backbones import available_backbones
    assert [c.backbone for c in every] == available_backbones() and {c.size for c in every} == {320}
    assert parse_configs(["ghostnet", "ghostnet:1.0@416", "squeezenet"], 416) == [
        Config("ghostnet", 1.0, 416), Config("squeezenet", 1.0, 416)]
    assert Config("mobilenetv2", 0.5, 320).name == "mobilenetv2-a0.5-320"
    assert Config("mobilenetv2", 0.5, 320).spec == "mobilenetv2:0.5@320"
    # a neck width of its own: the third field, in the run folder's name and in the spec
    (narrow,) = parse_config("mobilenetv2:1.0:0.5@320", 416)
    assert narrow == Config("mobilenetv2", 1.0, 320, 0.5) != Config("mobilenetv2", 1.0, 320)
    assert (narrow.name, narrow.spec) == ("mobilenetv2-a1-n0.5-320", "mobilenetv2:1:0.5@320")
    assert parse_config(narrow.spec, 416) == [narrow]
    assert parse_config("mobilenetv2:1.0:1.0@320", 416) == [Config("mobilenetv2", 1.0, 320)]  # the same network


def test_a_configuration_s_neck_width_reaches_train_py(tmp_path):
    (cfg,) = parse_config("mobilenetv1:0.25:0.5@128", 416)
    cmp = Comparison(tmp_path, [cfg], ["--epochs", "1"], ["keras"])
    args = cmp.train_args(cfg)
    assert (args.backbone, args.alpha, args.neck_width, args.input_size) == ("mobilenetv1", 0.25, 0.5, [128])
    assert cmp.train_args(Config("mobilenetv1", 0.25, 128)).neck_width is None
    plain = Config("mobilenetv1", 0.25, 128)  # no neck width of its own: the recipe's would train unreported
    for recipe in (["--neck-width", "0.5"], ["--neck-width=0.5"], ["--neck-wid", "0.5"]):  # nor its other spellings
        with pytest.raises(CompareError, match="--neck-width is set by the comparison"):
            Comparison(tmp_path, [plain], recipe, ["keras"])
    with pytest.raises(CompareError, match="--neck-width is set by the comparison"):  # whatever comes first
        Comparison(tmp_path, [cfg, plain], ["--neck-width=0.7"], ["keras"])
    # results.csv's neck_width: the configuration's own, else the alpha (result.json files from before it existed)
    narrow = {**_result("mobilenetv1:0.25:0.5@128", [("keras", 0.5, 9.0)]), "neck_width": 0.5}
    rows = flat_rows([narrow, _result("ghostnet:0.5@320", [("keras", 0.7, 30.0)])])
    assert [(r["config"], r["alpha"], r["neck_width"]) for r in rows] == [
        ("mobilenetv1:0.25:0.5@128", 0.25, 0.5), ("ghostnet:0.5@320", 0.5, 0.5)]


@pytest.mark.parametrize("spec, message", [
    ("resnet50", "configuration 'resnet50': unknown backbone 'resnet50'; valid names: mobilenetv1"),
    ("mobilenetv2:0.6", "alpha 0.6 is not valid for backbone 'mobilenetv2'; valid: 0.5, 0.75, 1, 1.3"),
    ("ghostnet@300", "configuration 'ghostnet@300': input size 300 is not a positive multiple of 32"),
    ("ghostnet@big", "size 'big' is not a whole number"),
    ("ghostnet:wide", "alpha 'wide' is not a number"),
    ("all:0.5", "'all' takes each family's default alpha"),
    ("ghostnet:1.0:0", "configuration 'ghostnet:1.0:0': neck width must be in (0, 4]"),
    ("ghostnet:1.0:thin", "neck width must be a number, got 'thin'"),
])
def test_bad_configurations_are_one_clear_message(spec, message):
    with pytest.raises(CompareError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(spec, 416)


def test_runtimes_and_reference_points_are_checked():
    assert check_runtimes(["onnx", "keras", "onnx"]) == ["onnx", "keras"]
    with pytest.raises(CompareError, match="unknown runtime\\(s\\) openvino; valid: keras, tflite-fp32"):
        check_runtimes(["keras", "openvino"])
    assert parse_reference("YOLOv8n onnx:24:0.700") == ("YOLOv8n onnx", 24.0, 0.7)
    assert parse_reference("a:b:1.5:0.5") == ("a:b", 1.5, 0.5)
    for bad in ("YOLOv8n:24", "YOLOv8n:fast:0.7", "YOLOv8n:24:70", ":24:0.7"):
        with pytest.raises(CompareError, match="expected NAME:LATENCY_MS:MAP50"):
            parse_reference(bad)


def test_options_the_comparison_sets_are_refused_in_the_recipe(tmp_path):
    cfg = [Config("mobilenetv2", 0.5, 128)]
    with pytest.raises(CompareError, match="--save-dir is set by the comparison"):
        Comparison(tmp_path, cfg, ["--save-dir", "x"], ["keras"])
    with pytest.raises(CompareError, match="bad training options"):
        Comparison(tmp_path, cfg, ["--optimizer", "rmsprop"], ["keras"])


# ----------------------------------------------------------------------------- measures

def test_pareto_front_on_hand_made_points():
    pts = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.7), (5, 0.2), (20, 0.6), (40, 0.9), (5, 0.1)]
    # (15, .4) is beaten by (10, .5); (30, .7) by (20, .7); (20, .6) by (20, .7); (5, .1) by (5, .2)
    assert pareto_front(pts) == [4, 0, 1, 6]
    assert pareto_front([(1, 0.5), (1, 0.5)]) == [0, 1]  # equal points are both kept
    assert pareto_front([]) == []


def test_time_batch_takes_the_median_and_p90_of_timed_calls(monkeypatch):
    import types

    import utils.compare as cmp
    clock = [0.0]  # a fake perf_counter, advanced by fn: exact times, however busy the machine
    monkeypatch.setattr(cmp, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = []
    pauses = iter([0.5] * 2 + [0.001 * i for i in (7, 3, 10, 1, 5, 9, 2, 8, 4, 6)])  # 2 warm-ups, then 1..10 ms

    def fn(batch):
        calls.append(batch)
        clock[0] += next(pauses)
    med, p90 = time_batch(fn, "x", warmup=2, runs=10)
    assert len(calls) == 12
    # median of 1..10 ms is 5.5; p90 by nearest rank is the 9th of 10 sorted, 9 ms; warm-ups untimed
    assert med == pytest.approx(5.5) and p90 == pytest.approx(9.0)


def _result(spec, runtimes_maps, train_s=60.0):
    cfg = parse_config(spec, 416)[0]
    return {"config": cfg.spec, "name": cfg.name, "backbone": cfg.backbone, "alpha": cfg.alpha, "size": cfg.size,
            "latency_only": False, "params": 2_000_000, "gflops": 1.5, "train_s": train_s, "epochs": 3,
            "test_images": 10, "class_names": ["a", "b"],
            "rows": [{"runtime": rt, "map50": m, "map50_95": m / 2, "per_class": {"a": m, "b": m},
                      "latency_ms": ms, "p90_ms": ms + 1, "mb": 3.0, "file": "x"} for rt, m, ms in runtimes_maps]}


def test_reports_from_hand_made_results(tmp_path):
    results = [_result("ghostnet:0.5@320", [("keras", 0.70, 30.0), ("tflite-int8", 0.69, 8.0)]),
               _result("mobilenetv2:1.0@416", [("keras", 0.85, 60.0), ("tflite-int8", 0.80, 20.0)])]
    rows = flat_rows(results)
    assert [(r["config"], r["runtime"]) for r in rows][:2] == [("ghostnet:0.5@320", "keras"),
                                                               ("ghostnet:0.5@320", "tflite-int8")]
    path = write_csv(results, tmp_path / "results.csv")
    with open(path) as f:
        read = list(csv.DictReader(f))
    assert len(read) == 4 and float(read[3]["map50"]) == pytest.approx(0.80)
    assert float(read[0]["train_min"]) == pytest.approx(1.0) and float(read[0]["params_m"]) == pytest.approx(2.0)
    assert {"ap_a", "ap_b"} <= set(read[0])
    table = format_markdown(results).splitlines()
    assert table[0].startswith("| config | runtime | mAP@0.5")
    body = [line.split(" | ") for line in table[2:]]
    assert [b[2] for b in body] == ["0.850", "0.800", "0.700", "0.690"]  # by mAP
    # the front: int8 ghostnet (8 ms, .69), int8 mobilenetv2 (20 ms, .80), keras mobilenetv2 (60 ms, .85)
    assert [b[0].strip("| ") + " " + b[1] for b in body if b[-1].startswith("yes")] == [
        "mobilenetv2:1@416 keras", "mobilenetv2:1@416 tflite-int8", "ghostnet:0.5@320 tflite-int8"]
    png = plot_speed_vs_map(results, tmp_path / "p.png", [("YOLOv8n onnx", 24.0, 0.70)])
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from utils.data.demo_data import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", num_images=40, seed=0)


def _recipe(demo):
    return ["--root", str(demo), "--classes", str(demo / "demo_classes.txt"), *TINY]


@pytest.mark.slow
def test_two_configurations_stopped_midway_continue_without_retraining(demo, tmp_path):
    """Two configurations at 128 with two steps each; the second is killed after its first
    epoch of two; the same comparison again trains only what is left of the second."""
    from utils.training.trainer import run

    out = tmp_path / "cmp"
    configs = parse_configs(["mobilenetv1:0.25@128", "squeezenet:0.5@128"], 128)
    recipe = _recipe(demo)
    recipe[recipe.index("--epochs") + 1] = "2"
    trained = []

    def stopped_in_second(args):
        trained.append((args.backbone, args.resume))
        if args.backbone == "squeezenet":
            args.epochs = 1  # one of its two epochs, then the machine is "gone"
            run(args)
            raise KeyboardInterrupt
        return run(args)

    with pytest.raises(KeyboardInterrupt):
        Comparison(out, configs, recipe, ["keras"], runs=2, warmup=1, log=None).run(train_fn=stopped_in_second)
    first, second = (out / c.name for c in configs)
    assert (first / "result.json").is_file() and not (second / "result.json").exists()
    assert json.loads((second / "resume.json").read_text())["epoch"] == 1
    assert (out / "results.csv").is_file()  # the finished configuration is reported already

    def counted(args):
        trained.append((args.backbone, args.resume))
        return run(args)

    results = Comparison(out, configs, recipe, ["keras"], runs=2, warmup=1, log=None).run(train_fn=counted)
    assert trained == [("mobilenetv1", False), ("squeezenet", False), ("squeezenet", True)]
    with open(second / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]  # epoch 2 continued, epoch 1 not redone
    assert [r["config"] for r in results] == ["mobilenetv1:0.25@128", "squeezenet:0.5@128"]
    for res in results:
        row = res["rows"][0]
        assert row["runtime"] == "keras" and 0.0 <= row["map50"] <= 1.0 and row["latency_ms"] > 0
        assert res["test_images"] == 4 and res["params"] > 0 and res["gflops"] > 0
        assert set(row["per_class"]) == {"circle", "square", "triangle", "star"}
    assert results[0]["params"] != results[1]["params"]
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (out / "results.md").read_text().count("@128 | keras") == 2
    assert (out / "speed_vs_map.png").stat().st_size > 1000
    # a third run has nothing left to do; with retime=True it only times the files again
    Comparison(out, configs, recipe, ["keras"], runs=2, warmup=1, log=None).run(train_fn=counted)
    assert len(trained) == 3
    before = json.loads((second / "result.json").read_text())
    again = Comparison(out, configs, recipe, ["keras"], runs=3, warmup=1, retime=True, log=None).run(train_fn=counted)
    assert len(trained) == 3
    after = json.loads((second / "result.json").read_text())
    assert after["rows"][0]["latency_ms"] == again[1]["rows"][0]["latency_ms"] != before["rows"][0]["latency_ms"]
    assert after["rows"][0]["map50"] == before["rows"][0]["map50"] and after["train_s"] == before["train_s"]


@pytest.mark.slow
def test_latency_only_exports_and_times_every_runtime(demo, tmp_path):
    out = tmp_path / "lat"
    results = Comparison(out, parse_configs(["mobilenetv2:0.5@128"], 128), _recipe(demo),
                         ["keras", "tflite-int8"], runs=3, warmup=1, calib_images=4, latency_only=True,
                         log=None).run()
    (res,) = results
    assert [r["runtime"] for r in res["rows"]] == ["keras", "tflite-int8"]
    assert all(r["map50"] is None and r["latency_ms"] > 0 for r in res["rows"])
    assert res["class_names"] == ["circle", "square", "triangle", "star"]
    int8 = json.loads(open(os.path.join(out, res["rows"][1]["file"] + ".json")).read())
    assert int8["quantization"]["calibration_images"] == 4
    assert res["rows"][1]["mb"] < res["rows"][0]["mb"] / 2  # int8 weights
    assert not (out / "speed_vs_map.png").exists()  # no mAP, no plot
    assert "| mobilenetv2:0.5@128 | tflite-int8 | - | - |" in (out / "results.md").read_text()


def test_cli_refuses_bad_input_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "never"
    assert compare_cli.main(["--configs", "ghostnet:0.6", "--out", str(out)]) == 2
    assert "configuration 'ghostnet:0.6': alpha 0.6 is not valid" in capsys.readouterr().err
    assert compare_cli.main(["--configs", "ghostnet", "--out", str(out), "--reference", "v8n:fast:0.7"]) == 2
    assert "expected NAME:LATENCY_MS:MAP50" in capsys.readouterr().err
    assert compare_cli.main(["--configs", "ghostnet", "--out", str(out), "--save-dir", "x"]) == 2
    assert "--save-dir is set by the comparison" in capsys.readouterr().err
    assert not out.exists()
    assert tuple(compare_cli.RUNTIMES) == RUNTIMES
