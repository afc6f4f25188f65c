"""The backbone registry (nets/backbones/__init__.py): every module of the folder found by
itself, builders named build_<name>, register() checks, name / alpha look-ups, and
build_backbone's errors and local weights files. (Each family's registry entry is checked
here too, against the papers' width multipliers.)"""
import importlib
import pkgutil
import sys

import keras
import numpy as np
import pytest

import nets.backbones as registry
from nets import backbones
from nets.backbones import build_backbone, ghostnet, keras_apps as ka, squeezenet

# Families whose modules register on import (imported above).
GHOST_SQUEEZE = {
    "ghostnet": ghostnet.build_ghostnet,
    "squeezenet": squeezenet.build_squeezenet,
    "squeezenet_bypass": squeezenet.build_squeezenet_bypass,
}
KERAS_APPS = {
    "mobilenetv1": ka.build_mobilenetv1,
    "mobilenetv2": ka.build_mobilenetv2,
    "mobilenetv3large": ka.build_mobilenetv3large,
    "mobilenetv3small": ka.build_mobilenetv3small,
    "densenet121": ka.build_densenet121,
}


def _family_modules():
    """The modules of nets/backbones, listed from the folder itself (not from the registry)."""
    return {m.name for m in pkgutil.iter_modules(backbones.__path__) if not m.name.startswith("_")}


