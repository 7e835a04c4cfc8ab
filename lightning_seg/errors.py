"""Errors a user fixes from the message alone: ``lseg`` prints them without a traceback.

jsonargparse reports an exception raised while it builds a class as text inside a long
validation message; ``UserError`` remembers the last one raised, so that the CLI can show it
on its own (``lightning_seg.cli``).
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors whose message names what is wrong and how to fix it."""

    #: the most recent ``UserError`` created (the CLI re-raises it out of jsonargparse's wrapper)
    last: UserError | None = None

    def __init__(self, *args) -> None:
        super().__init__(*args)
        UserError.last = self
