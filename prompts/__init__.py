"""cfx.prompts: explanations (stage 3 of the pipeline).

- :class:`EvidenceReporter` (offline default): infers the cause of low competency from a
  :class:`cfx.evidence.Evidence` record and explains it with the numbers behind it;
- :class:`TransformersReporter`: a local vision-language model through transformers (chat template, batched);
- :class:`OpenAIReporter`: an OpenAI-compatible chat endpoint, with retries and fallback to the evidence reporter;
- :func:`render_prompt` (Jinja2 templates of §A5: free-form with and without a counterfactual, multiple choice,
  grounded) and :func:`side_by_side`;
- :func:`cause_from_text` / :func:`score_explanations`: the stricter keyword filter and six-cause accuracy.

Installed as ``cfx.prompts``; Jinja2 templates in ``templates/`` ship as package data.
"""

from .local_vlm import TransformersReporter
from .remote import EndpointError, OpenAIReporter
from .reporters import MAX_TEXT, EvidenceReporter, Explanation
from .scoring import CAUSE_KEYWORDS, cause_from_text, score_explanations
from .templates import PROMPTS, evidence_facts, render_prompt, side_by_side

__all__ = ["CAUSE_KEYWORDS", "MAX_TEXT", "PROMPTS", "EndpointError", "EvidenceReporter", "Explanation",
           "OpenAIReporter", "TransformersReporter", "cause_from_text", "evidence_facts", "render_prompt", "score_explanations",
           "side_by_side"]
