"""``lseg`` commands beyond LightningCLI's ``fit / validate / test / predict``.

Each module here whose name is a command (``lseg sweep ...`` runs ``commands/sweep.py``) has
``main(argv: list[str]) -> int``, the exit status. Add a module to add a command.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys


def available() -> list[str]:
    """Names of the extra commands."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run(name: str, argv: list[str]) -> int:
    """Run command ``name`` with its arguments; its exit status."""
    module = importlib.import_module(f"{__name__}.{name}")
    return int(module.main(argv) or 0)


def console(name: str) -> None:
    """``python -m lightning_seg.commands.<name>``: the command without importing the training
    CLI (faster to start); errors a user can fix are printed as ``lseg`` prints them."""
    from lightning_seg.errors import UserError

    try:
        sys.exit(run(name, sys.argv[1:]))
    except UserError as exc:
        print(f"lseg: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
