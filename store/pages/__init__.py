"""The store's pages for people: search (``/search``), a unit (``/units/{serial}``), a run
(``/runs/{id}``) and the runs (``/runs``), plus ``/units.csv`` (a search as CSV).

The pages are static files shipped in the package (``static/``): HTML shells, one stylesheet
and scripts that read the same JSON API as any other client and render it with textContent,
so no data is ever parsed as HTML. Served under a strict CSP (no inline script or style,
``default-src 'self'``), they work offline and hold nothing secret, which is why the shells
are open even when ``http.read_token`` guards reads: a browser cannot send a bearer token
when it navigates, so the page asks for the token and sends it with its own requests.
"""

from __future__ import annotations

from store.pages.serve import install

__all__ = ["install"]
