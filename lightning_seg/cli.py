"""The ``lseg`` command: LightningCLI with ``fit / validate / test / predict``.

Usage::

    lseg fit --config experiments/quickstart.yaml
    lseg fit --config experiments/deeplabv3plus_r50_camvid_80e.yaml --trainer.devices 2 --trainer.strategy ddp
    lseg fit --config ... --ckpt_path outputs/<run>/checkpoints/last.ckpt     # resume
    lseg predict --config ... --ckpt_path best.ckpt

``experiments/defaults.yaml`` (relative to the working directory) is read first when it exists,
then the files given with ``--config``. An experiment file may start with ``fragments:``, a list
of files (relative to the experiment file) that are stacked as ``--config`` before it: a model, a
dataset, a schedule. Fragments cannot have fragments of their own (one level, no hidden
inheritance), and ``--print_config`` shows the result.

Dataset facts (``DATASET_FACTS``: number of classes, ignore index, keypoint flip map,
thing/stuff split...) are filled from the DataModule into every constructor argument of that name
left unset, at any depth of the model, so they are never typed twice and a part that does not
take a fact never receives it. The run is named after the experiment file. Every run saves its
resolved ``config.yaml`` in its run folder.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lightning_seg.callbacks.progress import default_progress_bar
from lightning_seg.errors import UserError

DEFAULT_CONFIG = os.path.join("experiments", "defaults.yaml")
FRAGMENTS_KEY = "fragments"


class CheckpointError(UserError, RuntimeError):
    """A ``--ckpt_path`` that is missing or cannot be read."""


# ------------------------------------------------------------------ experiment fragments
def expand_fragments(args: Sequence[str]) -> list[str]:
    """Replace ``--config EXPERIMENT`` whose file lists ``fragments`` by ``--config`` of each
    fragment followed by the experiment's own keys (its ``fragments`` entry removed)."""
    out: list[str] = []
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        path = None
        if arg == "--config" and i + 1 < len(args):
            path, step = args[i + 1], 2
        elif arg.startswith("--config="):
            path, step = arg.split("=", 1)[1], 1
        if path is None or not _is_file(path):
            out.append(arg)
            i += 1
            continue
        out.extend(_expand_one(Path(path)))
        i += step
    return out


def _is_file(value: str) -> bool:
    """Whether a ``--config`` value names a file (it may also be a YAML string)."""
    if "\n" in value or len(value) > 4096:
        return False
    try:
        return Path(value).is_file()
    except OSError:
        return False


def _expand_one(path: Path) -> list[str]:
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict) or FRAGMENTS_KEY not in content:
        return ["--config", str(path)]
    fragments = content.pop(FRAGMENTS_KEY) or []
    if isinstance(fragments, str):
        fragments = [fragments]
    out = []
    for fragment in fragments:
        frag_path = (path.parent / fragment).resolve()
        if not frag_path.is_file():
            raise FileNotFoundError(f"{path}: fragment {fragment!r} not found (looked for {frag_path})")
        nested = yaml.safe_load(frag_path.read_text()) or {}
        if isinstance(nested, dict) and FRAGMENTS_KEY in nested:
            raise ValueError(
                f"{frag_path}: a fragment cannot list fragments of its own (used by {path}); "
                f"list every fragment in the experiment file"
            )
        out += ["--config", str(frag_path)]
    out += ["--config", yaml.safe_dump(content, sort_keys=False)]
    return out


def experiment_name(args: Sequence[str]) -> str | None:
    """Stem of the last ``--config`` file given (the experiment), or None."""
    name = None
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--config" and i + 1 < len(args) else None
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value and _is_file(value) and Path(value).suffix in (".yaml", ".yml"):
            name = Path(value).stem
    return name


# ------------------------------------------------------------------ null on the command line
_NULLS = ("null", "none", "~")


