"""Occupancy networks of METHOD.md: encodings -> MLP -> sigmoid, built from an architecture spec.

An architecture is a list of hidden layers ``[(units, activation), ...]``; its text form is
``"40:relu,8:relu,40:swish"`` (used on command lines, in JSON files and by the search).
"""

from dataclasses import dataclass

import keras

from vox_tf.layers import PositionalEncoding, TriPlaneEncoding

ACTIVATIONS = ("swish", "relu", "elu")
# Keras reports swish under its other name; map it back so architectures round-trip.
_ACTIVATION_ALIASES = {"silu": "swish"}


@dataclass(frozen=True)
class TriPlaneConfig:
    """Tri-plane encoding settings: ``resolution`` lattice cells per side, ``channels`` per plane."""

    resolution: int = 32
    channels: int = 2


def parse_arch(spec):
    """Architecture text -> list of (units, activation).

    Raises ValueError with the offending part on anything else (empty spec, width not a
    positive integer, unknown activation).

    Example:
        >>> parse_arch("40:relu, 8:swish")
        [(40, 'relu'), (8, 'swish')]
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"architecture must be a non-empty text like '40:relu,8:swish', got {spec!r}")
    layers = []
    for part in spec.split(","):
        units, sep, activation = part.strip().partition(":")
        if not sep:
            raise ValueError(f"architecture layer {part.strip()!r} is not 'units:activation'")
        layers.append(_check_layer(units.strip(), activation.strip().lower()))
    return layers


def format_arch(arch):
    """List of (units, activation) -> architecture text.

    Example:
        >>> format_arch([(40, "relu"), (8, "swish")])
        '40:relu,8:swish'
    """
    return ",".join(f"{units}:{activation}" for units, activation in as_arch(arch))


def as_arch(arch):
    """An architecture as text or as a list -> checked list of (int units, activation)."""
    if isinstance(arch, str):
        return parse_arch(arch)
    layers = [_check_layer(units, activation) for units, activation in arch]
    if not layers:
        raise ValueError("architecture needs at least one hidden layer")
    return layers


def _check_layer(units, activation):
    try:
        width = int(units)
        if width != float(units) or width < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"layer width must be a positive integer, got {units!r}") from None
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    return width, activation


def build_occupancy_model(arch, positional_levels=6, triplane=TriPlaneConfig(), name="occupancy"):
    """Builds point -> occupancy probability.

    Args:
        arch: hidden layers, text ("40:relu,8:swish") or list of (units, activation).
        positional_levels: L of the positional encoding (input included); None leaves it out.
        triplane: TriPlaneConfig, or None for no tri-plane encoding.
        name: model name.
    Returns:
        keras.Model float32 [B, 3] points in [-1, 1] -> float32 [B, 1] sigmoid probabilities.

    Example:
        >>> model = build_occupancy_model("128:elu,64:swish")
        >>> model.count_params()  # 45*128+128 + 128*64+64 + 64+1 + planes 3*2*33*33
        20743
    """
    layers = as_arch(arch)
    points = keras.Input(shape=(3,), name="points")
    features = []
    if positional_levels is not None:
        features.append(PositionalEncoding(positional_levels, name="positional")(points))
    if triplane is not None:
        features.append(TriPlaneEncoding(triplane.resolution, triplane.channels, name="triplane")(points))
    if not features:
        hidden = points
    elif len(features) == 1:
        hidden = features[0]
    else:
        hidden = keras.layers.Concatenate(name="encoding")(features)
    for depth, (units, activation) in enumerate(layers):
        hidden = keras.layers.Dense(units, activation=activation, name=f"hidden_{depth}")(hidden)
    occupancy = keras.layers.Dense(1, activation="sigmoid", name="occupancy")(hidden)
    return keras.Model(points, occupancy, name=name)


def arch_of(model):
    """The hidden layers of a model made by :func:`build_occupancy_model`, as (units, activation).

    Example:
        >>> arch_of(build_occupancy_model("16:elu"))
        [(16, 'elu')]
    """
    arch = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense) and layer.name.startswith("hidden_"):
            activation = keras.activations.serialize(layer.activation)
            activation = activation if isinstance(activation, str) else activation["config"]
            arch.append((layer.units, _ACTIVATION_ALIASES.get(activation, activation)))
    return arch


def input_features(model):
    """Width of the MLP's input (the concatenated encodings): 45 with the defaults."""
    return model.get_layer("hidden_0").input.shape[-1]
