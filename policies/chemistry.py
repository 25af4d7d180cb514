"""Chemical-space constraint: only candidates made of allowed elements go on.

Why: every new element in a DFT result costs an elemental reference calculation, and users
often target one chemical family (oxide perovskites of Sr/Ba/Ti/Zr, say). Restricting the
space before ranking keeps the DFT budget on the chemistry the campaign is about.
"""

from __future__ import annotations

from collections.abc import Iterable

from pymatgen.core import Element

from policies.filters import FilterStep


class AllowedElementsFilter(FilterStep):
    name = "allowed_elements"

    def __init__(self, elements: Iterable[str]) -> None:
        symbols = []
        for symbol in elements:
            try:
                symbols.append(Element(symbol).symbol)
            except ValueError as exc:
                raise ValueError(f"allowed elements: {symbol!r} is not an element") from exc
        if not symbols:
            raise ValueError("allowed elements: give at least one element")
        self.allowed = frozenset(symbols)

    def reasons(self, candidates, index, context):
        out = []
        for c in candidates:
            extra = sorted({el.symbol for el in c.structure.composition} - self.allowed)
            c.validity[self.name] = not extra
            out.append(
                f"contains {', '.join(extra)} (not in the allowed elements)" if extra else None
            )
        return out
