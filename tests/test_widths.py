"""nets/widths.py: the neck-width rule (the model side is in test_yolo.py)."""
import math

import pytest

from nets.widths import check_neck_width, effective_neck_width


def test_neck_width_values_and_the_alpha_default():
    assert check_neck_width("0.5") == 0.5 and check_neck_width(4) == 4.0
    assert effective_neck_width(0.75, None) == 0.75 and effective_neck_width(0.75, 0.25) == 0.25
    for bad, message in ((0, "must be in \\(0, 4\\]"), (4.01, "must be in"), (math.nan, "must be in"),
                         ("wide", "must be a number, got 'wide'"), (None, "must be a number")):
        with pytest.raises(ValueError, match="--neck-width " + message):
            check_neck_width(bad, "--neck-width")
