"""The project skeleton: files users and CI rely on."""
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_voc_classes_are_the_20_voc_names():
    names = (ROOT / "model_data" / "voc_classes.txt").read_text().split()
    assert len(names) == 20 and names[0] == "aeroplane" and names[-1] == "tvmonitor"
    assert len(set(names)) == 20


def test_default_anchors_are_nine_and_sorted_by_area():
    text = (ROOT / "model_data" / "yolo_anchors.txt").read_text()
    anchors = np.array([float(v) for v in text.replace("\n", ",").split(",") if v.strip()]).reshape(-1, 2)
    assert anchors.shape == (9, 2)
    area = anchors.prod(axis=1)
    assert np.all(np.diff(area) > 0)


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    # the Quick start's second command, without its comment, is a line of .ci/run
    line = next(l for l in readme.splitlines() if l.rstrip().endswith("# run the tests"))
    command = line.split("#")[0].strip()
    assert command.startswith("python -m pytest") and command.endswith(" tests")
    assert f"\n{command}\n" in ci
