"""cfx.reports: self-contained HTML review and audit reports (stage 4 of the pipeline).

- :func:`render_review`: ``report.html`` from a run store (``cfx explain`` writes it; ``cfx report`` re-renders it);
- :func:`render_audit`: ``audit.html`` from an audit result (``cfx audit`` writes it);
- :func:`write_summary`: ``summary.json`` of a run, from the run store alone.

Installed as ``cfx.reports``; Jinja2 templates in ``templates/`` ship as package data.
"""

from .audit import render_audit
from .review import render_review, review_context
from .summary import write_summary

__all__ = ["render_audit", "render_review", "review_context", "write_summary"]
