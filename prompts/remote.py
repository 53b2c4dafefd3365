"""A reporter that asks an OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server, OpenAI).

Sends the prompt and the side-by-side image (base64 PNG), retries timeouts, connection errors, HTTP 429 and 5xx
with exponential backoff, and falls back to the offline :class:`~cfx.prompts.EvidenceReporter` when the endpoint
still fails; the explanation records the back-end that answered and why a fallback happened. Responses are cached
by a hash of (back-end, model, prompt, image bytes). The answer is untrusted data: length-capped, read for a cause
with the keyword filter, never executed or rendered as markup.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from torch import Tensor

from cfx.evidence import Evidence

from .reporters import MAX_TEXT, EvidenceReporter, Explanation, Reporter
from .scoring import cause_from_text
from .templates import render_prompt, side_by_side

__all__ = ["EndpointError", "OpenAIReporter"]


class EndpointError(RuntimeError):
    """The endpoint failed after all retries; the message says how."""


class OpenAIReporter(Reporter):
    """Explanations from an OpenAI-compatible endpoint.

    ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``) and ``model`` come from the arguments or the environment
    (``CFX_OPENAI_BASE_URL``, ``CFX_OPENAI_MODEL``); the key from ``api_key``, ``CFX_OPENAI_API_KEY`` or
    ``OPENAI_API_KEY`` (optional for local servers).
    """

    backend = "openai"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 dataset: str = "I trained a classifier on a set of images.", prompt: str = "grounded",
                 timeout: float = 30.0, retries: int = 2, backoff: float = 0.5, max_tokens: int = 100,
                 fallback: EvidenceReporter | None = None):
        self.base_url = (base_url or os.environ.get("CFX_OPENAI_BASE_URL") or "").rstrip("/")
        self.model = model or os.environ.get("CFX_OPENAI_MODEL") or ""
        if not self.base_url or not self.model:
            raise ValueError("the OpenAI-compatible reporter needs base_url and model (or CFX_OPENAI_BASE_URL and "
                             "CFX_OPENAI_MODEL)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        self.api_key = api_key or os.environ.get("CFX_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.dataset, self.prompt, self.timeout = dataset, prompt, timeout
        self.retries, self.backoff, self.max_tokens = retries, backoff, max_tokens
        self.fallback = fallback or EvidenceReporter()
        self.cache: dict[str, Explanation] = {}

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(f"{self.base_url}/chat/completions", data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read(1_000_000)
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} from {self.base_url}"
                if exc.code == 429 or exc.code >= 500:
                    continue
                raise EndpointError(f"{last}: {exc.read(300).decode(errors='replace')}") from None
            except (socket.timeout, TimeoutError):
                last = f"no answer from {self.base_url} within {self.timeout} s"
                continue
            except urllib.error.URLError as exc:
                last = f"cannot reach {self.base_url}: {exc.reason}"
                continue
            try:
                return json.loads(body)
            except json.JSONDecodeError:
                raise EndpointError(f"{self.base_url} answered with something that is not JSON") from None
        raise EndpointError(f"{last} (after {self.retries + 1} attempts)")

    def explain(self, evidence: Evidence, image: Tensor | None = None,
                counterfactual: Tensor | None = None) -> Explanation:
        """Ask the endpoint about one record (with the original and its counterfactual side by side when given)."""
        kind = self.prompt if counterfactual is not None or self.prompt == "free_form" else "free_form"
        prompt = render_prompt(kind, self.dataset, evidence)
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        png = b""
        if image is not None:
            picture = side_by_side(image, counterfactual)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            png = buffer.getvalue()
            content.append({"type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}})
        key = hashlib.sha256(b"|".join([self.backend.encode(), self.model.encode(), prompt.encode(), png])).hexdigest()
        if key in self.cache:
            return self.cache[key]
        payload = {"model": self.model, "messages": [{"role": "user", "content": content}],
                   "max_tokens": self.max_tokens, "temperature": 0}
        try:
            answer = self._post(payload)
            text = answer["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise EndpointError("the answer has no text content")
        except (EndpointError, KeyError, IndexError, TypeError) as exc:
            reason = str(exc) if isinstance(exc, EndpointError) else f"malformed answer ({type(exc).__name__})"
            fallback = self.fallback.explain(evidence)
            fallback.backend = f"{fallback.backend} (fallback: {self.backend} failed: {reason})"[:300]
            fallback.prompt = prompt
            return fallback
        text = text[:MAX_TEXT]
        cause = cause_from_text(text)
        result = Explanation(text, cause, 0.5 if cause != "other" else 0.0, f"{self.backend}:{self.model}", prompt,
                             {"id": answer.get("id"), "usage": answer.get("usage")})
        self.cache[key] = result
        return result
