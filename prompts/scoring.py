"""Cause scoring: assign one of the known causes (or "other") to an explanation and measure accuracy.

A reporter's own cause label is used when it has one. Free text (from an LLM) is read with a keyword filter in
the spirit of the explanation study's filter (see ``docs/methods.md#evidence-and-explanations``), made stricter:

- keywords match on word boundaries, case-insensitively (``dark`` does not match ``darkness``'s neighbours like
  ``bookmark``; stems are listed explicitly);
- a keyword preceded within three words by a negation (not, no, without, isn't, doesn't, rather than, …) does not
  count;
- the text's cause is the cause named first, **only if** no other cause is named (non-negated); a text that names
  several causes is "other" (ambiguous).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterable, Sequence

from cfx.core.shifts import SHIFTS

__all__ = ["CAUSE_KEYWORDS", "cause_from_text", "score_explanations"]

#: Words that name each cause, from the shifts' declarations (:mod:`cfx.core.shifts`).
CAUSE_KEYWORDS: dict[str, tuple[str, ...]] = {shift.name: shift.keywords for shift in SHIFTS.values()}
_NEGATIONS = r"(?:not|no|without|isn't|isnt|aren't|doesn't|don't|never|nor|rather than|instead of|neither)"


def _mentions(text: str) -> list[tuple[int, str]]:
    """(position, cause) of every non-negated keyword match."""
    found = []
    lower = text.lower()
    for cause, words in CAUSE_KEYWORDS.items():
        for w in words:
            for m in re.finditer(r"(?<![\w-])" + re.escape(w) + r"(?![\w-])", lower):
                before = lower[max(0, m.start() - 40):m.start()]
                if re.search(_NEGATIONS + r"(?:\W+\w+){0,2}\W*$", before):
                    continue
                found.append((m.start(), cause))
    return sorted(found)


def cause_from_text(text: str) -> str:
    """The cause a free-text explanation names, or "other" when it names none or several (see module doc)."""
    mentions = _mentions(str(text))
    causes = {c for _, c in mentions}
    if len(causes) != 1:
        return "other"
    return mentions[0][1]


def score_explanations(explanations: Iterable[Any], true_causes: Sequence[str]) -> dict[str, Any]:
    """Accuracy per true cause and the unweighted mean over causes.

    ``explanations``: :class:`~cfx.prompts.Explanation` objects (their ``cause`` is used), dicts with a ``cause``,
    or plain strings (read with :func:`cause_from_text`).
    """
    predicted = []
    for e in explanations:
        if isinstance(e, str):
            predicted.append(cause_from_text(e))
        elif isinstance(e, dict):
            predicted.append(e.get("cause") or cause_from_text(e.get("text", "")))
        else:
            predicted.append(getattr(e, "cause", None) or cause_from_text(getattr(e, "text", "")))
    if len(predicted) != len(true_causes):
        raise ValueError(f"{len(predicted)} explanations for {len(true_causes)} true causes")
    hits: dict[str, list[bool]] = defaultdict(list)
    for p, t in zip(predicted, true_causes):
        hits[t].append(p == t)
    per_cause = {c: sum(v) / len(v) for c, v in sorted(hits.items())}
    return {"per_cause": per_cause, "counts": {c: len(v) for c, v in sorted(hits.items())},
            "mean": sum(per_cause.values()) / len(per_cause) if per_cause else float("nan"),
            "predicted": predicted}
