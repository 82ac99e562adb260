"""A fake OpenAI-compatible chat server on loopback: replies looked up from a table by prompt.

Parity tests serve the same replies to the harness (through its real client and CLI) and
hand them to the official scorers, so both score exactly the same text. A prompt missing
from the table is an HTTP 404 naming it: a test can never score a reply it did not write.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeChatServer:
    """Serves `/v1/chat/completions`; the reply to a conversation is `table[last user message]`."""

    def __init__(self) -> None:
        self.table: Mapping[str, str] = {}
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                else:
                    self._send(404, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": f"no route {self.path}"})
                    return
                with server._lock:
                    server.requests.append(body)
                prompt = [m for m in body.get("messages", []) if m.get("role") == "user"][-1]["content"]
                if prompt not in server.table:
                    self._send(404, {"error": f"no reply in the table for the prompt {prompt[:200]!r}"})
                    return
                reply = server.table[prompt]
                self._send(200, {
                    "id": "fake", "object": "chat.completion", "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": max(1, len(reply.split())),
                              "total_tokens": len(prompt.split()) + max(1, len(reply.split()))}})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> FakeChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@contextmanager
def fake_chat_server() -> Iterator[FakeChatServer]:
    server = FakeChatServer().start()
    try:
        yield server
    finally:
        server.stop()
