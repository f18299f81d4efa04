"""Architecture specs and the occupancy-model builder."""

import numpy as np
import pytest

from vox_tf.metrics import parameter_count
from vox_tf.models import (
    TriPlaneConfig, arch_of, as_arch, build_occupancy_model, format_arch, input_features, parse_arch)

REFERENCE_COARSE = "40:relu,8:relu,40:swish,16:elu,32:elu,16:elu"
REFERENCE_FINE = "128:elu,64:swish,64:elu,64:relu,128:swish,128:swish"


def test_parse_and_format_round_trip():
    arch = parse_arch(" 40:relu, 8:RELU ,40:swish")
    assert arch == [(40, "relu"), (8, "relu"), (40, "swish")]
    assert format_arch(arch) == "40:relu,8:relu,40:swish"
    assert parse_arch(format_arch(arch)) == arch
    assert as_arch([(16, "elu")]) == [(16, "elu")]


@pytest.mark.parametrize("spec, message", [
    ("", "non-empty"), ("40", "units:activation"), ("40:tanh", "unknown activation"),
    ("0:relu", "positive integer"), ("4.5:relu", "positive integer"), ("x:relu", "positive integer"),
    ("40:relu,", "units:activation")])
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_arch(spec)


def test_parameter_counts_match_the_reference_example():
    # METHOD.md: the reference's coarse net has 10,807 parameters and its fine net 53,959,
    # both with 45 inputs (PE level 6 + tri-plane 32 x 2) and the 6,534 plane parameters.
    coarse, fine = build_occupancy_model(REFERENCE_COARSE), build_occupancy_model(REFERENCE_FINE)
    assert input_features(fine) == 45
    assert parameter_count(coarse) == 10807
    assert parameter_count(fine) == 53959
    assert parameter_count([coarse, fine]) == 10807 + 53959


def test_encoding_options_change_inputs_and_size():
    model = build_occupancy_model("8:relu", positional_levels=None, triplane=None)
    assert input_features(model) == 3 and parameter_count(model) == 3 * 8 + 8 + 9
    model = build_occupancy_model("8:relu", positional_levels=2, triplane=TriPlaneConfig(4, 3))
    assert input_features(model) == 15 + 9
    assert parameter_count(model) == 24 * 8 + 8 + 9 + 3 * 25 * 3


def test_model_maps_points_to_probabilities_and_keeps_its_arch():
    model = build_occupancy_model("16:swish,8:elu")
    out = model.predict(np.random.default_rng(0).uniform(-1, 1, (64, 3)).astype(np.float32), verbose=0)
    assert out.shape == (64, 1) and np.all((out > 0) & (out < 1))
    assert arch_of(model) == [(16, "swish"), (8, "elu")]