def cli_null_keys(args: Sequence[str]) -> list[str]:
    """Dotted keys given ``null`` on the command line (``--a.b null`` or ``--a.b=null``)."""
    keys = []
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(args):
            key, value = arg[2:], args[i + 1]
        else:
            continue
        if value.strip().lower() in _NULLS:
            keys.append(key)
    return keys


def nulls_as_config(args: Sequence[str]) -> list[str]:
    """Turn ``--a.init_args.b null`` into ``--config "{a: {init_args: {b: null}}}"``, in place.

    jsonargparse does not parse ``null`` for arguments of nested classes given on the command
    line (``str | None`` arrives as the string ``"None"``, ``Sequence[int] | None`` is refused);
    the same value in a config is read right. Keys without ``init_args`` are left as they are
    (``restore_cli_nulls`` mends the string case for them).
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key = value = None
        if arg.startswith("--") and "=" in arg:
            key, value, step = *arg[2:].split("=", 1), 1
        elif arg.startswith("--") and i + 1 < len(args):
            key, value, step = arg[2:], args[i + 1], 2
        if key and ".init_args." in key and value.strip().lower() in _NULLS:
            node: dict = {}
            for part in reversed(key.split(".")):
                node = {part: node} if node != {} else {part: None}
            out += ["--config", yaml.safe_dump(node)]
            i += step
            continue
        out.append(arg)
        i += 1
    return out


def restore_cli_nulls(cfg: Namespace, keys: Sequence[str]) -> None:
    """Undo jsonargparse's turning ``null`` into the string ``"None"`` for arguments of nested
    classes given on the command line (``--model.init_args.model.init_args.backbone.init_args
    .weights null``), in place. ``init_args`` may be left out of the key, as jsonargparse allows."""
    for key in keys:
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            if isinstance(node, Namespace) and part not in node and isinstance(node.get("init_args"), Namespace):
                node = node.init_args
            node = node.get(part) if isinstance(node, Namespace) else None
            if node is None:
                break
        if not isinstance(node, Namespace):
            continue
        last = parts[-1]
        if last not in node and isinstance(node.get("init_args"), Namespace):
            node = node.init_args
        if node.get(last) == "None":
            node[last] = None


# ------------------------------------------------------------------ dataset facts
def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def _to_config(value):
    """A fact as the config holds it (dataclasses as namespaces, tuples as lists; a dataclass with
    ``as_config``, as ``DatasetInfo``, leaves out what it generates itself)."""
    if is_dataclass(value):
        fields = value.as_config() if hasattr(value, "as_config") else asdict(value)
        return Namespace(**{k: _to_config(v) for k, v in fields.items()})
    if isinstance(value, (list, tuple)):
        return [_to_config(v) for v in value]
    return value


def _plain(value):
    if isinstance(value, Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if is_dataclass(value):
        return _plain(_to_config(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _given_fact(given, value):
    """A fact set in a config, in the plain form ``_plain(value)`` takes. A dataclass given as a
    namespace is built first, so a config that spells out what the dataclass generates (an older
    saved config with the whole palette) equals one that leaves it out."""
    if is_dataclass(value) and isinstance(given, Namespace):
        try:
            given = type(value)(**_plain(given))
        except (TypeError, ValueError):
            pass
    return _plain(given)


def fill_dataset_facts(node, facts: dict, path: str = "model") -> None:
    """Set, in place, every ``DATASET_FACTS`` argument left unset (None) of every class in a
    config subtree; raise when one is set to a value that disagrees with the dataset."""
    if isinstance(node, Namespace) and isinstance(node.get("class_path"), str):
        try:
            params = inspect.signature(_import(node.class_path)).parameters
        except (ImportError, AttributeError, ValueError, TypeError):
            params = {}
        init = node.get("init_args")
        if init is None:
            init = Namespace()
            node["init_args"] = init
        for name, value in facts.items():
            if name not in params:
                continue
            given = init.get(name)
            if given is None:
                init[name] = _to_config(value)
            elif (given_plain := _given_fact(given, value)) != (data_plain := _plain(value)):
                if isinstance(given_plain, dict) and isinstance(data_plain, dict):  # name the fields
                    keys = sorted(k for k in given_plain.keys() | data_plain.keys()
                                  if given_plain.get(k) != data_plain.get(k))
                    given_plain = {k: given_plain.get(k) for k in keys}
                    data_plain = {k: data_plain.get(k) for k in keys}
                raise ValueError(
                    f"{path}.init_args.{name} is {given_plain!r} but the DataModule gives "
                    f"{data_plain!r}: remove it from the experiment (it is filled from the data) "
                    f"or use data that agree"
                )
        for key, value in vars(init).items():
            if key not in facts:
                fill_dataset_facts(value, facts, f"{path}.init_args.{key}")
    elif isinstance(node, Namespace):
        for key, value in vars(node).items():
            fill_dataset_facts(value, facts, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            fill_dataset_facts(value, facts, f"{path}[{i}]")


def instantiate(parser, cfg: Namespace) -> Namespace:
    """The classes of a parsed config built: jsonargparse's ``instantiate`` (4.49 on, where
    ``instantiate_classes`` is deprecated), else ``instantiate_classes``."""
    method = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return method(cfg)


def raise_user_error(exc: BaseException):
    """Re-raise ``exc``, or the ``UserError`` that caused it when jsonargparse wrapped one into its
    validation message."""
    cause = UserError.last
    if cause is not None and cause is not exc and str(cause) in str(exc):
        raise cause from None
    raise exc


class LoggedConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the run folder and logs the resolved config to every logger
    (the run's config in W&B, ``hparams.yaml`` for CSV), so a run is reproducible from its logs."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class SegCLI(LightningCLI):
    """LightningCLI with dataset facts, run names, checkpoint checks and progress reporting."""

    #: stem of the experiment file (the last ``--config`` file), the default run name
    experiment: str | None = None
    #: dotted keys set to null on the command line (see ``restore_cli_nulls``)
    null_keys: Sequence[str] = ()
    _prebuilt_data = None

    def parse_arguments(self, parser, args) -> None:
        UserError.last = None
        try:
            super().parse_arguments(parser, args)
        except BaseException as exc:
            raise_user_error(exc)

    def _config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._config()
        restore_cli_nulls(cfg, self.null_keys)
        self._prebuilt_data = None
        if cfg.get("data") is None or cfg.get("model") is None:
            return
        UserError.last = None
        try:
            datamodule = self._build_datamodule(cfg.data)
        except Exception as exc:
            raise_user_error(exc)
        info = getattr(datamodule, "info", None)
        if info is not None:
            from lightning_seg.structures.dataset_info import dataset_facts

            fill_dataset_facts(cfg.model, dataset_facts(info))
        self._prebuilt_data = datamodule
        self._name_run(cfg)

    @staticmethod
    def _build_datamodule(data_cfg: Namespace):
        """The DataModule of the config (built once; ``instantiate_classes`` below reuses it)."""
        import lightning as L
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--data", type=L.LightningDataModule)
        parsed = parser.parse_object({"data": _plain(data_cfg)})
        return instantiate(parser, parsed).data

    def _name_run(self, cfg: Namespace) -> None:
        """Name the run after the experiment file unless the config names it."""
        name = self.experiment
        trainer = cfg.get("trainer")
        logger = trainer.get("logger") if trainer is not None else None
        if not name or not isinstance(logger, Namespace):
            return
        init = logger.get("init_args")
        if init is not None and "name" in init and init.get("name") in (None, "run", "lightning_logs"):
            init["name"] = name

    def instantiate_classes(self) -> None:
        cfg = self._config()
        UserError.last = None
        data_cfg = cfg.get("data")
        if self._prebuilt_data is not None:
            cfg["data"] = self._prebuilt_data  # already built: jsonargparse keeps instances
        try:
            super().instantiate_classes()
        except Exception as exc:
            raise_user_error(exc)
        finally:
            if self._prebuilt_data is not None:
                cfg["data"] = data_cfg

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and not Path(ckpt).is_file():
            raise CheckpointError(f"--ckpt_path {ckpt}: no such file")
        try:
            super()._parse_ckpt_path()
        except CheckpointError:
            raise
        except Exception as exc:
            size = Path(ckpt).stat().st_size if ckpt and Path(ckpt).is_file() else 0
            raise CheckpointError(
                f"--ckpt_path {ckpt} ({size} bytes) cannot be read as a Lightning checkpoint "
                f"({type(exc).__name__}: {exc}); it may be truncated (a copy or a run that was "
                f"killed while saving): use another checkpoint, e.g. the run's last.ckpt"
            ) from exc

    def instantiate_trainer(self, **kwargs):
        """Add a progress reporter that suits the output (rich bar on a TTY, plain lines otherwise)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config["trainer"]
        callbacks = list(trainer_config.get("callbacks") or []) + list(kwargs.get("callbacks") or [])
        if trainer_config.get("enable_progress_bar", True) is not False and not any(
            isinstance(cb, ProgressBar) for cb in callbacks
        ):
            callbacks.append(default_progress_bar())
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None, run: bool = True) -> SegCLI:
    """Entry point of ``lseg``; ``args`` lets tests run it in-process, ``run=False`` only
    parses and instantiates (then ``args`` holds no subcommand)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import lightning as L

    raw = list(sys.argv[1:] if args is None else args)
    nulls = [k.split(".", 1)[1] if k.split(".", 1)[0] in ("fit", "validate", "test", "predict") else k
             for k in cli_null_keys(raw)]
    cli_class = type("SegCLI", (SegCLI,), {"experiment": experiment_name(raw), "null_keys": nulls})
    return cli_class(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggedConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=(
            {cmd: {"default_config_files": [DEFAULT_CONFIG]} for cmd in ("fit", "validate", "test", "predict")}
            if run
            else {"default_config_files": [DEFAULT_CONFIG]}
        ),
        args=_args_for_lightning(nulls_as_config(expand_fragments(raw)), given=args is not None),
        run=run,
        auto_configure_optimizers=False,
    )


def build_experiment(config: str | os.PathLike, *overrides: str):
    """The task and the DataModule of an experiment file, built as ``lseg fit --config config
    *overrides`` builds them (benchmarks and notebooks use it, so that what they measure is what
    users run). The network is ``task.model``.

    Example::

        task, data = build_experiment("experiments/deeplabv3plus_r50_camvid_80e.yaml",
                                      "--model.init_args.model.init_args.backbone.init_args.weights=null")
    """
    argv, sys.argv = sys.argv, sys.argv[:1]  # the caller's own arguments are not lseg's
    try:
        cli = main(["--config", str(config), *overrides], run=False)
    finally:
        sys.argv = argv
    return cli.model, cli.datamodule


def _args_for_lightning(expanded: list[str], given: bool) -> list[str] | None:
    """LightningCLI reads ``sys.argv`` when ``args`` is None (and warns when both are set)."""
    if given:
        return expanded
    sys.argv[1:] = expanded
    return None


def console_main() -> None:
    """The ``lseg`` console script: runs the CLI, or one of ``lightning_seg.commands`` (``lseg
    sweep``, ``lseg report``...); exit status 0 on success (a returned object would be printed and
    exit with status 1), 1 with a one-paragraph message on the errors a user can fix (bad data,
    missing weights or checkpoint, a diverged run)."""
    from lightning_seg import commands

    try:
        if len(sys.argv) > 1 and sys.argv[1] in commands.available():
            sys.exit(commands.run(sys.argv[1], sys.argv[2:]))
        main()
    except UserError as exc:
        print(f"lseg: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    console_main()
