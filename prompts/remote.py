"""A reporter that asks an OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server, OpenAI).

Sends the prompt and the side-by-side image (base64 PNG), retries timeouts, connection errors, HTTP 429 and 5xx
with exponential backoff, and falls back to the offline :class:`~cfx.prompts.EvidenceReporter` when the endpoint
still fails; the explanation records the back-end that answered and why a fallback happened. ``explain_many`` sends
up to ``concurrency`` requests at once and hands each explanation over as it arrives. A :class:`CircuitBreaker`
stops calling an endpoint after ``breaker_threshold`` consecutive failed requests (every later sample falls back at
once) and sends one probe every ``probe_interval`` seconds, which closes it again when it succeeds: a dead endpoint
costs a few timeouts, not one per sample. Responses are cached
by a hash of (back-end, model, prompt, image bytes). The answer is untrusted data: length-capped, read for a cause
with the keyword filter, never executed or rendered as markup.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.client
import io
import json
import os
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from torch import Tensor

from cfx.evidence import Evidence

from .reporters import MAX_TEXT, EvidenceReporter, Explanation, Reporter
from .scoring import cause_from_text
from .templates import render_prompt, side_by_side

__all__ = ["CircuitBreaker", "EndpointError", "MAX_ANSWER_BYTES", "OpenAIReporter"]

#: The largest answer read from an endpoint (a chat completion of a few hundred tokens is a few kB).
MAX_ANSWER_BYTES = 8_000_000
#: The longest Retry-After honoured (seconds); a longer one is waited this long.
MAX_RETRY_AFTER = 60.0


class _TooLarge(Exception):
    """An answer over :data:`MAX_ANSWER_BYTES`."""


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date; 0 when absent or unreadable.
    Capped at :data:`MAX_RETRY_AFTER`."""
    if not value:
        return 0.0
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        if when is None:
            return 0.0
        seconds = when.timestamp() - time.time()
    return float(min(max(seconds, 0.0), MAX_RETRY_AFTER))


class EndpointError(RuntimeError):
    """The endpoint failed after all retries; the message says how."""


class CircuitBreaker:
    """Admission control for one endpoint, shared by every thread that calls it.

    - **Closed** (fewer than ``threshold`` consecutive failures): requests are admitted. Until the endpoint has
      answered once (or after a failure), at most ``threshold − failures`` are in flight, so an endpoint that is
      dead from the start receives exactly ``threshold`` requests; once it answers, up to ``slots``.
    - **Open** (``threshold`` consecutive failures): nothing is admitted (callers fall back at once) except one probe
      every ``probe_interval`` seconds; a successful probe closes the breaker.
    """

    def __init__(self, threshold: int = 5, probe_interval: float = 60.0, slots: int = 4,
                 clock: Callable[[], float] = time.monotonic):
        if threshold < 1 or slots < 1 or probe_interval <= 0:
            raise ValueError("threshold and slots must be at least 1 and probe_interval positive, got "
                             f"{threshold}, {slots}, {probe_interval}")
        self.threshold, self.probe_interval, self.slots, self.clock = threshold, probe_interval, slots, clock
        self.failures = self.in_flight = self.requests = self.probes = 0
        self.healthy, self.probing, self.opened_at = False, False, -math.inf
        self.last_error: str | None = None  # why the last failed request failed (said when the breaker is open)
        self._cond = threading.Condition()

    @property
    def open(self) -> bool:
        return self.failures >= self.threshold

    def acquire(self) -> bool:
        """Wait for a slot; True to send the request, False to fall back now (the breaker is open)."""
        with self._cond:
            while True:
                if self.open:
                    if not self.probing and self.clock() - self.opened_at >= self.probe_interval:
                        self.probing, self.opened_at = True, self.clock()
                        self.in_flight += 1
                        self.requests += 1
                        self.probes += 1
                        return True
                    return False
                limit = self.slots if self.healthy else min(self.slots, self.threshold - self.failures)
                if self.in_flight < limit:
                    self.in_flight += 1
                    self.requests += 1
                    return True
                self._cond.wait()

    def release(self, ok: bool) -> None:
        """Record how the admitted request ended."""
        with self._cond:
            self.in_flight -= 1
            if ok:
                self.failures, self.healthy = 0, True
            else:
                self.failures += 1
                self.healthy = False
                if self.failures == self.threshold:  # just opened: the first probe waits a full interval
                    self.opened_at = self.clock()
            self.probing = False
            self._cond.notify_all()