@pytest.fixture
def only_this_registry(monkeypatch):
    """Registry look-ups that load only keras_apps, so other families' state cannot matter."""
    monkeypatch.setattr(registry, "_load_all", lambda: importlib.import_module("nets.backbones.keras_apps"))


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the full registry to register into; the real one is restored afterwards."""
    backbones.available_backbones()
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    return backbones._REGISTRY


# --------------------------------------------------------------------------- discovery

def test_registry_imports_every_module_of_its_folder_by_itself(monkeypatch):
    """Forget every family module and the registry, then ask: _load_all must find them all."""
    backbones.available_backbones()  # everything loaded first, so that monkeypatch restores it all
    modules = _family_modules()
    assert {"keras_apps", "ghostnet", "squeezenet", "shufflenet", "cspdarknet"} <= modules
    monkeypatch.setattr(backbones, "_REGISTRY", {})
    monkeypatch.setattr(backbones, "_loaded", False)
    for name in modules:  # restored by monkeypatch: the rest of the session keeps its modules
        monkeypatch.delitem(sys.modules, f"nets.backbones.{name}", raising=False)
        monkeypatch.delattr(backbones, name, raising=False)
    names = backbones.available_backbones()
    assert names, "nothing registered"
    found = {backbones.get_spec(n).builder.__module__ for n in names}
    assert found == {f"nets.backbones.{m}" for m in modules}


def test_every_registered_builder_is_named_build_name_in_its_module():
    for name in backbones.available_backbones():
        spec = backbones.get_spec(name)
        assert spec.name == name == name.lower()
        assert spec.builder.__name__ == f"build_{name}"
        assert getattr(sys.modules[spec.builder.__module__], f"build_{name}") is spec.builder
        assert spec.default_alpha in spec.alphas and spec.paper


def test_register_rejects_a_misnamed_builder_and_a_duplicate(scratch_registry):
    def build_foo(inputs, alpha=1.0, weights=None):
        raise AssertionError("never built")

    before = dict(scratch_registry)
    with pytest.raises(ValueError, match="the builder of backbone 'bar' must be named build_bar, not build_foo"):
        backbones.register("bar", build_foo, (1.0,))
    with pytest.raises(ValueError, match="backbone 'ghostnet' is registered twice"):
        backbones.register("ghostnet", ghostnet.build_ghostnet, (1.0,))
    assert scratch_registry == before  # neither attempt changed the registry
    backbones.register("Foo", build_foo, [0.5, 1], default_alpha=1)  # names are case-insensitive
    spec = backbones.get_spec("FOO")
    assert spec.builder is build_foo and spec.alphas == (0.5, 1.0) and spec.default_alpha == 1.0
    assert not spec.keras_applications
    with pytest.raises(ValueError, match="'foo' is registered twice"):
        backbones.register("foo", build_foo, (1.0,))


def test_build_backbone_needs_three_maps(scratch_registry):
    def build_two(inputs, alpha=1.0, weights=None):
        x = keras.layers.Conv2D(4, 3, strides=8, padding="same", name="two_c3")(inputs)
        return [x, keras.layers.Conv2D(4, 3, strides=2, padding="same", name="two_c4")(x)]

    backbones.register("two", build_two, (1.0,))
    with pytest.raises(RuntimeError, match="backbone 'two' returned 2 maps, expected 3"):
        build_backbone("two", keras.Input((64, 64, 3)))


# --------------------------------------------------------------------------- look-ups

def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown backbone 'ResNet50'; valid names: ") as info:
        backbones.get_spec("ResNet50")
    listed = str(info.value).split("valid names: ")[1].split(", ")
    assert sorted(listed) == sorted(backbones.available_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        build_backbone("resnet50", keras.Input((64, 64, 3)))


def test_check_alpha_default_exact_and_tolerant():
    assert backbones.check_alpha("GhostNet", None) == 1.0
    assert backbones.check_alpha("ghostnet", 1.3) == 1.3
    assert backbones.check_alpha("ghostnet", 0.1 + 0.4) == 0.5  # float noise tolerated
    assert isinstance(backbones.check_alpha("densenet121", 1), float)
    with pytest.raises(ValueError, match=r"alpha 0\.75 is not valid for backbone 'ghostnet'; valid: 0\.5, 1, 1\.3"):
        backbones.check_alpha("ghostnet", 0.75)


@pytest.mark.parametrize("name,alphas", [("ghostnet", (0.5, 1.0, 1.3)),
                                         ("squeezenet", (0.5, 1.0)),
                                         ("squeezenet_bypass", (0.5, 1.0))])
def test_registered_with_paper_alphas(name, alphas):
    spec = backbones._REGISTRY[name]  # the modules register on import (imported above)
    assert spec.builder is GHOST_SQUEEZE[name]
    assert spec.alphas == alphas and spec.default_alpha == 1.0
    assert not spec.keras_applications and spec.paper


def test_registered_under_their_names():
    names = backbones.available_backbones()
    assert {"shufflenetv1", "shufflenetv2", "cspdarknet53"} <= set(names)
    assert backbones.get_spec("shufflenetv1").alphas == (0.5, 1.0, 1.5, 2.0)
    assert backbones.get_spec("shufflenetv2").alphas == (0.5, 1.0, 1.5, 2.0)
    assert backbones.get_spec("cspdarknet53").default_alpha == 1.0
    feats = backbones.build_backbone("shufflenetv1", keras.Input((64, 64, 3)), 0.5, None, groups=8)
    assert feats[0].shape[-1] == 192


def test_registry_entries(only_this_registry):
    assert set(KERAS_APPS) <= set(registry.available_backbones())
    for name, alphas in [("mobilenetv1", (0.25, 0.5, 0.75, 1.0)),
                         ("mobilenetv2", (0.5, 0.75, 1.0, 1.3)),
                         ("mobilenetv3large", (0.75, 1.0)), ("mobilenetv3small", (0.75, 1.0)),
                         ("densenet121", (1.0,))]:
        spec = registry.get_spec(name)
        assert spec.alphas == alphas and spec.default_alpha == 1.0
        assert spec.keras_applications and spec.paper and spec.builder is KERAS_APPS[name]
    assert registry.check_alpha("MobileNetV2", None) == 1.0


def test_registry_rejects_unknown_alpha_listing_valid_ones(only_this_registry):
    with pytest.raises(ValueError, match=r"alpha 0\.35 is not valid for backbone 'mobilenetv2'; "
                                         r"valid: 0\.5, 0\.75, 1, 1\.3"):
        registry.check_alpha("mobilenetv2", 0.35)
    with pytest.raises(ValueError, match=r"'densenet121'; valid: 1$"):
        build_backbone("densenet121", keras.Input((64, 64, 3)), alpha=0.5)


# --------------------------------------------------------------------------- weights

def test_imagenet_only_for_keras_applications_families():
    with pytest.raises(ValueError, match="backbone 'squeezenet' has no ImageNet weights in keras.applications"):
        build_backbone("squeezenet", keras.Input((64, 64, 3)), 0.5, weights="imagenet")


def _register_tiny(calls):
    """A three-conv backbone "tiny" (width 8 * alpha) that records the weights it was given."""
    def build_tiny(inputs, alpha=1.0, weights=None):
        calls.append(weights)
        x, feats = inputs, []
        for i, stride in enumerate((8, 2, 2)):
            x = keras.layers.Conv2D(int(8 * alpha) * 2 ** i, 3, strides=stride, padding="same", name=f"tiny_c{i + 3}")(x)
            feats.append(x)
        return feats

    backbones.register("tiny", build_tiny, (0.5, 1.0))


@pytest.mark.parametrize("weights", [None, "none", "None", "NONE"])
def test_no_weights_spellings_reach_the_builder_as_none(scratch_registry, weights):
    calls = []
    _register_tiny(calls)
    feats = build_backbone("tiny", keras.Input((64, 64, 3)), weights=weights)
    assert calls == [None] and [tuple(f.shape[1:]) for f in feats] == [(8, 8, 8), (4, 4, 16), (2, 2, 32)]


def test_local_weights_file_loads_at_any_input_size_and_names_the_file(scratch_registry, tmp_path):
    calls = []
    _register_tiny(calls)
    inputs = keras.Input((64, 64, 3))
    source = keras.Model(inputs, build_backbone("tiny", inputs, 0.5))
    rng = np.random.default_rng(0)
    source.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in source.get_weights()])
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)

    other = keras.Input((96, 128, 3))  # the weights do not depend on the input size
    target = keras.Model(other, build_backbone("tiny", other, 0.5, weights=path))
    assert calls == [None, None]  # the file is loaded by the registry, not passed to the builder
    assert len(target.get_weights()) == 6
    for got, want in zip(target.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(got, want)

    with pytest.raises(FileNotFoundError, match=r"backbone weights file not found: .*missing\.weights\.h5"):
        build_backbone("tiny", keras.Input((64, 64, 3)), 0.5, weights=tmp_path / "missing.weights.h5")
    assert len(calls) == 2  # checked before building
    with pytest.raises(ValueError, match=r"could not load backbone weights .*tiny\.weights\.h5 into 'tiny' "
                                         r"\(alpha 1\)"):
        build_backbone("tiny", keras.Input((64, 64, 3)), 1.0, weights=str(path))
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"could not load backbone weights .*junk\.weights\.h5"):
        build_backbone("tiny", keras.Input((64, 64, 3)), 0.5, weights=junk)


def test_local_weights_file_of_a_real_family(tmp_path):
    inputs = keras.Input((64, 64, 3))
    source = keras.Model(inputs, build_backbone("squeezenet", inputs, 0.5))
    source.set_weights([w + 1.0 for w in source.get_weights()])
    path = tmp_path / "sq.weights.h5"
    source.save_weights(path)
    other = keras.Input((64, 96, 3))
    target = keras.Model(other, build_backbone("squeezenet", other, 0.5, weights=path))
    for got, want in zip(target.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(got, want)
