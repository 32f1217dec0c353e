"""The config dataclasses' checks and the helpers the entry points share: argument checks,
device names, dicts as configs and the memory estimates."""
import re

import pytest

from predlab import config
from predlab.config import ModelConfig, TrainConfig, WorldConfig


@pytest.mark.parametrize("lo, hi", [("width_min", "width_max"), ("height_min", "height_max"),
                                    ("boids_min", "boids_max")])
def test_a_range_whose_low_end_is_above_its_high_end_is_refused_naming_both(lo, hi):
    WorldConfig(**{lo: 40, hi: 40}).validate()             # one value: a fixed canvas or flock size
    with pytest.raises(ValueError, match=f"^{lo}=41 is larger than {hi}=40$"):
        WorldConfig(**{lo: 41, hi: 40}).validate()
