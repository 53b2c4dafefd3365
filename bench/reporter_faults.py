"""An OpenAI-compatible back-end under faults: a dead endpoint, and a slow one with 1 and 8 concurrent slots.

Starts a local fake endpoint in this process, then:

1. ``cfx.explain`` on 50 flagged demo images (the shapes review set, every image flagged) with the reporter pointed
   at an endpoint that accepts connections and never answers (default timeout 20 s, 2 retries, concurrency 4,
   breaker threshold 5): wall time of the explaining stage, requests the endpoint received, and per back-end counts.
2. An endpoint that answers after 1 s: ``explain_many`` of 32 records with 1 slot and with 8 slots, side by side;
   prints both wall times and their ratio.

    python bench/reporter_faults.py
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

import cfx
from cfx.core.data import TensorSource
from cfx.demo import demo_fitted, load_demo
from cfx.evidence import Evidence
from cfx.prompts import OpenAIReporter


class Endpoint(BaseHTTPRequestHandler):
    mode = "hang"
    calls = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        with Endpoint.lock:
            Endpoint.calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if Endpoint.mode == "hang":
            time.sleep(60)
            return
        time.sleep(1.0)
        body = json.dumps({"choices": [{"message": {"content": "The image is too dark."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def main() -> None:
    httpd = Server(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    models = load_demo("shapes")
    fitted = demo_fitted(models, progress=False)
    records = list(cfx.open_source("demo:shapes:review"))[:50]
    source = TensorSource(torch.stack([r.image for r in records]), ids=[r.id for r in records])
    with tempfile.TemporaryDirectory() as out:
        run = cfx.explain(models.classifier, source, fitted, out, reporter=f"openai:{url}", flag_below=1e9,
                          reporter_options={"model": "dead"}, progress=False)
    print(f"dead endpoint: {run.counts['explained']} explained, by back-end {run.counts['backends']}; "
          f"{Endpoint.calls} requests sent; explaining took {run.timing['explain_seconds']:.1f} s "
          f"(goal: at most 120 s)")

    Endpoint.mode, Endpoint.calls = "slow", 0
    evidence = [Evidence(id=f"x{i}", prediction=0, competency=0.3) for i in range(32)]
    images = [torch.full((3, 16, 16), i / 32) for i in range(32)]  # distinct pictures: nothing from the cache
    seconds = {}
    for slots in (1, 8):
        rep = OpenAIReporter(url, "slow", concurrency=slots, timeout=10)
        t = time.perf_counter()
        out = rep.explain_many(evidence, images, images)
        seconds[slots] = time.perf_counter() - t
        assert all(e.fallback is None for e in out)
    print(f"1-s endpoint, 32 records: 1 slot {seconds[1]:.1f} s, 8 slots {seconds[8]:.1f} s, "
          f"ratio {seconds[1] / seconds[8]:.1f}x (goal: at least 4x); {Endpoint.calls} requests")
    httpd.shutdown()


if __name__ == "__main__":
    main()
