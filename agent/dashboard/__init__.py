"""The campaign dashboard: `crystalloop dashboard`, a read-only web UI over the store.

Pages (each with a JSON twin under ``/api`` that the page polls to update itself): campaigns,
one campaign (plots over cycles, funnel, parity, best vs DFT spent, convex hull, yield per
generator), its candidates table (filter, sort, paginate, CSV/CIF), one candidate (3D viewer
of the generated and the relaxed crystal, provenance, predictions, verdicts, DFT attempts,
events), the DFT queue, the model versions, and the policy benchmark. Modules: ``source``
(read-only store), ``digest`` (the candidates table in memory), ``summary``/``table``/
``detail`` (data), ``figures``/``hull_plot``/``viewer`` (plots), ``page``/``render``/
``assets`` (HTML), ``views``/``views_more`` (pages), ``security``, ``app``, ``cli``.

Importing this package imports nothing else, so `crystalloop --help` stays fast; the web
stack (starlette, uvicorn) loads when the dashboard starts (``agent.dashboard.app``).
"""
