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
    if options:
        raise ValueError(f"the evidence reporter takes no options (got {', '.join(sorted(options))}): they are for "
                         "openai:URL")
    return EvidenceReporter()


def _transformers(target: str | None, options: dict[str, Any]) -> Reporter:
    if not target:
        raise ValueError("give the local model folder: --reporter transformers:PATH")
    unsupported = sorted(set(options) - {"dataset"})
    if unsupported:
        raise ValueError(f"the local model reporter does not take {', '.join(unsupported)} (options of openai:URL)")
    return TransformersReporter(target, **options)


def _openai(target: str | None, options: dict[str, Any]) -> Reporter:
    return OpenAIReporter(base_url=target or None, **options)


REPORTERS.register("evidence", _evidence)
REPORTERS.register("transformers", _transformers)
REPORTERS.register("openai", _openai)


def make_reporter(spec: Any = "evidence", dataset: str | None = None, options: dict[str, Any] | None = None
                  ) -> Reporter:
    """A reporter from a spec: ``evidence`` (offline default), ``transformers:PATH`` (a local multimodal chat model)
    or ``openai:URL`` (an OpenAI-compatible endpoint). ``options`` go to the back-end (for ``openai``: ``model``,
    ``timeout``, ``concurrency``, ``api_key_env``, ``breaker_threshold``, ``probe_interval``, ``retries``); options
    that are None are left out. Objects with an ``explain`` method are returned as they are."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if hasattr(spec, "explain"):
        if options:
            raise ValueError("reporter options apply to a reporter spec, not to a reporter object")
        return spec
    text = str(spec)
    kind, sep, target = text.partition(":")
    factory = REPORTERS.find(kind)
    if factory is None:
        raise ValueError(f"unknown reporter {text!r}; use {', '.join(REPORTERS)} (e.g. evidence, "
                         "transformers:PATH or openai:URL)")
    if dataset and kind != "evidence":
        options["dataset"] = dataset
    return factory(target if sep else None, options)


def reporter_name(reporter: Any) -> str:
    """``backend`` or ``backend:model``: what the run store and the report record as the reporter."""
    backend = getattr(reporter, "backend", type(reporter).__name__)
    model = getattr(reporter, "model", None)
    return f"{backend}:{model}" if isinstance(model, str) and model else str(backend)
