"""`op-classifier compose KEY=VALUE`: the choices it saves, in conf/ itself, so `dvc exp run -S` keeps them.

DVC composes params.yaml from conf/ plus its `-S` overrides alone: values that lived only in
params.yaml were lost at the first experiment. So compose writes its overrides into
conf/project/composed.yaml (a `_global_` config that conf/config.yaml's defaults list includes last),
and params.yaml is always what conf/ composes. A group choice (`model=...`) becomes an `override` in
the file's defaults list, a value (`data.image_size=224`) a value of the file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from op_classifier import config
from op_classifier.errors import ConfigError

GROUP, OPTION = "project", "composed"  # conf/config.yaml: `- optional project: composed`
HEADER = """# @package _global_
# The choices `op-classifier compose KEY=VALUE` saved. conf/config.yaml includes this file last, so they
# win over the groups and presets, and `dvc exp run -S ...` composes them too; a `-S` override still wins.
# Change them with `op-classifier compose KEY=VALUE`, drop them all with `op-classifier compose --reset`.
"""


ORDER = 10


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """compose [--reset] [KEY=VALUE ...]"""
    parser = sub.add_parser(
        "compose", parents=[common], help="save overrides in conf/project/composed.yaml, compose conf/ into params.yaml"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides to keep, e.g. data.val_fraction=0.25")
    parser.add_argument("--reset", action="store_true", help="drop the choices saved before (then apply the overrides)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Save the choices and write params.yaml; say so."""
    print(compose(args.overrides, args.reset))


def compose(overrides: Sequence[str], reset: bool = False) -> str:
    """`op-classifier compose`: save the overrides with the choices saved before (none with `reset`), then
    write params.yaml as conf/ composes it; on any error nothing is written. What it did, in a line."""
    conf_dir = config.project_conf()
    groups, values = merged(overrides, conf_dir, *(({}, {}) if reset else read(conf_dir)))
    if groups or values:
        check_included(conf_dir)
    before = write(conf_dir, groups, values)
    try:
        cfg = config.compose()
        config.check_paths_inside(config.validate(cfg).paths, conf_dir.parent)
    except BaseException:
        restore(conf_dir, before)
        raise
    Path(config.PARAMS_FILE).write_text(config.to_yaml(cfg), encoding="utf-8")
    saved = f" (your choices are saved in {path(conf_dir).relative_to(conf_dir.parent)})" if groups or values else ""
    return f"wrote {config.PARAMS_FILE}{saved}"


def path(conf_dir: Path) -> Path:
    """Where the saved choices live."""
    return conf_dir / GROUP / f"{OPTION}.yaml"


def read(conf_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The saved (group choices, values); empty when nothing is saved."""
    file = path(conf_dir)
    if not file.is_file():
        return {}, {}
    try:
        body = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{file}: not readable YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(body, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    groups = {}
    for entry in body.pop("defaults", None) or []:
        key, option = next(iter(entry.items())) if isinstance(entry, dict) and len(entry) == 1 else (None, None)
        if not (isinstance(key, str) and key.startswith("override /")):
            raise ConfigError(
                f"{file}: its defaults list holds only `override /<group>: <option>` entries, not {entry}"
            )
        groups[key.removeprefix("override /")] = option
    return groups, body


def check_included(conf_dir: Path) -> None:
    """conf/config.yaml's defaults list must end with the saved choices, or saving them changes nothing."""
    entry = {f"optional {GROUP}": OPTION}
    try:
        defaults = (yaml.safe_load((conf_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("defaults")
    except (OSError, yaml.YAMLError, AttributeError):
        defaults = None
    if not defaults or defaults[-1] != entry:
        raise ConfigError(
            f"{conf_dir.name}/config.yaml: its defaults list must end with `- optional {GROUP}: {OPTION}`, "
            f"or the choices saved in {path(conf_dir).relative_to(conf_dir.parent)} are not composed"
        )


def merged(
    overrides: Sequence[str], conf_dir: Path, groups: dict[str, str], values: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The saved choices with the overrides applied, in order: a group choice forgets the values saved
    under that group (another model's settings would not fit), `~key` drops a saved choice."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError(str(error).strip().splitlines()[0]) from None
    groups, values = dict(groups), _copy(values)
    for override in parsed:
        key, text = override.key_or_group, override.input_line
        if override.is_sweep_override() or override.package is not None:
            raise ConfigError(f"{text}: compose saves one value a key (no sweeps or @package)")
        if override.is_delete():
            if not (groups.pop(key, None) or _drop(values, key.split("."))):
                raise ConfigError(f"{text}: no saved choice sets {key} (conf/ does: edit it there)")
        elif "." not in key and (conf_dir / key).is_dir():
            option = override.value()
            if not isinstance(option, str):
                raise ConfigError(f"{text}: a group takes one of its options (conf/{key}/<option>.yaml)")
            groups[key] = option
            values.pop(key, None)
        else:
            _set(values, key.split("."), override.value())
    return groups, values


def write(conf_dir: Path, groups: dict[str, str], values: dict[str, Any]) -> str | None:
    """Save the choices (none: no file); the file's previous text, to put back if composing fails."""
    file = path(conf_dir)
    before = file.read_text(encoding="utf-8") if file.is_file() else None
    if not groups and not values:
        file.unlink(missing_ok=True)
        if file.parent.is_dir() and not any(file.parent.iterdir()):
            file.parent.rmdir()
        return before
    body = {"defaults": [{f"override /{g}": option} for g, option in groups.items()]} if groups else {}
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(HEADER + yaml.safe_dump({**body, **values}, sort_keys=False), encoding="utf-8")
    return before


def restore(conf_dir: Path, before: str | None) -> None:
    """Put the saved choices back as they were."""
    file = path(conf_dir)
    if before is None:
        file.unlink(missing_ok=True)
    else:
        file.write_text(before, encoding="utf-8")


def _copy(tree: Any) -> Any:
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if not isinstance(tree.get(key), dict):
            tree[key] = {}
        tree = tree[key]
    tree[keys[-1]] = value


def _drop(tree: dict[str, Any], keys: list[str]) -> bool:
    """Remove a nested key (and the sections it leaves empty); whether it was there."""
    if len(keys) == 1:
        return tree.pop(keys[0], _MISSING) is not _MISSING
    inner = tree.get(keys[0])
    if not isinstance(inner, dict) or not _drop(inner, keys[1:]):
        return False
    if not inner:
        del tree[keys[0]]
    return True


_MISSING = object()
