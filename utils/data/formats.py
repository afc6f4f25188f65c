"""Dataset formats: VOC XML, COCO JSON and YOLO txt behind one loader.

:func:`detect_format` tells the format from a path, :func:`load_records` loads a split of
any of them into the same :class:`~utils.data.voc.VocRecord` objects (utils/data/voc.py,
coco.py, yolo_labels.py do the work and follow voc.py's conventions: bad input is reported
file by file, never fatal, one summary line, DatasetError when nothing is usable), and
:func:`class_names_from` reads the class list a dataset carries. utils/data/convert.py
converts between the formats.

The command lines share one set of data options (:func:`add_data_arguments`: ``--data PATH
--format voc|coco|yolo --images DIR``, the VOC ``--root`` / ``--annotations`` and
``--classes``) and one way from them to records (:func:`spec_from_args` -> :class:`DataSpec`,
:func:`records_from_args`). A split the files do not name is made on the spot from ratios
and a seed; train.py records it in the checkpoint's metadata (:meth:`DataSpec.record`), and
eval_map.py evaluates on it again (:func:`model_split_records`, :func:`recorded_records`).

What each format looks like on disk
-----------------------------------
* ``voc``: a root with Annotations/*.xml, JPEGImages/ and ImageSets/Main/<split>.txt; or a
  folder of XML files with ``images=`` the image folder (a flat pair, split by ratio).
* ``coco``: an instances .json file (``images=`` the folder its ``file_name`` entries are
  relative to, else found beside it), or a folder with annotations/*.json and images/.
  In a folder, ``annotations/instances_<split>.json`` (or ``<split>.json``) is a named
  split; the whole set is ``instances.json`` or the only other JSON file there.
* ``yolo``: a data.yaml, or a folder with labels/ (and images/) or a data.yaml.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib

from utils.data import coco, voc, yolo_labels
from utils.data.voc import SPLIT_FILES, DatasetError, Log, VocRecord, _class_list, read_class_names

FORMATS = ("voc", "coco", "yolo")


def _has(folder: pathlib.Path, pattern: str) -> bool:
    return folder.is_dir() and next(folder.glob(pattern), None) is not None


def detect_format(path) -> str:
    """'voc', 'coco' or 'yolo' from the path; DatasetError (a ValueError) naming what was looked for."""
    p = pathlib.Path(path)
    if not p.exists():
        raise DatasetError(f"dataset not found: {p}")
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "coco"
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
    else:
        if (p / "Annotations").is_dir() and ((p / "JPEGImages").is_dir() or _has(p / "Annotations", "*.xml")):
            return "voc"
        if _has(p / "annotations", "*.json"):
            return "coco"
        if (p / "labels").is_dir() or any((p / n).is_file() for n in yolo_labels.YAML_NAMES):
            return "yolo"
        if _has(p, "*.xml"):
            return "voc"
    raise DatasetError(
        f"{p}: cannot tell the dataset format; looked for a .json file (COCO), a .yaml/.yml file (YOLO), "
        "or a folder with Annotations/ and JPEGImages/ (VOC), annotations/*.json and images/ (COCO), "
        "labels/ or data.yaml (YOLO), or *.xml files (a flat VOC annotations folder); pass the format")


def _check_format(fmt) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; one of {', '.join(FORMATS)}")
    return fmt


# ----------------------------------------------------------------------------- COCO folders

def _coco_split_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    ann = folder / "annotations"
    out = {}
    for s in SPLIT_FILES:
        for f in (ann / f"instances_{s}.json", ann / f"{s}.json"):
            if f.is_file():
                out[s] = f
                break
    return out


def coco_json(path, split: str | None = None) -> tuple[pathlib.Path, str | None]:
    """The instances file to read for ``split`` and the split left for :func:`coco.load_coco`.

    A .json path is itself (split unchanged). In a folder, a named split file is read whole
    (split None); otherwise the whole-set file (instances.json, or the only JSON that is
    not a split file) is split by ratio. Raises DatasetError when the choice is unclear.
    """
    p = pathlib.Path(path)
    if p.is_file():
        return p, split
    ann = p / "annotations"
    jsons = sorted(ann.glob("*.json")) if ann.is_dir() else []
    if not jsons:
        raise DatasetError(f"{p}: no annotations/*.json (COCO folder layout: annotations/*.json + images/)")
    per_split = _coco_split_files(p)
    if split not in (None, "all"):
        if split in per_split:
            return per_split[split], None
        if per_split:
            raise DatasetError(f"{ann}: split files for {', '.join(per_split)} but none for {split!r} "
                               f"(instances_{split}.json)")
    whole = [f for f in jsons if f not in per_split.values()]
    if (ann / "instances.json").is_file():
        return ann / "instances.json", split
    if len(whole) == 1:
        return whole[0], split
    raise DatasetError(f"{ann}: cannot tell which of {', '.join(f.name for f in jsons)} holds the whole set; "
                       "pass the JSON file itself")


def _coco_images(path: pathlib.Path, images):
    if images is not None:
        return images
    if path.is_dir() and (path / "images").is_dir():
        return path / "images"
    return None  # coco.load_coco looks beside the JSON


# ----------------------------------------------------------------------------- public

def class_names_from(path, fmt: str | None = None) -> list[str]:
    """The class list a dataset carries: COCO categories (by id), YOLO data.yaml names / classes.txt.

    VOC files name their classes per object but not the list (nor its order): DatasetError.
    """
    fmt = _check_format(fmt or detect_format(path))
    if fmt == "coco":
        return coco.coco_class_names(coco_json(path)[0])
    if fmt == "yolo":
        return yolo_labels.yolo_class_names(path)
    raise DatasetError(f"{path}: a VOC dataset does not list its classes (nor their order); "
                       "pass the class list file (--classes FILE)")


def named_splits(path, fmt: str | None = None) -> dict[str, list[str]]:
    """The splits a dataset names itself, as {split: image ids}; {} when it names none.

    VOC: ImageSets/Main/<split>.txt; YOLO: data.yaml entries or images/<split>/; COCO: a
    folder's annotations/instances_<split>.json. Splits made by ratio are not named splits.
    """
    p = pathlib.Path(path)
    fmt = _check_format(fmt or detect_format(p))
    out = {}
    if fmt == "voc":
        for s in SPLIT_FILES:
            f = p / "ImageSets" / "Main" / f"{s}.txt"
            if f.is_file():
                out[s] = list(dict.fromkeys(voc.read_split_file(f)))
    elif fmt == "yolo":
        out = yolo_labels.yolo_splits(p)
    elif p.is_dir():
        for s, f in _coco_split_files(p).items():
            images = coco._read_json(f)["images"]
            out[s] = [os.path.splitext(os.path.basename(im["file_name"]))[0] for im in images
                      if isinstance(im, dict) and isinstance(im.get("file_name"), str)]
    return out


def load_records(path, split: str | None, class_names, *, fmt: str | None = None, images=None,
                 ratios=(0.8, 0.1, 0.1), seed: int = 0, check_images: bool = True,
                 log: Log = print) -> list[VocRecord]:
    """Load one split of a VOC, COCO or YOLO dataset as records (format detected unless ``fmt``).

    ``class_names`` is a list or a class-list file; None takes :func:`class_names_from`
    (COCO, YOLO). ``images``: the image folder of a COCO JSON or of a flat VOC annotations
    folder. ``split`` None / "all" loads everything; splits the dataset does not name are
    made by ratio (``ratios``, ``seed``; see voc.split_ids). See voc.load_voc,
    voc.load_flat, coco.load_coco and yolo_labels.load_yolo.
    """
    p = pathlib.Path(path)
    fmt = _check_format(fmt or detect_format(p))
    names = class_names_from(p, fmt) if class_names is None else class_names
    common = dict(ratios=ratios, seed=seed, check_images=check_images, log=log)
    if fmt == "voc":
        if images is not None or not (p / "Annotations").is_dir():
            if images is None:
                raise DatasetError(f"{p}: not a VOC root (no Annotations/); for a folder of XML files "
                                   "pass the image folder (images=)")
            return voc.load_flat(images, p, split, names, **common)
        return voc.load_voc(p, split, names, **common)
    if fmt == "coco":
        json_path, rest = coco_json(p, split)
        return coco.load_coco(json_path, _coco_images(p, images), rest, names, **common)
    if images is not None:
        raise ValueError("images= is for COCO files and flat VOC folders; a YOLO dataset finds its images itself")
    return yolo_labels.load_yolo(p, split, names, **common)


# ----------------------------------------------------------------------------- the data options of every CLI

DEFAULT_RATIOS = (0.8, 0.1, 0.1)
FROM_FILES, MADE_ON_THE_SPOT = "files", "made on the spot"


class _Roots(argparse.Action):
    """``--root A B`` and ``--root A --root B`` both give [A, B]; a value set before the parse
    (a --config YAML, a resumed run's config.yaml) is replaced, not extended."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(self, "_namespace", None) is not namespace:  # first --root of this parse
            self._namespace = namespace
            setattr(namespace, self.dest, [])
        getattr(namespace, self.dest).extend(values)


def add_data_arguments(parser, *, prefix: str = "", aliases=(), images_flag: str | None = None,
                       voc_options: bool = True, classes: bool = True, split_ratios=False,
                       classes_help: str = "") -> None:
    """Add the data options every CLI shares to ``parser`` (or an argument group).

    ``--data PATH`` (a VOC root, a COCO .json or folder, a YOLO data.yaml or folder; more
    names in ``aliases``), ``--format voc|coco|yolo`` (detected from the files when not
    given), ``--images DIR`` (the image folder of a COCO .json, or of a flat folder of VOC
    XML files; ``images_flag`` renames it); with ``voc_options`` the VOC ones of old,
    ``--root R [R ...]`` (several combine; repeatable) and ``--annotations DIR`` (flat VOC
    with --images); with ``classes`` ``--classes FILE`` (its default
    as the help says it: ``classes_help``); with ``split_ratios`` (its default,
    or None for "not given") ``--split-ratios TRAIN VAL TEST``. ``prefix`` ("calib-") names
    them ``--calib-data`` etc. :func:`spec_from_args` turns the parsed options into a dataset.
    """
    pre = f"--{prefix}"
    parser.add_argument(f"{pre}data", *aliases, metavar="PATH",
                        help="dataset: a VOC root (Annotations/, JPEGImages/), a COCO instances .json or a folder "
                             "with annotations/*.json and images/, or a YOLO data.yaml or a folder with images/ "
                             f"and labels/ (format detected from the files; {pre}format overrides)")
    parser.add_argument(f"{pre}format", choices=FORMATS, default=None,
                        help=f"format of {pre}data: voc, coco or yolo (default: detected)")
    parser.add_argument(images_flag or f"{pre}images", metavar="DIR",
                        help=f"image folder of a COCO .json given as {pre}data (default: images/ beside it, or "
                             "the folder its file_name entries name), or of a folder of VOC XML files given as "
                             f"{pre}data" + (" or --annotations" if voc_options else ""))
    if voc_options:
        parser.add_argument("--root", nargs="+", action=_Roots, metavar="ROOT",
                            help="VOC root(s) with Annotations/, JPEGImages/, ImageSets/Main/; several combine "
                                 "(--root A B, or --root A --root B)")
        parser.add_argument("--annotations", metavar="DIR",
                            help="flat layout: folder of VOC XML files matched to --images by file stem")
    if classes:
        parser.add_argument("--classes", metavar="FILE",
                            help="class-list file, one name a line, in the model's class order (default: "
                                 + (classes_help or "the dataset's own list: COCO categories, YOLO names; "
                                                    "required for VOC") + ")")
    if split_ratios is not False:
        parser.add_argument("--split-ratios", type=float, nargs=3, default=split_ratios,
                            metavar=("TRAIN", "VAL", "TEST"),
                            help="ratios of a split made on the spot (a split the dataset's files do not name: "
                                 "flat folders, COCO / YOLO sets without split files, VOC roots without "
                                 "ImageSets/Main/<split>.txt)"
                                 + (f" (default {' '.join(f'{r:g}' for r in split_ratios)})" if split_ratios else ""))


def _opt(args, name):
    return getattr(args, name, None)


def has_data_options(args) -> bool:
    """Whether ``args`` names a dataset (--data, --root, --images or --annotations)."""
    return any(_opt(args, n) for n in ("data", "root", "images", "annotations"))


def data_options_problem(args) -> str | None:
    """What is wrong with the combination of data options in ``args`` (one line), or None."""
    data, root, images, ann, fmt = (_opt(args, n) for n in ("data", "root", "images", "annotations", "format"))
    if root and (images or ann):
        return "give either --root, or --images with --annotations"
    if root and data:
        return "give either --root (VOC roots) or --data, not both"
    if data and ann:
        return "give either --data, or --images with --annotations"
    if ann and not images:
        return "--images and --annotations go together"
    if images and not (ann or data):
        return "--images needs --annotations (a folder of VOC XML files) or --data (a COCO .json or folder)"
    if root and fmt not in (None, "voc"):
        return f"--root names VOC roots; give a {fmt} dataset as --data PATH"
    return None


@dataclasses.dataclass
class DataSpec:
    """A dataset as the data options name it, with its class list.

    ``fmt`` voc / coco / yolo; ``paths`` the VOC roots (several combine) or the one --data
    path (a flat VOC pair: the annotations folder, with ``images`` its image folder);
    ``images`` the image folder of a COCO .json or flat VOC pair; ``classes_source`` says
    where ``class_names`` came from (recorded in the checkpoint's metadata).
    """
    fmt: str
    paths: list
    images: str | None = None
    class_names: list | None = None
    classes_source: str = ""

    @property
    def flat(self) -> bool:
        return self.fmt == "voc" and self.images is not None

    def describe(self) -> str:
        where = " + ".join(self.paths) + (f" (images {self.images})" if self.images else "")
        return f"{'flat VOC' if self.flat else self.fmt.upper()} {where}"

    def load(self, split: str | None, ratios=DEFAULT_RATIOS, seed: int = 0, *, check_images: bool = True,
             log: Log = print) -> list[VocRecord]:
        """Records of ``split`` (None / "all": every image); a split the files do not name is
        made on the spot from ``ratios`` and ``seed`` (utils.data.voc.split_ids)."""
        split = None if split in (None, "all") else split
        ratios = tuple(float(r) for r in ratios)
        if self.fmt == "voc" and not self.flat:
            return voc.load_voc(self.paths, split, self.class_names, ratio=ratios, seed=seed,
                                check_images=check_images, log=log)
        return load_records(self.paths[0], split, self.class_names, fmt=self.fmt, images=self.images,
                            ratios=ratios, seed=seed, check_images=check_images, log=log)

    def named_splits(self) -> set:
        """The splits the dataset's files name (ImageSets/Main/<split>.txt in every VOC root,
        COCO instances_<split>.json, YOLO data.yaml entries or images/<split>/)."""
        if self.flat:
            return set()
        if self.fmt == "voc":
            return set.intersection(*(set(named_splits(r, "voc")) for r in self.paths))
        found = set(named_splits(self.paths[0], self.fmt)) if pathlib.Path(self.paths[0]).exists() else set()
        if self.fmt == "yolo" and {"train", "val"} <= found:
            found.add("trainval")  # load_yolo reads train + val
        return found

    def from_files(self, split: str | None) -> bool:
        """Whether ``split`` comes from the dataset's files (True for every image) rather than
        being made on the spot from ratios and a seed."""
        return split in (None, "all") or split in self.named_splits()

    def record(self, ratios, seed: int, splits=("train", "val", "test"), test_split: str = "test") -> dict:
        """The ``data`` entry of a checkpoint's metadata: format, paths, class list source, split
        ratios and seed, which splits came from files and which were made on the spot, and the
        image ids of ``test_split`` (empty when the dataset has no such split)."""
        named = self.named_splits()
        how = {s: FROM_FILES if s in named else MADE_ON_THE_SPOT for s in dict.fromkeys(splits)}
        try:
            test_ids = sorted(r.image_id for r in self.load(test_split, ratios, seed, check_images=False, log=None))
        except DatasetError:
            test_ids = []
        return {"format": self.fmt, "paths": [os.path.abspath(p) for p in self.paths],
                "images": os.path.abspath(self.images) if self.images else None, "classes": self.classes_source,
                "split_ratios": [float(r) for r in ratios], "seed": int(seed),
                "split": MADE_ON_THE_SPOT if MADE_ON_THE_SPOT in how.values() else FROM_FILES, "splits": how,
                "test_split": test_split, "test_ids": test_ids}

    @classmethod
    def from_record(cls, record: dict, class_names) -> "DataSpec":
        """The dataset of a checkpoint's ``data`` metadata (:meth:`record`), with ``class_names``."""
        return cls(record["format"], list(record["paths"]), record.get("images"), _class_list(class_names),
                   record.get("classes", ""))


def data_spec(*, data=None, fmt: str | None = None, roots=None, images=None, annotations=None, classes=None,
              class_names=None, default_classes=None, log: Log = print) -> DataSpec:
    """The dataset and class list that data options name (see :func:`add_data_arguments`).

    The class list is ``class_names`` (e.g. a model's), else the ``classes`` file, else the
    list the dataset carries (COCO categories, YOLO names: one line is logged saying so),
    else, for VOC, ``default_classes``; a VOC set without any of them is a DatasetError.
    """
    if fmt is not None:
        _check_format(fmt)
    if roots:
        if fmt not in (None, "voc"):
            raise DatasetError(f"--root names VOC roots; give a {fmt} dataset as --data PATH")
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else roots
        spec = DataSpec("voc", [os.fspath(r) for r in roots])
    elif annotations:
        if images is None:
            raise DatasetError("--images and --annotations go together")
        spec = DataSpec("voc", [os.fspath(annotations)], os.fspath(images))
    elif data:
        spec = DataSpec(fmt or detect_format(data), [os.fspath(data)], os.fspath(images) if images else None)
    else:
        raise DatasetError("no dataset given: pass --data PATH (a VOC root, a COCO .json or folder, a YOLO data.yaml "
                           "or folder), --root DIR (VOC roots), or --images DIR --annotations DIR")
    if class_names is not None:
        spec.class_names, spec.classes_source = _class_list(class_names), "given"
    elif classes:
        spec.class_names, spec.classes_source = read_class_names(classes), f"file {os.fspath(classes)}"
    elif spec.fmt != "voc":
        spec.class_names = class_names_from(spec.paths[0], spec.fmt)
        what = "COCO categories" if spec.fmt == "coco" else "YOLO names"
        spec.classes_source = f"{what} of {spec.paths[0]}"
        if log is not None:
            shown = ", ".join(spec.class_names[:12]) + (", ..." if len(spec.class_names) > 12 else "")
            log(f"classes: {len(spec.class_names)} from the dataset ({spec.classes_source}): {shown}; "
                "--classes FILE overrides")
    elif default_classes is not None:
        spec.class_names, spec.classes_source = read_class_names(default_classes), f"file {os.fspath(default_classes)}"
    else:
        raise DatasetError(f"{spec.paths[0]}: a VOC dataset does not list its classes (nor their order); "
                           "pass the class list file (--classes FILE)")
    return spec


def spec_from_args(args, *, class_names=None, default_classes=None, log: Log = print) -> DataSpec:
    """:func:`data_spec` of the options :func:`add_data_arguments` added to a parser."""
    problem = data_options_problem(args)
    if problem:
        raise DatasetError(problem)
    return data_spec(data=_opt(args, "data"), fmt=_opt(args, "format"), roots=_opt(args, "root"),
                     images=_opt(args, "images"), annotations=_opt(args, "annotations"),
                     classes=_opt(args, "classes"), class_names=class_names, default_classes=default_classes,
                     log=log)


def records_from_args(args, split: str | None, *, ratios=None, seed=None, class_names=None, default_classes=None,
                      check_images: bool = True, log: Log = print) -> tuple[list[VocRecord], list[str]]:
    """(records, class_names) of ``split`` of the dataset the data options of ``args`` name;
    a split made on the spot takes ``ratios`` / ``seed``, else args.split_ratios / args.seed,
    else 0.8/0.1/0.1 and 0."""
    spec = spec_from_args(args, class_names=class_names, default_classes=default_classes, log=log)
    ratios = ratios if ratios is not None else _opt(args, "split_ratios") or DEFAULT_RATIOS
    seed = seed if seed is not None else _opt(args, "seed") or 0
    return spec.load(split, ratios, seed, check_images=check_images, log=log), spec.class_names


# ----------------------------------------------------------------------------- splits recorded in a model

def _ratios_text(ratios) -> str:
    return "/".join(f"{float(r):g}" for r in ratios)


def split_settings(record: dict | None, ratios=None, seed=None, log: Log = print) -> tuple[tuple, int]:
    """(ratios, seed) of a split made on the spot for a model whose metadata holds ``record``
    (its ``data`` entry, or None): ``ratios`` / ``seed`` when given, else the training run's,
    else 0.8/0.1/0.1 and 0. When the run made its split on the spot and a given value differs
    from its own, a warning is logged: that split may hold images the model trained on."""
    made = bool(record) and record.get("split") == MADE_ON_THE_SPOT
    run_ratios = tuple(record["split_ratios"]) if record and record.get("split_ratios") else None
    run_seed = record.get("seed") if record else None
    differs = (ratios is not None and run_ratios is not None
               and not all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(ratios, run_ratios))) \
        or (seed is not None and run_seed is not None and int(seed) != int(run_seed))
    if made and differs and log is not None:
        log(f"warning: the model was trained on a split made on the spot with ratios {_ratios_text(run_ratios)} "
            f"and seed {run_seed}; --split-ratios {_ratios_text(ratios or run_ratios)} / --seed "
            f"{seed if seed is not None else run_seed} make another split, which may hold images it trained on")
    ratios = tuple(ratios) if ratios is not None else (run_ratios or DEFAULT_RATIOS)
    seed = int(seed) if seed is not None else int(run_seed if run_seed is not None else 0)
    return ratios, seed


