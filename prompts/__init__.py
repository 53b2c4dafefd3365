"""cfx.prompts: prompt templates and reporter back-ends (stage 3 of the pipeline).

Installed as ``cfx.prompts``; Jinja2 templates in ``templates/`` ship as package data.
"""

__all__: list[str] = []
