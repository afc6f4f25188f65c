"""One set of option names for the command line and YAML files (ultralytics style).

``parse_with_config(parser, argv)``: a ``--config FILE.yaml`` holds any of the parser's
options under the same names (dashes or underscores); the command line overrides the file.
Unknown keys in the file are an error that names the file and the key.
"""
from __future__ import annotations

import argparse
import os

import yaml


def load_yaml(path) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return data


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        data = load_yaml(known.config)
        dests = {a.dest: a for a in parser._actions}
        defaults = {}
        for key, value in data.items():
            dest = str(key).replace("-", "_")
            if dest not in dests or dest in ("help", "config"):
                raise ValueError(f"{known.config}: unknown option {key!r}")
            action = dests[dest]
            if action.type is not None and value is not None and not isinstance(value, list):
                value = action.type(value)
            if action.choices is not None and value is not None and value not in action.choices:
                raise ValueError(f"{known.config}: {key} must be one of {sorted(action.choices)}, got {value!r}")
            defaults[dest] = value
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def save_yaml(data: dict, path) -> None:
    from utils.checkpoint import atomic_path

    with atomic_path(path, suffix=".yaml") as tmp, open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
