"""cfx.reports: self-contained HTML review and audit reports (stage 4 of the pipeline).

- :func:`render_review`: ``report.html`` from a run store (``cfx explain`` writes it; ``cfx report`` re-renders it);
- :func:`render_audit`: ``audit.html`` from an audit result (``cfx audit`` writes it).

Installed as ``cfx.reports``; Jinja2 templates in ``templates/`` ship as package data.
"""

from .audit import render_audit
from .review import render_review, review_context

__all__ = ["render_audit", "render_review", "review_context"]
