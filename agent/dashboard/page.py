"""What a page is: fields, tables and figures with ids, laid out in sections.

Why one shape for every page: the server renders it to HTML (``agent.dashboard.render``, with
autoescaping, so a ``<script>`` in a campaign name or formula is text) and the same payload,
as JSON, is what the page's script polls to update itself without a reload - fields by key,
tables by name, figures by name. Values are formatted here, once, so the HTML, the JSON and
the tests agree on every digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    value = float(value)
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def cell(value: Any, href: str | None = None, digits: int = 3, cls: str | None = None) -> dict:
    out: dict[str, Any] = {"t": fmt(value, digits)}
    if href:
        out["href"] = href
    if cls:
        out["cls"] = cls
    return out


def url(*parts: str, query: list[tuple[str, str]] | dict | None = None) -> str:
    path = "/" + "/".join(quote(str(p), safe="") for p in parts)
    if query:
        path += "?" + urlencode(query)
    return path


@dataclass
class Page:
    title: str
    api: str | None = None  # the JSON twin the page polls
    nav: list[tuple[str, str]] = field(default_factory=list)  # (label, href)
    sections: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: int = 200

    def cards(self, heading: str | None, items: list[tuple[str, str, Any]]) -> None:
        """A row of labelled numbers: (key, label, value)."""
        for key, _, value in items:
            self.fields[key] = value if isinstance(value, str) else fmt(value)
        self.sections.append(
            {"kind": "cards", "heading": heading, "items": [(k, label) for k, label, _ in items]}
        )

    def table(
        self,
        name: str,
        heading: str | None,
        columns: list[str],
        rows: list[list[dict]],
        sort_links: list[str | None] | None = None,
        empty: str = "none",
    ) -> None:
        self.tables[name] = {"rows": rows}
        self.sections.append(
            {
                "kind": "table",
                "name": name,
                "heading": heading,
                "columns": columns,
                "sort_links": sort_links or [None] * len(columns),
                "empty": empty,
            }
        )

    def figure(self, name: str, figure: dict[str, Any], wide: bool = False) -> None:
        self.figures[name] = figure
        self.sections.append({"kind": "figure", "name": name, "wide": wide})

    def text(self, text: str, heading: str | None = None, pre: bool = False) -> None:
        self.sections.append({"kind": "pre" if pre else "text", "heading": heading, "text": text})

    def links(self, heading: str | None, items: list[tuple[str, str]]) -> None:
        self.sections.append({"kind": "links", "heading": heading, "items": items})

    def add(self, section: dict[str, Any]) -> None:
        self.sections.append(section)

    def payload(self) -> dict[str, Any]:
        return {"fields": self.fields, "tables": self.tables, "figures": self.figures}
