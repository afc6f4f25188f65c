"""Test configuration: quiet TensorFlow, Keras on the TensorFlow backend, shared fixtures."""
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

BCCD = ROOT.parent / "shared" / "data" / "BCCD"


@pytest.fixture(scope="session")
def bccd_root():
    """The real BCCD VOC dataset beside the project; tests that need it skip without it."""
    if not (BCCD / "Annotations").is_dir():
        pytest.skip(f"BCCD dataset not found at {BCCD} (see ../shared/data/README.md)")
    return BCCD
