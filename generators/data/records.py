"""Records: one crystal with its DFT properties and the id it has in its source."""

from __future__ import annotations

from dataclasses import dataclass, field

from pymatgen.core import Structure


@dataclass
class Record:
    structure: Structure
    properties: dict[str, float]
    source_id: str
    source: str = ""


@dataclass
class ReadReport:
    """What a reader or selection step kept and dropped, with reasons."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def drop(self, reason: str, message: str | None = None) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if message:
            self.messages.append(message)
