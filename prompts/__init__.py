"""cfx.prompts: explanations (stage 3 of the pipeline).

Every reporter has one verb, ``explain(evidence, image=None, counterfactual=None) -> Explanation``, and
``explain_many`` for several records (:class:`Reporter`); :data:`REPORTERS` registers them by name and
:func:`make_reporter` builds one from a spec.

- :class:`EvidenceReporter` (``evidence``, the offline default): infers the cause of low competency from a
  :class:`cfx.evidence.Evidence` record and explains it with the numbers behind it;
- :class:`TransformersReporter` (``transformers:PATH``): a local vision-language model (chat template, batched);
- :class:`OpenAIReporter` (``openai:URL``): an OpenAI-compatible chat endpoint, with retries and fallback to the
  evidence reporter;
- :func:`render_prompt` (Jinja2 templates: free-form with and without a counterfactual, multiple choice, grounded)
  and :func:`side_by_side`;
- :func:`cause_from_text` / :func:`score_explanations`: the stricter keyword filter and the cause accuracy.

Installed as ``cfx.prompts``; Jinja2 templates in ``templates/`` ship as package data.
"""

from .local_vlm import TransformersReporter
from .registry import REPORTERS, make_reporter, reporter_name
from .remote import EndpointError, OpenAIReporter
from .reporters import MAX_TEXT, EvidenceReporter, Explanation, Reporter
from .scoring import CAUSE_KEYWORDS, cause_from_text, score_explanations
from .templates import PROMPTS, evidence_facts, render_prompt, side_by_side

__all__ = ["CAUSE_KEYWORDS", "MAX_TEXT", "PROMPTS", "REPORTERS", "EndpointError", "EvidenceReporter", "Explanation",
           "OpenAIReporter", "Reporter", "TransformersReporter", "cause_from_text", "evidence_facts", "make_reporter",
           "render_prompt", "reporter_name", "score_explanations", "side_by_side"]
