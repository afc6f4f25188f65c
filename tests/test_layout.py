"""The layout's rules, checked on the source: no import cycle, nets/ free of the data pipeline,
Keras layers registered in nets/ under one package name, constants defined once, and a test
module for every library module.

Imports are read with ``ast`` (module level and inside functions alike), so a cycle that
only closes at run time is found too.
"""
import ast
import collections
import pathlib

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("nets", "utils")
CLIS = ("train.py", "predict.py", "eval_map.py", "export.py", "compare.py", "classify.py", "voc_annotation.py")
DATA_PIPELINE = ("utils.data", "utils.inference", "utils.training", "cv2", "PIL", "defusedxml")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _library_files():
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: pathlib.Path, known: set) -> set:
    """Project modules imported anywhere in ``path`` (``from a.b import c`` counts a.b.c when a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
    return found


def _graph():
    files = {_module_name(p): p for p in _library_files()}
    known = set(files)
    return {m: _imports(p, known) - {m} for m, p in files.items()}


def _external_imports(path):
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere():
    graph = _graph()
    # a package imports its submodules' names only through explicit imports; parents are not edges
    assert _cycles(graph) == [], "import cycles (module level or inside functions)"


def test_nets_imports_nothing_from_the_data_pipeline():
    bad = {}
    for path in (ROOT / "nets").rglob("*.py"):
        hits = [m for m in _external_imports(path) if m.startswith(DATA_PIPELINE)]
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert bad == {}


def test_data_flow_does_not_import_inference_or_training():
    bad = {}
    for path in (ROOT / "utils" / "data").rglob("*.py"):
        hits = [m for m in _external_imports(path) if m.startswith(("utils.inference", "utils.training"))]
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert bad == {}


def test_keras_layers_are_registered_in_nets_under_one_package():
    registering = [p for p in _library_files() if "register_keras_serializable" in p.read_text()]
    assert registering and all(p.relative_to(ROOT).parts[0] == "nets" for p in registering), registering
    from nets.layers import PACKAGE
    from nets.layers import ChannelShuffle, ChannelSlice
    from nets.postprocess import YoloPostprocess
    for cls in (ChannelShuffle, ChannelSlice, YoloPostprocess):
        assert keras.saving.get_registered_name(cls) == f"{PACKAGE}>{cls.__name__}"
    packages = set()
    for path in registering:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PACKAGE" for t in node.targets):
                packages.add(str(path.relative_to(ROOT)))
    assert packages == {"nets/layers.py"}, f"PACKAGE defined in {sorted(packages)}"


@pytest.mark.parametrize("name", ["STRIDES", "ANCHOR_MASKS", "TARGET_KEYS", "NUM_ANCHORS", "PACKAGE", "BN_EPS",
                                  "BN_MOMENTUM", "PAD_VALUE", "IMAGE_EXTENSIONS", "META_NAME", "NMS_KINDS"])
def test_each_constant_is_defined_once(name):
    where = []
    for path in _library_files():
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(getattr(t, "id", None) == name for t in targets):
                where.append(str(path.relative_to(ROOT)))
    assert len(where) == 1, f"{name} defined in {where}"


def _expected_test_file(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[:2] == ("nets", "backbones"):
        return "test_backbones.py" if rel.stem == "__init__" else f"test_backbones_{rel.stem}.py"
    return f"test_{rel.stem}.py"


def test_every_library_module_has_its_test_module():
    modules = [p for p in _library_files() if p.stem != "__init__" or p.parent.name == "backbones"]
    missing = sorted(str(p.relative_to(ROOT)) for p in modules if not (ROOT / "tests" / _expected_test_file(p)).is_file())
    assert missing == []
    names = collections.Counter(_expected_test_file(p) for p in modules)
    assert [n for n, c in names.items() if c > 1] == [], "two library modules would share one test module"


@pytest.mark.parametrize("cli", CLIS)
def test_clis_are_thin(cli):
    """Front ends parse arguments and call the library: no model or metric code, no class."""
    tree = ast.parse((ROOT / cli).read_text())
    assert not [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert len((ROOT / cli).read_text().splitlines()) < 200
