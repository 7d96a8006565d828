"""op-classifier's Hydra plugin: every composition of conf/ is checked against the schema.

`dvc exp run -S key=value` composes conf/ into params.yaml itself (dvc/utils/hydra.py,
compose_and_dump) and then runs the stages, which would be the first to see a bad value, after
params.yaml was rewritten with it. DVC scans Hydra's plugins before it composes, and Hydra imports
every module of the `hydra_plugins` namespace package when it scans, so importing this module is the
hook: it makes Hydra's composition run the `on_compose_config` callback, which Hydra 1.3 (the
version the lock pins) never calls from its compose API. conf/config.yaml opts in by naming
SchemaCheck under `hydra.callbacks`; no other config's composition is touched. A bad value or a
composition error then ends the composition with one line naming the key, before DVC writes
params.yaml (DVC resets the workspace when composing fails).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra._internal.hydra import Hydra
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from op_classifier import config as schema
from op_classifier.errors import ConfigError
from op_classifier.schema import composition_error


class SchemaCheck(Callback):
    """Validates the composed config (the `hydra` node aside) against op_classifier.config.Config."""

    def on_compose_config(self, config: DictConfig, config_name: str | None, overrides: list[str]) -> None:
        try:
            schema.validate(_body(config))
        except ConfigError as error:
            raise config_error(str(error)) from None


TARGET = f"{__name__}.{SchemaCheck.__name__}"


@functools.cache
def _dvc_error_class(dvc_exception: type) -> type:
    return type("DvcConfigError", (ConfigError, dvc_exception), {"__module__": __name__})


def config_error(message: str) -> ConfigError:
    """A ConfigError; inside DVC also a DvcException, which DVC prints as one `ERROR: <message>` line
    (any other exception gets DVC's "unexpected error" report and its support footer)."""
    dvc_exceptions = sys.modules.get("dvc.exceptions")
    if dvc_exceptions is None:
        return ConfigError(message)
    return _dvc_error_class(dvc_exceptions.DvcException)(message)


def checks(cfg: DictConfig) -> list[SchemaCheck]:
    """The SchemaCheck callbacks a composed config lists under hydra.callbacks."""
    callbacks = OmegaConf.select(cfg, "hydra.callbacks", default=None) or {}
    targets = [spec.get("_target_") for spec in callbacks.values() if isinstance(spec, DictConfig)]
    return [SchemaCheck() for target in targets if target == TARGET]


def _with_checks(compose_config: Callable[..., DictConfig]) -> Callable[..., DictConfig]:
    @functools.wraps(compose_config)
    def wrapper(
        self: Hydra, config_name: str | None, overrides: list[str], run_mode: Any, *args: Any, **kwargs: Any
    ) -> DictConfig:
        try:
            cfg = compose_config(self, config_name, overrides, run_mode, *args, **kwargs)
        except (HydraException, OmegaConfBaseException) as error:
            if not _opted_in(self, config_name, run_mode):
                raise
            raise config_error(composition_error(error)) from None
        for check in checks(cfg):
            check.on_compose_config(config=cfg, config_name=config_name, overrides=list(overrides))
            if _dvc_composing():  # DVC composes params.yaml for `dvc exp run -S`
                before_dvc_writes(cfg, compose_config(self, config_name, [], run_mode), overrides)
        return cfg

    def _opted_in(self: Hydra, config_name: str | None, run_mode: Any) -> bool:
        """Whether the config, composed without the overrides that broke it, lists SchemaCheck."""
        try:
            return bool(checks(compose_config(self, config_name, [], run_mode)))
        except Exception:  # conf/ itself is broken: Hydra's own error says more
            return False

    wrapper.op_classifier_checks = True  # type: ignore[attr-defined]
    return wrapper


def _dvc_composing() -> bool:
    """Whether this composition is DVC's (dvc/utils/hydra.py's compose_and_dump is a caller): DVC writes
    params.yaml from it; a composition in a process that merely imported DVC writes nothing."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "compose_and_dump" and frame.f_globals.get("__name__") == "dvc.utils.hydra":
            return True
        frame = frame.f_back
    return False


def before_dvc_writes(cfg: DictConfig, conf: DictConfig, overrides: list[str]) -> None:
    """What DVC is about to write (`cfg`), checked against the project: paths stay inside it (DVC itself
    fails only after the stages ran), and values of today's params.yaml that neither conf/ alone (`conf`),
    the new composition nor the overrides give are said in one line before they are lost."""
    new, base = (OmegaConf.to_container(_body(c), resolve=True) for c in (cfg, conf))
    try:
        schema.check_paths_inside(schema.validate(new).paths, Path.cwd())  # DVC works in the repository's root
    except ConfigError as error:
        raise config_error(str(error)) from None
    params = Path(schema.PARAMS_FILE)
    try:
        now = yaml.safe_load(params.read_text(encoding="utf-8")) if params.is_file() else None
    except (OSError, yaml.YAMLError):
        return  # DVC replaces a broken params.yaml: nothing in it to keep
    if not isinstance(now, dict):
        return
    flat_new, flat_base = _flat(new), _flat(base)
    named = tuple(text.lstrip("+~").split("=", 1)[0] for text in overrides)  # replaced, not lost
    lost = [
        f"{key}={value}"
        for key, value in _flat(now).items()
        if value != flat_base.get(key, _ABSENT)
        and value != flat_new.get(key, _ABSENT)
        and not any(key == name or key.startswith(f"{name}.") for name in named)
    ]
    if lost:
        more = f" and {len(lost) - 3} more" if len(lost) > 3 else ""
        print(
            f"warning: {params} holds values that conf/ does not compose: {', '.join(lost[:3])}{more}; DVC "
            "composes it anew from conf/ and -S, so they are dropped (`op-classifier compose KEY=VALUE` keeps a choice)",
            file=sys.stderr,
            flush=True,
        )


def _body(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


_ABSENT = object()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted.key: leaf}; lists are leaves."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


EXPECTED = ("self", "config_name", "overrides", "run_mode")  # Hydra 1.3's compose_config, which we wrap


def fits(compose_config: Callable[..., Any]) -> bool:
    """Whether Hydra's compose_config still takes the arguments the wrapper passes on by position."""
    return tuple(inspect.signature(compose_config).parameters)[: len(EXPECTED)] == EXPECTED


def install() -> bool:
    """Wrap Hydra's compose_config once (Hydra re-runs a module it scans); say so loudly where it does
    not fit this Hydra, rather than leave compositions unchecked in silence. Whether it is installed."""
    if getattr(Hydra.compose_config, "op_classifier_checks", False):
        return True
    if not fits(Hydra.compose_config):
        print(
            f"warning: op-classifier's schema check does not fit Hydra {hydra.__version__} (compose_config takes "
            f"{tuple(inspect.signature(Hydra.compose_config).parameters)}): compositions are not checked",
            file=sys.stderr,
        )
        return False
    # (A Hydra that runs on_compose_config itself, as 1.4 is to, runs the check twice: harmless.)
    Hydra.compose_config = _with_checks(Hydra.compose_config)  # type: ignore[method-assign]
    return True


INSTALLED = install()
