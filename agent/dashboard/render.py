"""A ``Page`` as HTML: one autoescaping Jinja2 template for every page.

Why one template: every page is sections of cards, tables, figures and text (``page.Page``),
so one layout renders them all, and with autoescaping on, every value from the store reaches
the browser as text. The page's script (``assets.JS``) finds fields, tables and figures by the
same keys in the JSON twin and updates them in place.
"""

from __future__ import annotations

import json
import math

import jinja2
from markupsafe import Markup

from agent.dashboard.page import Page

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ page.title }} - crystalloop</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/plotly.min.js"></script>
<script src="/static/dashboard.js" defer></script>
</head>
<body data-api="{{ page.api or '' }}" data-refresh="{{ refresh }}">
<header><span class="brand">crystalloop</span>
<nav>{% for label, href in page.nav %}<a href="{{ href }}">{{ label }}</a>{% endfor %}</nav>
<span class="live" id="live" title="time of the last refresh">{% if page.api %}live{% endif %}</span>
</header>
<main>
<h1 id="title">{{ page.title }}</h1>
{% for s in page.sections %}
{% if s.kind == "cards" %}
{% if s.heading %}<h2>{{ s.heading }}</h2>{% endif %}
<div class="cards">{% for key, label in s["items"] %}
<div class="card"><div class="label">{{ label }}</div><div class="value" data-field="{{ key }}" id="f-{{ key }}">{{ page.fields[key] }}</div></div>
{% endfor %}</div>
{% elif s.kind == "table" %}
{% if s.heading %}<h2>{{ s.heading }}</h2>{% endif %}
<div class="tablewrap"><table data-table="{{ s.name }}" id="t-{{ s.name }}" data-empty="{{ s.empty }}">
<thead><tr>{% for col in s.columns %}<th>{% if s.sort_links[loop.index0] %}<a href="{{ s.sort_links[loop.index0] }}">{{ col }}</a>{% else %}{{ col }}{% endif %}</th>{% endfor %}</tr></thead>
<tbody>{% for row in page.tables[s.name].rows %}<tr>{% for c in row %}<td{% if c.cls %} class="{{ c.cls }}"{% endif %}>{% if c.href %}<a href="{{ c.href }}">{{ c.t }}</a>{% else %}{{ c.t }}{% endif %}</td>{% endfor %}</tr>
{% else %}<tr class="empty"><td colspan="{{ s.columns|length }}">{{ s.empty }}</td></tr>{% endfor %}</tbody>
</table></div>
{% elif s.kind == "figure" %}
<div class="figure{% if s.wide %} wide{% endif %}" data-figure="{{ s.name }}" id="g-{{ s.name }}"></div>
{% elif s.kind == "row" %}<div class="row">
{% elif s.kind == "endrow" %}</div>
{% elif s.kind == "text" %}
{% if s.heading %}<h2>{{ s.heading }}</h2>{% endif %}<p>{{ s.text }}</p>
{% elif s.kind == "pre" %}
{% if s.heading %}<h2>{{ s.heading }}</h2>{% endif %}<pre>{{ s.text }}</pre>
{% elif s.kind == "links" %}
{% if s.heading %}<h2>{{ s.heading }}</h2>{% endif %}
<p class="links">{% for label, href in s["items"] %}<a href="{{ href }}">{{ label }}</a>{% endfor %}</p>
{% elif s.kind == "pager" %}
<p class="pager">{% for label, href in s["items"] %}<a href="{{ href }}" id="pager-{{ label }}">{{ label }}</a>{% endfor %}</p>
{% elif s.kind == "filters" %}
<form class="filters" method="get" action="{{ s.action }}">
<fieldset><legend>status</legend>{% for st in s.statuses %}<label><input type="checkbox" name="status" value="{{ st }}"{% if st in s.chosen %} checked{% endif %}>{{ st }}</label>{% endfor %}</fieldset>
<label>generator <select name="generator"><option value="">any</option>{% for g in s.generators %}<option{% if g == s.q.generator %} selected{% endif %}>{{ g }}</option>{% endfor %}</select></label>
<label>cycle <input name="cycle" size="4" value="{{ s.q.cycle if s.q.cycle is not none else '' }}"></label>
<label>formula contains <input name="formula" size="10" value="{{ s.q.formula or '' }}"></label>
<label>rejected by <select name="reason"><option value="">any</option>{% for r in s.reasons %}<option{% if r == s.q.reason %} selected{% endif %}>{{ r }}</option>{% endfor %}</select></label>
<input type="hidden" name="sort" value="{{ s.q.sort }}"><input type="hidden" name="dir" value="{{ 'desc' if s.q.descending else 'asc' }}">
<label>per page <input name="per_page" size="3" value="{{ s.q.per_page }}"></label>
<button type="submit">apply</button>
</form>
<p class="summary"><span data-field="total" id="f-total">{{ page.fields.total }}</span> of <span data-field="all" id="f-all">{{ page.fields.all }}</span> candidates match; <span data-field="page" id="f-page">{{ page.fields.page }}</span>;
sorted by {{ s.q.sort }} ({{ 'descending' if s.q.descending else 'ascending' }}).
Download: <a href="{{ s.csv }}" id="download-csv">CSV (all matches)</a>, <a href="{{ s.cif }}" id="download-cif">CIF (this page, zip)</a></p>
{% endif %}
{% endfor %}
</main>
<script type="application/json" id="payload">{{ payload }}</script>
</body></html>
"""

_env = jinja2.Environment(autoescape=True)
_template = _env.from_string(TEMPLATE)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(value: object) -> str:
    """JSON for the browser: NaN and infinities (not JSON) become null."""
    try:
        return json.dumps(value, default=str, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(value), default=str, allow_nan=False, separators=(",", ":"))


def render(page: Page, refresh: float) -> str:
    # the payload sits in a JSON script block: escape "<" so no "</script>" can close it
    payload = to_json(page.payload()).replace("<", "\\u003c")
    return _template.render(page=page, refresh=refresh, payload=Markup(payload))
