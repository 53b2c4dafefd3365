"""Reporters by name: ``evidence``, ``transformers:PATH``, ``openai:URL``; plugins register more in :data:`REPORTERS`.

:func:`make_reporter` turns a spec string into a reporter; a reporter object passes through. Every reporter has
the same verbs (:class:`~cfx.prompts.reporters.Reporter`): ``explain(evidence, image=None, counterfactual=None)``
and ``explain_many(evidence, images=None, counterfactuals=None)``.
"""

from __future__ import annotations

from typing import Any, Callable

from cfx.core.registry import Registry

from .local_vlm import TransformersReporter
from .remote import OpenAIReporter
from .reporters import EvidenceReporter, Reporter

__all__ = ["REPORTERS", "make_reporter", "reporter_name"]

#: Reporter kinds: ``KIND[:TARGET]`` → ``factory(target_or_None, options) -> Reporter``.
REPORTERS: Registry[Callable[[str | None, dict[str, Any]], Reporter]] = Registry("reporter")


def _evidence(target: str | None, options: dict[str, Any]) -> Reporter:
    return EvidenceReporter()


def _transformers(target: str | None, options: dict[str, Any]) -> Reporter:
    if not target:
        raise ValueError("give the local model folder: --reporter transformers:PATH")
    return TransformersReporter(target, **options)


def _openai(target: str | None, options: dict[str, Any]) -> Reporter:
    return OpenAIReporter(base_url=target or None, **options)


REPORTERS.register("evidence", _evidence)
REPORTERS.register("transformers", _transformers)
REPORTERS.register("openai", _openai)


def make_reporter(spec: Any = "evidence", dataset: str | None = None) -> Reporter:
    """A reporter from a spec: ``evidence`` (offline default), ``transformers:PATH`` (a local multimodal chat model)
    or ``openai:URL`` (an OpenAI-compatible endpoint; model from ``CFX_OPENAI_MODEL``). Objects with an ``explain``
    method are returned as they are."""
    if hasattr(spec, "explain"):
        return spec
    text = str(spec)
    kind, sep, target = text.partition(":")
    factory = REPORTERS.find(kind)
    if factory is None:
        raise ValueError(f"unknown reporter {text!r}; use {', '.join(REPORTERS)} (e.g. evidence, "
                         "transformers:PATH or openai:URL)")
    options = {"dataset": dataset} if dataset and kind != "evidence" else {}
    return factory(target if sep else None, options)


def reporter_name(reporter: Any) -> str:
    """``backend`` or ``backend:model``: what the run store and the report record as the reporter."""
    backend = getattr(reporter, "backend", type(reporter).__name__)
    model = getattr(reporter, "model", None)
    return f"{backend}:{model}" if isinstance(model, str) and model else str(backend)
