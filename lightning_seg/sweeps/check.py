"""Check a sweep against ``lseg``'s own parser: every parameter path exists in the experiment's
config and every value type-checks, before any trial runs (``lseg sweep --dry-run``, and the test
of every file in ``experiments/sweeps/``).

Each value is parsed exactly as a trial passes it (``--name=value``, or an inline ``--config``
for ``null``, after ``--config EXPERIMENT``) by the parser ``lseg fit`` builds; nothing is
instantiated, so no data or weights are needed. A value must also land where the name says: a
path that jsonargparse accepted but that leaves the config unchanged is reported too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lightning_seg.sweeps.spec import (
    EXPERIMENT_PARAM,
    Parameter,
    SweepSpec,
    format_value,
    param_args,
)

_PARSER_CACHE: dict[str, Any] = {}


def candidate_values(p: Parameter) -> list[Any]:
    """Values of a parameter worth parsing: every listed value, or the ends and middle of a
    distribution."""
    if p.is_discrete:
        return list(p.values)
    from lightning_seg.sweeps.search import from_unit

    return [from_unit(p, u) for u in (0.0, 0.5, 1.0)]


class _ParserBuilt(Exception):
    """Raised by ``_ParserOnly`` once LightningCLI has built its parser (nothing is parsed)."""

    def __init__(self, parser) -> None:
        super().__init__("parser built")
        self.parser = parser


def _parser(root: Path):
    """``lseg fit``'s parser (``SegCLI``'s, with ``experiments/defaults.yaml``), built once."""
    key = str(root)
    if key not in _PARSER_CACHE:
        import lightning as L

        from lightning_seg.cli import DEFAULT_CONFIG, SegCLI

        class _ParserOnly(SegCLI):
            def parse_arguments(self, parser, args) -> None:
                raise _ParserBuilt(parser)

        defaults = root / DEFAULT_CONFIG
        kwargs = {"default_config_files": [str(defaults)] if defaults.is_file() else [],
                  "exit_on_error": False}
        try:
            _ParserOnly(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                        subclass_mode_data=True, parser_kwargs=kwargs, args=[], run=False,
                        auto_configure_optimizers=False)
        except _ParserBuilt as built:
            _PARSER_CACHE[key] = built.parser
    return _PARSER_CACHE[key]


def check_sweep(spec: SweepSpec) -> list[str]:
    """Problems of a sweep (an empty list when every value parses into its experiment).

    Each entry names the experiment, the parameter, the value and what the parser said.
    """
    from lightning_seg.cli import expand_fragments

    parser = _parser(spec.root)
    problems: list[str] = []
    for experiment in spec.experiments():
        base = expand_fragments(["--config", str(spec.root / experiment)])
        try:
            parser.parse_args(base)
        except Exception as exc:  # reported, never raised here
            problems.append(f"{experiment}: does not parse on its own: {_first_line(exc)}")
            continue
        for p in spec.parameters:
            if p.name == EXPERIMENT_PARAM:
                continue
            for value in candidate_values(p):
                problem = _check_value(parser, base, p.name, value)
                if problem:
                    problems.append(f"{experiment}: {p.name}={format_value(value)}: {problem}")
    return problems


def _check_value(parser, base: list[str], name: str, value: Any) -> str | None:
    try:
        cfg = parser.parse_args([*base, *param_args(name, value)])
    except Exception as exc:
        return _first_line(exc)
    try:
        got = _get(cfg, name)
    except KeyError:
        return "the parser accepted it but the config has no such key"
    expected = yaml.safe_load(format_value(value))
    if not _same(got, expected):
        return f"the config holds {got!r} after parsing, not {expected!r}"
    return None


def _get(cfg, name: str) -> Any:
    from jsonargparse import Namespace

    node: Any = cfg
    for part in name.split("."):
        if isinstance(node, Namespace) and part not in node and isinstance(node.get("init_args"), Namespace):
            node = node.init_args
        if not isinstance(node, Namespace) or part not in node:
            raise KeyError(name)
        node = node[part]
    return node


def _same(got: Any, expected: Any) -> bool:
    from jsonargparse import Namespace

    if expected is None:
        return got is None or got == "None"
    if isinstance(got, Namespace):
        got = got.as_dict()
        if isinstance(expected, dict) and "class_path" in expected and "class_path" in got:
            return got["class_path"].rsplit(".", 1)[-1] == str(expected["class_path"]).rsplit(".", 1)[-1]
    if isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(_same(a, b) for a, b in zip(got, expected))
    if isinstance(got, float) or isinstance(expected, float):
        try:
            return abs(float(got) - float(expected)) <= 1e-12 * max(1.0, abs(float(expected)))
        except (TypeError, ValueError):
            return False
    return got == expected or str(got) == str(expected)


_NOISE = ("Given value", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>")


def innermost_message(text: str) -> str:
    """The most specific line of a (jsonargparse) error message: its most indented line, not
    counting the lists of subtypes and given values (e.g. ``Option 'varaint' is not accepted``
    or the constructor's own ``padding must be 'same' or 'valid'``)."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines[1:] if not ln.strip().lstrip("- ").startswith(_NOISE)]
    if not useful:
        return lines[0].strip() if lines else ""
    deepest = max(useful, key=lambda ln: len(ln) - len(ln.lstrip(" -")))
    return deepest.strip().lstrip("- ").strip()


def _first_line(exc: BaseException) -> str:
    return innermost_message(str(exc)) or type(exc).__name__
