"""A stand-in judge for tests: an OpenAI-compatible chat-completions endpoint on 127.0.0.1 that
answers each request with the one-token number ``score(prompt)`` (log-prob 0, the form Emergent
Misalignment's read takes) and records every request body."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.test_judges import reply


@contextmanager
def judge_endpoint(score: Callable[[str], str]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``(base_url, seen)``: the endpoint's URL and the request bodies it received."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers.get("Authorization"), "body": body})
            value = score(body["messages"][0]["content"])
            data = json.dumps(reply(value, [(value, 0.0)])).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
