"""cfx.prompts: explanations (stage 3 of the pipeline).

- :class:`EvidenceReporter` (offline default): infers the cause of low competency from a
  :class:`cfx.evidence.Evidence` record and explains it with the numbers behind it;
- :func:`cause_from_text` / :func:`score_explanations`: the stricter keyword filter and six-cause accuracy.

Installed as ``cfx.prompts``; Jinja2 templates in ``templates/`` ship as package data.
"""

from .reporters import MAX_TEXT, EvidenceReporter, Explanation
from .scoring import CAUSE_KEYWORDS, cause_from_text, score_explanations

__all__ = ["CAUSE_KEYWORDS", "MAX_TEXT", "EvidenceReporter", "Explanation", "cause_from_text", "score_explanations"]
