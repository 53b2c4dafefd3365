"""cfx.reports: self-contained HTML review and audit reports (stage 4 of the pipeline).

Installed as ``cfx.reports``; Jinja2 templates in ``templates/`` ship as package data.
"""

__all__: list[str] = []
