"""The page script and style sheet, served from memory; plotly.js comes from the plotly wheel.

Why this small script: a page is rendered complete by the server; the script draws its
figures and then polls the page's JSON twin every ``--refresh`` seconds, writing fields and
table cells with ``textContent`` (never as HTML) and redrawing a figure only when its data
changed, so a rotated 3D view is not reset by a refresh. Nothing is loaded from the network
beyond the dashboard itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

JS = r"""
(function () {
  "use strict";
  var body = document.body;
  var api = body.getAttribute("data-api");
  var refresh = parseFloat(body.getAttribute("data-refresh") || "5");
  var live = document.getElementById("live");
  var shown = {};
  var config = {responsive: true, displaylogo: false};

  function drawFigures(figures) {
    if (!window.Plotly) { return; }
    document.querySelectorAll("[data-figure]").forEach(function (el) {
      var name = el.getAttribute("data-figure");
      var fig = figures[name];
      if (!fig) { return; }
      var text = JSON.stringify(fig);
      if (shown["g:" + name] === text) { return; }
      shown["g:" + name] = text;
      Plotly.react(el, fig.data, fig.layout, config);
    });
  }

  function setFields(fields) {
    document.querySelectorAll("[data-field]").forEach(function (el) {
      var value = fields[el.getAttribute("data-field")];
      if (value !== undefined && el.textContent !== value) { el.textContent = value; }
    });
  }

  function setTables(tables) {
    document.querySelectorAll("table[data-table]").forEach(function (table) {
      var name = table.getAttribute("data-table");
      var spec = tables[name];
      if (!spec) { return; }
      var text = JSON.stringify(spec.rows);
      if (shown["t:" + name] === text) { return; }
      shown["t:" + name] = text;
      var frag = document.createDocumentFragment();
      var columns = table.tHead.rows[0].cells.length;
      if (!spec.rows.length) {
        var tr = document.createElement("tr");
        tr.className = "empty";
        var td = document.createElement("td");
        td.colSpan = columns;
        td.textContent = table.getAttribute("data-empty");
        tr.appendChild(td);
        frag.appendChild(tr);
      }
      spec.rows.forEach(function (row) {
        var tr = document.createElement("tr");
        row.forEach(function (c) {
          var td = document.createElement("td");
          if (c.cls) { td.className = c.cls; }
          if (c.href && c.href.charAt(0) === "/" && c.href.charAt(1) !== "/") {
            var a = document.createElement("a");
            a.href = c.href;
            a.textContent = c.t;
            td.appendChild(a);
          } else {
            td.textContent = c.t;
          }
          tr.appendChild(td);
        });
        frag.appendChild(tr);
      });
      table.tBodies[0].replaceChildren(frag);
    });
  }

  function apply(payload) {
    setFields(payload.fields || {});
    setTables(payload.tables || {});
    drawFigures(payload.figures || {});
  }

  function poll() {
    fetch(api, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(function (payload) {
      apply(payload);
      var n = parseInt(body.getAttribute("data-updates") || "0", 10) + 1;
      body.setAttribute("data-updates", String(n));
      if (live) { live.textContent = "updated " + new Date().toLocaleTimeString(); live.className = "live ok"; }
    }).catch(function (e) {
      if (live) { live.textContent = "refresh failed (" + e.message + ")"; live.className = "live bad"; }
    }).finally(function () {
      window.setTimeout(poll, refresh * 1000);
    });
  }

  // shown[] starts with what the server rendered, so only the figures are drawn now
  var initial = JSON.parse(document.getElementById("payload").textContent);
  Object.keys(initial.tables || {}).forEach(function (name) {
    shown["t:" + name] = JSON.stringify(initial.tables[name].rows);
  });
  drawFigures(initial.figures || {});
  body.setAttribute("data-ready", "1");
  if (api && refresh > 0) { window.setTimeout(poll, refresh * 1000); }
})();
"""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222;
  background: #f6f7f9; font-size: 14px; }
header { display: flex; gap: 1.5em; align-items: center; padding: 0.5em 1.2em; background: #1f2a44;
  color: #fff; }
header a { color: #cfe0ff; margin-right: 1em; text-decoration: none; }
header a:hover { text-decoration: underline; }
.brand { font-weight: 700; letter-spacing: 0.03em; }
.live { margin-left: auto; font-size: 12px; color: #9fb3d9; }
.live.bad { color: #ffb3b3; }
main { padding: 0.8em 1.2em 3em; }
h1 { font-size: 20px; margin: 0.3em 0 0.6em; word-break: break-all; }
h2 { font-size: 15px; margin: 1.2em 0 0.4em; color: #1f2a44; }
.cards { display: flex; flex-wrap: wrap; gap: 0.5em; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 0.4em 0.8em;
  min-width: 7em; }
.card .label { font-size: 11px; color: #667; text-transform: uppercase; }
.card .value { font-size: 17px; font-weight: 600; word-break: break-all; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border: 1px solid #dde1e8; padding: 3px 7px; text-align: left; white-space: nowrap; }
th { background: #eef1f6; }
th a { color: #1f2a44; }
tr.empty td { color: #888; font-style: italic; }
.figure { display: inline-block; width: 48%; min-width: 420px; vertical-align: top;
  background: #fff; border: 1px solid #dde1e8; margin: 0.4em 0.4em 0 0; }
.figure.wide { width: 97%; }
.row { display: flex; gap: 0.5em; flex-wrap: wrap; }
.row .figure { flex: 1; }
pre { background: #fff; border: 1px solid #dde1e8; padding: 0.6em; max-height: 22em;
  overflow: auto; font-size: 12px; }
.links a, .pager a { margin-right: 1em; }
form.filters { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: center; background: #fff;
  border: 1px solid #dde1e8; padding: 0.5em; }
form.filters fieldset { border: none; padding: 0; margin: 0; }
form.filters legend { float: left; margin-right: 0.5em; color: #667; }
.st-rejected, .st-failed, .state-failed { color: #b3261e; }
.st-completed, .st-deployed, .state-done { color: #1b7f3b; }
.st-running, .state-running { color: #1a5fb4; }
"""


@lru_cache(maxsize=1)
def plotly_js() -> Path:
    """plotly.js as the plotly wheel ships it (``plotly/package_data/plotly.min.js``)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found at {path}; reinstall plotly")
    return path