def recorded_records(record: dict, split: str, class_names, *, check_images: bool = True,
                     log: Log = print) -> list[VocRecord]:
    """Records of ``split`` of the training run's own dataset, from a model's ``data`` metadata
    (:meth:`DataSpec.record`), with the run's split ratios and seed; one line says so. The
    recorded test split is the recorded list of image ids: should the split made again differ
    (images added or removed since), the recorded images found are used, with a warning."""
    spec = DataSpec.from_record(record, class_names)
    ratios, seed = tuple(record.get("split_ratios") or DEFAULT_RATIOS), int(record.get("seed") or 0)
    made = not spec.from_files(split)
    if log is not None:
        how = f"made on the spot with ratios {_ratios_text(ratios)} and seed {seed}" if made else "from its files"
        log(f"data: the {split} split of the training run's dataset ({spec.describe()}; split {how}), "
            "from the model's metadata; --data / --root / --images choose another")
    records = spec.load(split, ratios, seed, check_images=check_images, log=log)
    want = record.get("test_ids") if made and split == record.get("test_split") else None
    if want and sorted(r.image_id for r in records) != sorted(want):
        keep = set(want)
        records = [r for r in spec.load(None, check_images=check_images, log=None) if r.image_id in keep]
        if log is not None:
            log(f"warning: the dataset changed since training: the {split} split made again is not the "
                f"{len(want)} images recorded in the model; using the {len(records)} of them still there")
        if not records:
            raise DatasetError(f"none of the {len(want)} {split} images recorded in the model is in {spec.describe()}")
    return records