class OpenAIReporter(Reporter):
    """Explanations from an OpenAI-compatible endpoint.

    ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``) and ``model`` come from the arguments or the environment
    (``CFX_OPENAI_BASE_URL``, ``CFX_OPENAI_MODEL``). The key comes from the environment variable named by
    ``api_key_env`` (default: ``CFX_OPENAI_API_KEY``, then ``OPENAI_API_KEY``; optional for local servers) or from
    ``api_key``; it is sent only in the request header and never stored. ``timeout`` is per request (seconds);
    ``concurrency`` requests run at once in :meth:`explain_many`; the breaker opens after ``breaker_threshold``
    consecutive failed requests and probes every ``probe_interval`` seconds.
    """

    backend = "openai"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 dataset: str = "I trained a classifier on a set of images.", prompt: str = "grounded",
                 timeout: float = 20.0, retries: int = 2, backoff: float = 0.5, max_tokens: int = 100,
                 fallback: EvidenceReporter | None = None, concurrency: int = 4, breaker_threshold: int = 5,
                 probe_interval: float = 60.0, api_key_env: str | None = None):
        self.base_url = (base_url or os.environ.get("CFX_OPENAI_BASE_URL") or "").rstrip("/")
        self.model = model or os.environ.get("CFX_OPENAI_MODEL") or ""
        if not self.base_url or not self.model:
            raise ValueError("the OpenAI-compatible reporter needs an endpoint and a model: --reporter openai:URL "
                             "--reporter-model NAME (or CFX_OPENAI_BASE_URL and CFX_OPENAI_MODEL)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not timeout > 0 or concurrency < 1 or retries < 0:
            raise ValueError(f"timeout must be positive, concurrency at least 1 and retries at least 0; got "
                             f"{timeout}, {concurrency}, {retries}")
        if api_key_env is not None:
            if not os.environ.get(api_key_env):
                raise ValueError(f"the environment variable {api_key_env!r} named for the endpoint's key is not set "
                                 "(or is empty); export it, or leave out the key option for a local server")
            api_key = os.environ[api_key_env]
        self._api_key = api_key or os.environ.get("CFX_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.dataset, self.prompt, self.timeout = dataset, prompt, float(timeout)
        self.retries, self.backoff, self.max_tokens = retries, backoff, max_tokens
        self.concurrency = int(concurrency)
        self.breaker = CircuitBreaker(breaker_threshold, probe_interval, self.concurrency)
        self.fallback = fallback or EvidenceReporter()
        self.cache: dict[str, Explanation] = {}

    def __repr__(self) -> str:  # never the key
        return f"OpenAIReporter({self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = "no attempt"
        wait = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(wait if wait > 0 else self.backoff * 2 ** (attempt - 1))
            wait = 0.0
            if not self.breaker.acquire():
                raise EndpointError(f"circuit open: {self.breaker.failures} consecutive failed requests to "
                                    f"{self.base_url} (last: {self.breaker.last_error or last}); not called again "
                                    "until a probe succeeds")
            ok = False
            request = urllib.request.Request(f"{self.base_url}/chat/completions", data=data, headers=headers)
            try:
                body = self._read(request)
                ok = True
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} from {self.base_url}"
                if exc.code == 429 or exc.code >= 500:
                    wait = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                    # a rate limit that says when to come back is an endpoint at work, not a failing one
                    ok = exc.code == 429 and wait > 0
                    if wait > 0:
                        last += f" (Retry-After {wait:g} s)"
                    continue
                ok = True  # the endpoint answered: a request error is ours, not the endpoint's health
                raise EndpointError(f"{last}: {exc.read(300).decode(errors='replace')}") from None
            except (socket.timeout, TimeoutError):
                last = (f"no answer from {self.base_url} within {self.timeout:g} s (the whole answer must arrive by "
                        "then)")
                continue
            except (urllib.error.URLError, ConnectionError, OSError, http.client.HTTPException) as exc:
                last = f"cannot reach {self.base_url}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                continue
            except _TooLarge:
                ok = True  # it answered, at length
                raise EndpointError(f"{self.base_url} answered with more than {MAX_ANSWER_BYTES // 1_000_000} MB; "
                                    "lower max_tokens or check the endpoint") from None
            finally:
                if not ok:
                    self.breaker.last_error = last
                self.breaker.release(ok)
            try:
                return json.loads(body)
            except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError), or an event stream
                start = body[:60].decode("utf-8", errors="replace")
                raise EndpointError(f"{self.base_url} answered with something that is not JSON (it starts "
                                    f"{start!r}); cfx asks for a non-streamed chat completion") from None
        raise EndpointError(f"{last} (after {self.retries + 1} attempts)")

    def _read(self, request: urllib.request.Request) -> bytes:
        """The whole answer within ``timeout`` seconds of sending (a deadline, not a limit per socket read: an
        endpoint that drips bytes cannot hold a request open), at most :data:`MAX_ANSWER_BYTES`."""
        deadline = time.monotonic() + self.timeout
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            parts, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = response.read1(65536)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise _TooLarge

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
            if isinstance(text, list):  # content as a list of parts: their text, in order
                text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict) and p.get("type") == "text")
            if not isinstance(text, str) or not text.strip():
                raise EndpointError("the answer has no text content")
        except Exception as exc:  # noqa: BLE001 - whatever the endpoint did, the sample gets the offline explanation
            reason = (str(exc) if isinstance(exc, EndpointError) else
                      "malformed answer: expected {'choices': [{'message': {'content': TEXT}}]}, "
                      f"{type(exc).__name__}: {exc}" if isinstance(exc, (KeyError, IndexError, TypeError)) else
                      f"{type(exc).__name__}: {exc}")
            fallback = self.fallback.explain(evidence)
            fallback.backend = f"{fallback.backend} (fallback from {self.backend})"  # why: in fallback.fallback
            fallback.fallback = f"{self.backend}:{self.model} failed: {reason}"[:300]
            fallback.prompt = prompt
            return fallback
        text = text[:MAX_TEXT]
        cause = cause_from_text(text)
        result = Explanation(text, cause, 0.5 if cause != "other" else 0.0, f"{self.backend}:{self.model}", prompt,
                             {"id": answer.get("id"), "usage": answer.get("usage")})
        self.cache[key] = result
        return result

    def explain_many(self, evidence: Sequence[Evidence], images: Sequence[Tensor | None] | None = None,
                     counterfactuals: Sequence[Tensor | None] | None = None,
                     on_result: Callable[[int, Explanation], None] | None = None) -> list[Explanation]:
        """Up to ``concurrency`` requests at once; ``on_result(i, explanation)`` is called (in the calling thread) as
        each one arrives, so the caller can store it at once."""
        evidence, images, counterfactuals = self._aligned(evidence, images, counterfactuals)
        out: list[Explanation | None] = [None] * len(evidence)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="cfx-openai") as pool:
            futures = {pool.submit(self.explain, ev, im, cf): i
                       for i, (ev, im, cf) in enumerate(zip(evidence, images, counterfactuals))}
            for future in as_completed(futures):
                i = futures[future]
                out[i] = future.result()
                if on_result is not None:
                    on_result(i, out[i])
        return out  # type: ignore[return-value]
