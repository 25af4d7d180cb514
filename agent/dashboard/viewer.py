"""The 3D crystal viewer: a plotly.js 3D scene (atoms as spheres, the unit cell as edges).

Why our own scene and not Crystal Toolkit, 3Dmol.js or NGL: the dashboard must work without
internet, and plotly.js (shipped inside the ``plotly`` wheel, already used for every plot)
renders a rotatable, zoomable WebGL scene with hover labels. A unit cell has a few to a few
dozen atoms, so markers sized by atomic radius and coloured with Jmol's element colours (the
scheme pymatgen ships) are enough; atoms on a cell face or edge are repeated on the opposite
side, as crystal viewers do, so the cell looks whole.
"""

from __future__ import annotations

import functools
import html
import itertools
from pathlib import Path
from typing import Any

import numpy as np

FACE_TOL = 0.02  # fractional: an atom this close to a face is drawn on the opposite one too


@functools.lru_cache(maxsize=1)
def _jmol_colours() -> dict[str, str]:
    import pymatgen.vis
    import yaml

    path = Path(pymatgen.vis.__file__).with_name("ElementColorSchemes.yaml")
    scheme = yaml.safe_load(path.read_text())["Jmol"]
    return {el: "#" + "".join(f"{int(c):02x}" for c in rgb) for el, rgb in scheme.items()}


def _images(frac: np.ndarray) -> list[np.ndarray]:
    """The fractional positions at which one site is drawn (itself, plus face images)."""
    f = frac % 1.0
    shifts = []
    for axis in range(3):
        options = [0.0]
        if f[axis] < FACE_TOL:
            options.append(1.0)
        elif f[axis] > 1 - FACE_TOL:
            options.append(-1.0)
        shifts.append(options)
    return [f + np.array(s) for s in itertools.product(*shifts)]


def structure_figure(structure: dict[str, Any], title: str) -> dict[str, Any]:
    """A plotly figure (as JSON-ready dict) of a pymatgen ``Structure.as_dict()``."""
    from pymatgen.core import Element, Structure

    s = Structure.from_dict(structure)
    matrix = s.lattice.matrix
    colours = _jmol_colours()
    by_element: dict[str, dict[str, list]] = {}
    for index, site in enumerate(s):
        main = max(site.species.items(), key=lambda kv: kv[1])[0]  # disordered: the majority
        symbol = getattr(main, "symbol", str(main))
        element = Element(symbol) if Element.is_valid_symbol(symbol) else None
        radius = float(element.atomic_radius or 1.0) if element else 1.0
        group = by_element.setdefault(symbol, {"x": [], "y": [], "z": [], "text": [], "r": []})
        for frac in _images(np.asarray(site.frac_coords)):
            x, y, z = frac @ matrix
            group["x"].append(round(float(x), 4))
            group["y"].append(round(float(y), 4))
            group["z"].append(round(float(z), 4))
            group["text"].append(
                f"{html.escape(symbol)} #{index} ({frac[0]:.3f}, {frac[1]:.3f}, {frac[2]:.3f})"
            )
            group["r"].append(radius)
    traces: list[dict[str, Any]] = []
    for symbol, g in sorted(by_element.items()):
        traces.append(
            {
                "type": "scatter3d",
                "mode": "markers",
                "name": html.escape(symbol),
                "x": g["x"],
                "y": g["y"],
                "z": g["z"],
                "text": g["text"],
                "hoverinfo": "text",
                "marker": {
                    "size": [round(14 * r, 1) for r in g["r"]],
                    "color": colours.get(symbol, "#888888"),
                    "line": {"width": 0.5, "color": "#333"},
                    "opacity": 1.0,
                },
            }
        )
    traces.append(_cell_edges(matrix))
    a, b, c = s.lattice.abc
    return {
        "data": traces,
        "layout": {
            "title": {"text": html.escape(title), "font": {"size": 13}},
            "margin": {"l": 0, "r": 0, "t": 30, "b": 0},
            "height": 380,
            "showlegend": True,
            "legend": {"orientation": "h"},
            "scene": {
                "aspectmode": "data",
                "xaxis": {"title": {"text": "x (Å)"}},
                "yaxis": {"title": {"text": "y (Å)"}},
                "zaxis": {"title": {"text": "z (Å)"}},
            },
            "annotations": [],
            "meta": {
                "formula": s.composition.reduced_formula,
                "nsites": len(s),
                "abc": [round(a, 4), round(b, 4), round(c, 4)],
                "volume": round(s.volume, 4),
            },
        },
    }


def _cell_edges(matrix: np.ndarray) -> dict[str, Any]:
    corners = {k: np.array(k) @ matrix for k in itertools.product((0, 1), repeat=3)}
    xs: list[float | None] = []
    ys: list[float | None] = []
    zs: list[float | None] = []
    for k1, k2 in itertools.combinations(corners, 2):
        if sum(abs(a - b) for a, b in zip(k1, k2, strict=True)) == 1:  # an edge of the cube
            for point in (corners[k1], corners[k2]):
                xs.append(round(float(point[0]), 4))
                ys.append(round(float(point[1]), 4))
                zs.append(round(float(point[2]), 4))
            xs.append(None)
            ys.append(None)
            zs.append(None)
    return {
        "type": "scatter3d",
        "mode": "lines",
        "name": "cell",
        "x": xs,
        "y": ys,
        "z": zs,
        "hoverinfo": "skip",
        "line": {"color": "#444", "width": 3},
    }
