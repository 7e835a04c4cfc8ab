"""Counting what a reader skips or repairs, so that nothing is lost silently.

A reader owns one ``SkipReport``; it calls ``skip`` for every dropped record and ``fix`` for
every repaired one (a clipped box, a converted image), and ``log_once`` after indexing. The
report is also reachable from the dataset (``dataset.skips``) so tests and users can read it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("lightning_seg.data")


@dataclass
class SkipReport:
    """Counts of skipped and repaired records of one dataset, by reason.

    Attributes:
        source: the file or folder the dataset was read from (named in the report).
        skipped: reason -> number of records dropped.
        fixed: reason -> number of records repaired and kept.
        examples: reason -> the first few records concerned, for the message.
    """

    source: str
    skipped: Counter = field(default_factory=Counter)
    fixed: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3
    _logged: bool = False

    def skip(self, reason: str, record: str = "") -> None:
        self.skipped[reason] += 1
        self._example(reason, record)

    def fix(self, reason: str, record: str = "") -> None:
        self.fixed[reason] += 1
        self._example(reason, record)

    def _example(self, reason: str, record: str) -> None:
        ex = self.examples.setdefault(reason, [])
        if record and len(ex) < self.max_examples:
            ex.append(record)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def num_fixed(self) -> int:
        return sum(self.fixed.values())

    def summary(self) -> str:
        if not self.skipped and not self.fixed:
            return f"{self.source}: nothing skipped or repaired"
        lines = [f"{self.source}:"]
        for kind, counter in (("skipped", self.skipped), ("repaired", self.fixed)):
            for reason, n in counter.most_common():
                ex = ", ".join(self.examples.get(reason, []))
                lines.append(f"  {kind} {n} x {reason}" + (f" (e.g. {ex})" if ex else ""))
        return "\n".join(lines)

    def log_once(self) -> None:
        """Log the summary a single time per dataset (warning level when anything was skipped)."""
        if self._logged:
            return
        self._logged = True
        if self.skipped:
            log.warning(self.summary())
        elif self.fixed:
            log.info(self.summary())