def model_split_records(args, split: str, class_names, record: dict | None, *, check_images: bool = True,
                        log: Log = print) -> list[VocRecord]:
    """Records of ``split`` to evaluate a model on: from the data options of ``args`` when
    given (a split made on the spot takes the training run's ratios and seed from ``record``,
    the model's ``data`` metadata, unless args.split_ratios / args.seed are given: see
    :func:`split_settings`), else the training run's own dataset and split
    (:func:`recorded_records`); DatasetError when neither is there."""
    if not has_data_options(args):
        if not record:
            raise DatasetError("no dataset given and the model does not record the one it was trained on: pass "
                               "--data PATH, --root DIR, or --images DIR --annotations DIR")
        return recorded_records(record, split, class_names, check_images=check_images, log=log)
    spec = spec_from_args(args, class_names=class_names, log=log)
    ratios, seed = DEFAULT_RATIOS, 0
    if not spec.from_files(split):
        ratios, seed = split_settings(record, _opt(args, "split_ratios"), _opt(args, "seed"), log)
    return spec.load(split, ratios, seed, check_images=check_images, log=log)


__all__ = ["FORMATS", "detect_format", "load_records", "class_names_from", "named_splits", "coco_json",
           "DEFAULT_RATIOS", "add_data_arguments", "has_data_options", "data_options_problem", "DataSpec",
           "data_spec", "spec_from_args", "records_from_args", "split_settings", "recorded_records",
           "model_split_records"]
