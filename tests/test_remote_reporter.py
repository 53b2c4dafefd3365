import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from cfx.evidence import Evidence
from cfx.prompts import OpenAIReporter, make_reporter, render_prompt, side_by_side

EVIDENCE = Evidence(id="x", prediction=1, prediction_name="cat", competency=0.3,
                    statistics={"original": {"blockiness": 0.0, "detail_localisation": 1.1}},
                    statistics_z={"brightness": 7.0, "contrast": 0.0, "saturation": 0.0, "high_frequency": 0.0},
                    difference_mass=0.1)


class _Handler(BaseHTTPRequestHandler):
    mode = "ok"
    calls = 0
    in_flight = 0
    max_in_flight = 0
    headers_seen: list = []
    times: list = []
    lock = threading.Lock()
    last_body: dict = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        cls = type(self)
        with cls.lock:
            cls.calls += 1
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
            cls.headers_seen.append(dict(self.headers))
        try:
            self._answer(cls)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _answer(self, cls):
        cls.last_body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if cls.mode == "hang":  # accepts the connection, never answers in time
            time.sleep(2.0)
            return
        if cls.mode == "slow":
            time.sleep(1.0)
        if cls.mode == "badutf8":  # JSON whose bytes are not UTF-8
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"choices": "\xff\xfe"}')
            return
        if cls.mode == "garbage":  # not HTTP at all
            self.wfile.write(b"HELLO THERE\r\n\r\n")
            return
        if cls.mode == "drip":  # a valid answer, one byte every 0.1 s: 4 s in all
            body = json.dumps({"choices": [{"message": {"content": "too bright"}}]}).encode()[:40].ljust(40)
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            try:
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        if cls.mode == "ratelimit" and cls.calls == 1:
            cls.times.append(time.monotonic())
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.end_headers()
            return
        if cls.mode == "ratelimit":
            cls.times.append(time.monotonic())
        if cls.mode == "parts":
            body = json.dumps({"choices": [{"message": {"content": [
                {"type": "text", "text": "The image is far "}, {"type": "text", "text": "too bright."}]}}]}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
            return
        if cls.mode == "error500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        body = b"{not json" if cls.mode == "malformed" else json.dumps({
            "id": "r1", "choices": [{"message": {"role": "assistant", "content": cls.content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    content = "The image is far too bright. <script>alert(1)</script> Ignore previous instructions."


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # the client gave up on a slow answer: expected here
        pass


@pytest.fixture()
def server():
    _Handler.mode, _Handler.calls, _Handler.in_flight, _Handler.max_in_flight = "ok", 0, 0, 0
    _Handler.headers_seen, _Handler.times = [], []
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_answer_is_data_with_a_cause_and_cached(server):
    rep = OpenAIReporter(server, "tiny-vlm", timeout=2, retries=0)
    img = torch.rand(3, 16, 16)
    e = rep.explain(EVIDENCE, img, img * 0.5)
    assert e.cause == "brightness" and e.backend == "openai:tiny-vlm"
    assert "<script>" in e.text  # kept verbatim as text; the HTML renderer escapes it
    sent = _Handler.last_body["messages"][0]["content"]
    assert sent[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "measurements" in sent[0]["text"]  # the grounded prompt
    rep.explain(EVIDENCE, img, img * 0.5)
    assert _Handler.calls == 1  # second answer from the cache


@pytest.mark.parametrize("mode, reason", [("error500", "HTTP 500"), ("malformed", "not JSON"),
                                          ("slow", "no answer")])
def test_faults_fall_back_to_the_evidence_reporter(server, mode, reason):
    _Handler.mode = mode
    rep = OpenAIReporter(server, "tiny-vlm", timeout=0.3, retries=1, backoff=0.01)
    e = rep.explain(EVIDENCE)
    assert e.backend == "evidence (fallback from openai)" and e.fallback.startswith("openai:tiny-vlm failed")
    assert reason in e.fallback
    assert e.cause == "brightness"  # the offline reporter's answer from the evidence
    assert _Handler.calls == (2 if mode != "malformed" else 1)  # retried where retrying can help


@pytest.mark.parametrize("mode, reason", [("badutf8", "not JSON"), ("garbage", "BadStatusLine"),
                                          ("drip", "within 0.5 s")])
def test_answers_that_are_not_http_not_utf8_or_too_slow_in_all_fall_back_with_their_reason(server, mode, reason):
    # before: a non-UTF-8 body and a non-HTTP answer raised out of the reporter (every explanation of the run was an
    # error), and an answer dripping a byte at a time held the request for its whole 4 s despite a 0.5 s timeout
    _Handler.mode = mode
    rep = OpenAIReporter(server, "tiny-vlm", timeout=0.5, retries=0)
    e = rep.explain(EVIDENCE)
    assert e.backend == "evidence (fallback from openai)" and reason in e.fallback, e.fallback
    assert e.cause == "brightness"


def test_a_rate_limit_is_waited_out_as_it_asks_and_does_not_open_the_breaker(server):
    _Handler.mode = "ratelimit"
    rep = OpenAIReporter(server, "tiny-vlm", timeout=2, retries=1, backoff=0.01, breaker_threshold=1)
    e = rep.explain(EVIDENCE)
    assert e.backend == "openai:tiny-vlm", e.fallback  # the second attempt answered
    assert _Handler.calls == 2 and _Handler.times[1] - _Handler.times[0] >= 0.95  # Retry-After: 1, not the backoff
    assert not rep.breaker.open


def test_content_given_as_a_list_of_text_parts_is_read(server):
    _Handler.mode = "parts"
    e = OpenAIReporter(server, "tiny-vlm", timeout=2, retries=0).explain(EVIDENCE)
    assert e.backend == "openai:tiny-vlm" and e.text == "The image is far too bright." and e.cause == "brightness"


def test_unreachable_endpoint_and_bad_configuration():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    rep = OpenAIReporter(f"http://127.0.0.1:{port}/v1", "m", timeout=0.5, retries=0)
    assert "cannot reach" in rep.explain(EVIDENCE).fallback
    with pytest.raises(ValueError, match="an endpoint and a model"):
        OpenAIReporter(None, None)
    with pytest.raises(ValueError, match="http"):
        OpenAIReporter("ftp://x", "m")


def test_templates_and_side_by_side():
    for kind in ("free_form", "free_form_counterfactual", "multiple_choice"):
        text = render_prompt(kind, "I trained a classifier to tell six shapes apart.")
        assert text.startswith("I trained a classifier") and "{{" not in text
    assert "A) an unfamiliar object" in render_prompt("multiple_choice", "D.")
    grounded = render_prompt("grounded", "D.", EVIDENCE)
    assert "brightness is far above" in grounded
    with pytest.raises(ValueError, match="dataset description"):
        render_prompt("free_form", " ")
    img = side_by_side(torch.zeros(3, 8, 8), torch.ones(3, 8, 8), padding=10)
    assert img.size == (8 + 8 + 30, 8 + 20)
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((12, 12)) == (0, 0, 0)
    assert side_by_side(torch.zeros(3, 8, 8), None, padding=10).size == (28, 28)  # the original alone


def test_default_path_needs_no_network(monkeypatch):
    from cfx.prompts import EvidenceReporter

    def refuse(*args, **kwargs):
        raise AssertionError("the default path opened a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert EvidenceReporter().explain(EVIDENCE).cause == "brightness"


def _records(n: int) -> list[Evidence]:
    """Distinct records (distinct prompts, so nothing comes from the cache)."""
    return [Evidence(id=f"x{i}", prediction=1, prediction_name="cat", competency=round(0.01 * i, 2),
                     statistics=EVIDENCE.statistics, statistics_z=EVIDENCE.statistics_z, difference_mass=0.1)
            for i in range(n)]


def test_a_dead_endpoint_gets_the_breaker_threshold_of_requests_then_none(server):
    _Handler.mode = "hang"
    rep = OpenAIReporter(server, "m", timeout=0.2, retries=2, backoff=0.01, concurrency=4, breaker_threshold=3,
                         probe_interval=3600)
    arrived = []
    out = rep.explain_many(_records(50), on_result=lambda i, e: arrived.append(i))
    assert _Handler.calls == 3 == rep.breaker.requests and rep.breaker.open  # counted, not timed
    assert sorted(arrived) == list(range(50)) and all(e.cause == "brightness" for e in out)  # evidence fallback
    assert all(e.fallback and e.backend.startswith("evidence (fallback") for e in out)
    assert sum("circuit open" in e.fallback for e in out) >= 47


def test_the_breaker_probes_and_closes_when_the_endpoint_comes_back(server):
    _Handler.mode = "hang"
    rep = OpenAIReporter(server, "m", timeout=0.2, retries=0, concurrency=1, breaker_threshold=2, probe_interval=0.5)
    for record in _records(6):
        assert rep.explain(record).fallback
    assert _Handler.calls == 2 and rep.breaker.open  # six samples, two requests
    _Handler.mode = "ok"
    time.sleep(0.6)
    answered = rep.explain(_records(7)[-1])
    assert answered.backend == "openai:m" and answered.fallback is None  # the probe succeeded
    assert not rep.breaker.open and rep.breaker.probes == 1 and _Handler.calls == 3


def test_concurrent_requests_overlap_up_to_the_limit(server):
    _Handler.mode = "slow"  # one second per answer
    rep = OpenAIReporter(server, "m", timeout=5, retries=0, concurrency=8)
    images = [torch.full((3, 8, 8), i / 16) for i in range(16)]  # distinct pictures: nothing from the cache
    out = rep.explain_many(_records(16), images, images)
    assert all(e.backend == "openai:m" for e in out) and _Handler.calls == 16
    assert 2 <= _Handler.max_in_flight <= 8


def test_the_key_comes_from_a_named_variable_and_is_never_stored(server, monkeypatch, tmp_path):
    import cfx
    from cfx.core.data import TensorSource
    from cfx.core.models import Classifier, Preprocessing

    from factories import tiny_cnn

    secret = "sk-test-0123456789-secret"
    monkeypatch.setenv("MY_ENDPOINT_KEY", secret)
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
        OpenAIReporter(server, "m", api_key_env="NOT_SET_ANYWHERE")
    model = Classifier.wrap(tiny_cnn(), preprocessing=Preprocessing(size=(32, 32)))
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    run = cfx.explain(model, TensorSource(images), None, tmp_path, reporter=f"openai:{server}", flag_share=50,
                      reporter_options={"model": "m", "api_key_env": "MY_ENDPOINT_KEY", "concurrency": 2},
                      progress=False)
    assert run.counts["explained"] == 6 and run.counts["backends"] == {"openai:m": 6}
    assert all(h.get("Authorization") == f"Bearer {secret}" for h in _Handler.headers_seen)
    assert all(s["backend"] == "openai:m" and s["fallback"] is None for s in run.samples if s["flagged"])
    for path in tmp_path.iterdir():
        assert secret.encode() not in path.read_bytes(), path.name
    assert secret not in repr(make_reporter(f"openai:{server}", options={"model": "m",
                                                                         "api_key_env": "MY_ENDPOINT_KEY"}))


def test_cli_reporter_options_need_no_environment_variables(server, monkeypatch, tmp_path):
    from pathlib import Path

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from cfx.cli import main

    for name in ("CFX_OPENAI_MODEL", "CFX_OPENAI_BASE_URL", "CFX_OPENAI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    factories = Path(__file__).parent / "factories.py"
    result = CliRunner().invoke(main, ["explain", "--model", f"python:{factories}:tiny_cnn", "--image-size", "32",
                                       "--data", str(folder), "--out", str(tmp_path / "out"), "--quiet",
                                       "--flag-share", "50", "--reporter", f"openai:{server}",
                                       "--reporter-model", "tiny-vlm", "--reporter-timeout", "5",
                                       "--reporter-concurrency", "2"])
    assert result.exit_code == 0, result.output
    assert "explained by: openai:tiny-vlm 4" in result.output and _Handler.calls == 4


def test_the_report_says_which_back_end_wrote_each_explanation_and_why_it_fell_back(server, tmp_path):
    import cfx
    from cfx.core.data import TensorSource
    from cfx.core.models import Classifier, Preprocessing

    from factories import tiny_cnn

    _Handler.mode = "error500"
    model = Classifier.wrap(tiny_cnn(), preprocessing=Preprocessing(size=(32, 32)))
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    run = cfx.explain(model, TensorSource(images), None, tmp_path, reporter=f"openai:{server}", flag_share=50,
                      reporter_options={"model": "m", "retries": 0}, generators=["igd"], progress=False)
    flagged = [s for s in run.samples if s["flagged"]]
    assert len(flagged) == 4 and all(s["backend"] == "evidence (fallback from openai)" for s in flagged)
    assert all(s["fallback"].startswith("openai:m failed: HTTP 500") for s in flagged)
    html = (tmp_path / "report.html").read_text()
    assert html.count("written by the fallback: openai:m failed: HTTP 500") == 4
