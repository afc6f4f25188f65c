"""Backbone registry: a name ("mobilenetv2") maps to a builder.

Every builder is named ``build_<registered name>``, has the signature
``build_x(inputs, alpha, weights, **options)`` and returns the three feature maps
``[C3, C4, C5]`` at strides 8, 16 and 32 of ``inputs``. Adding a backbone means adding one
module to this folder that defines its builder and calls :func:`register`: the registry
imports every module of the folder by itself, and nothing else changes.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from typing import Callable, Sequence

import keras


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: Callable
    alphas: tuple  # valid width multipliers / scales for this family
    default_alpha: float
    keras_applications: bool  # True when ImageNet weights come from keras.applications
    paper: str = ""
    rank: int = 50  # listing order (available_backbones): lighter families first, heavy references last


_REGISTRY: dict[str, BackboneSpec] = {}

_loaded = False


def register(name: str, builder: Callable, alphas: Sequence[float], default_alpha: float = 1.0,
             keras_applications: bool = False, paper: str = "", rank: int = 50) -> None:
    """Add a backbone under ``name``; ``builder`` must be named ``build_<name>``.

    ``rank`` orders :func:`available_backbones` (and so the model report and the benchmarks),
    whatever order the modules are imported in; equal ranks keep registration order.
    """
    name = name.lower()
    if builder.__name__ != f"build_{name}":
        raise ValueError(f"the builder of backbone {name!r} must be named build_{name}, not {builder.__name__}")
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is registered twice")
    _REGISTRY[name] = BackboneSpec(name, builder, tuple(float(a) for a in alphas),
                                   float(default_alpha), keras_applications, paper, int(rank))


def _load_all() -> None:
    """Import every module of this folder once; each registers its backbones on import."""
    global _loaded
    if not _loaded:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True  # only once every module imported: a failed import is raised again next time


def available_backbones() -> list[str]:
    """Registered backbone names, by rank (keras.applications families, those written here,
    then the heavy reference), registration order within a rank."""
    _load_all()
    order = {name: i for i, name in enumerate(_REGISTRY)}
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].rank, order[n]))


def get_spec(name: str) -> BackboneSpec:
    _load_all()
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(available_backbones())}")
    return _REGISTRY[key]


def check_alpha(name: str, alpha: float | None) -> float:
    """Return the alpha to use for ``name`` (its default when None); error if invalid."""
    spec = get_spec(name)
    if alpha is None:
        return spec.default_alpha
    if not any(abs(float(alpha) - a) < 1e-9 for a in spec.alphas):
        valid = ", ".join(f"{a:g}" for a in spec.alphas)
        raise ValueError(f"alpha {alpha:g} is not valid for backbone {spec.name!r}; valid: {valid}")
    return float(alpha)


def build_backbone(name: str, inputs, alpha: float | None = None, weights=None, **options):
    """Build backbone ``name`` on the Keras tensor ``inputs``.

    Args:
        name: a registered name (:func:`available_backbones`); unknown names are a ValueError
            listing the valid ones.
        inputs: a Keras tensor of RGB images as floats in [0, 255]; each builder applies its
            own input normalisation, so the pre-processing travels with the saved model.
        alpha: width multiplier (None: the family's default); invalid ones are a ValueError.
        weights: None or "none" (random init, the default: nothing is downloaded),
            "imagenet" (keras.applications families only; offline, a BackboneWeightsError
            says how to go on), or the path of a ``.weights.h5`` file saved from
            ``keras.Model(inputs, build_backbone(...))`` of the same name and alpha.
        **options: family options (e.g. ``groups`` of shufflenetv1, ``weight_decay``).

    Returns:
        ``[C3, C4, C5]``: Keras tensors at strides 8, 16 and 32 of ``inputs``.
    """
    spec = get_spec(name)
    alpha = check_alpha(name, alpha)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if weights == "imagenet" and not spec.keras_applications:
        raise ValueError(
            f"backbone {spec.name!r} has no ImageNet weights in keras.applications; "
            "use weights=None or the path of a local backbone weights file")
    local_file = None
    if weights not in (None, "imagenet"):
        local_file = os.fspath(weights)
        if not os.path.isfile(local_file):
            raise FileNotFoundError(f"backbone weights file not found: {local_file}")
        weights = None
    feats = spec.builder(inputs, alpha=alpha, weights=weights, **options)
    if len(feats) != 3:
        raise RuntimeError(f"backbone {spec.name!r} returned {len(feats)} maps, expected 3")
    if local_file is not None:
        probe = keras.Model(inputs, list(feats), name=f"{spec.name}_backbone")
        try:
            probe.load_weights(local_file)
        except Exception as exc:  # h5py/keras raise several types; the user needs one message
            raise ValueError(
                f"could not load backbone weights {local_file} into {spec.name!r} "
                f"(alpha {alpha:g}): {exc}") from exc
    return list(feats)


class BackboneWeightsError(RuntimeError):
    """Pretrained backbone weights could not be obtained (e.g. no network for the download).

    The message names the backbone and weights file, gives the cause in one line and says
    how to go on (a local weights file, or no pretrained weights). Raised ``from None`` so
    the user sees that message, not the downloader's traceback.
    """
