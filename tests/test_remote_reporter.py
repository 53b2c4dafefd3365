import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from cfx.evidence import Evidence
from cfx.prompts import OpenAIReporter, render_prompt, side_by_side

EVIDENCE = Evidence(id="x", prediction=1, prediction_name="cat", competency=0.3,
                    statistics={"original": {"blockiness": 0.0, "detail_localisation": 1.1}},
                    statistics_z={"brightness": 7.0, "contrast": 0.0, "saturation": 0.0, "high_frequency": 0.0},
                    difference_mass=0.1)


class _Handler(BaseHTTPRequestHandler):
    mode = "ok"
    calls = 0
    last_body: dict = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        cls = type(self)
        cls.calls += 1
        cls.last_body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if cls.mode == "slow":
            time.sleep(1.0)
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
    _Handler.mode, _Handler.calls = "ok", 0
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
    assert e.backend.startswith("evidence (fallback: openai failed") and reason in e.backend
    assert e.cause == "brightness"  # the offline reporter's answer from the evidence
    assert _Handler.calls == (2 if mode != "malformed" else 1)  # retried where retrying can help


def test_unreachable_endpoint_and_bad_configuration():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    rep = OpenAIReporter(f"http://127.0.0.1:{port}/v1", "m", timeout=0.5, retries=0)
    assert "cannot reach" in rep.explain(EVIDENCE).backend
    with pytest.raises(ValueError, match="base_url and model"):
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
