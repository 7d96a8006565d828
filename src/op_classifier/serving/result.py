"""What predict answers for one input file: its class probabilities, or why it has none (the report shows it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One input file: its class probabilities, or the reason it has none."""

    path: str
    probabilities: dict[str, float] | None = None
    error: str | None = None

    def predicted(self, threshold: float) -> list[str]:
        """The classes at or above the threshold, in class order."""
        return [name for name, p in (self.probabilities or {}).items() if p >= threshold]

    @property
    def top(self) -> str | None:
        """The most probable class."""
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None
