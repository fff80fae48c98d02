"""A loopback OpenAI-compatible chat server for tests: a marker in the prompt picks the fault.

FAULT:429xK / FAULT:500xK  fail the first K attempts with that status, then answer
FAULT:500                   always 500
FAULT:timeoutxK             sleep past the client's timeout on the first K attempts
FAULT:garbagexK             answer 200 with a body that is not JSON on the first K attempts
FAULT:empty                 always answer with no choices
Otherwise it answers `reply(prompt)` ("echo: <prompt>" by default) after `latency` seconds.
Binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops bursts of concurrent connects
    daemon_threads = True


class FaultServer:
    def __init__(self, latency: float = 0.0, timeout_sleep: float = 1.5, reply=None):
        self.latency, self.timeout_sleep = latency, timeout_sleep
        self.reply = reply or (lambda prompt: f"echo: {prompt}")
        self.attempts: Counter[str] = Counter()
        self.seen_auth: set[str] = set()
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a connection per request would measure connects
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.seen_auth.add(self.headers.get("Authorization", ""))
                content = body["messages"][-1]["content"]
                prompt = (
                    content
                    if isinstance(content, str)
                    else " ".join(p.get("text", "[image]") for p in content)
                )
                with server._lock:
                    server.bodies.append(body)
                    server.attempts[prompt] += 1
                    attempt = server.attempts[prompt]
                server.respond(self, prompt, attempt, body)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def respond(self, handler, prompt: str, attempt: int, body: dict) -> None:
        fault = re.search(r"FAULT:(\w+?)(?:x(\d+))?\b", prompt)
        kind, times = (fault.group(1), int(fault.group(2) or 10**9)) if fault else (None, 0)
        failing = kind is not None and attempt <= times
        if failing and kind in ("429", "500"):
            return send(handler, int(kind), {"error": {"message": "injected"}}, {"retry-after-ms": "5"})
        if failing and kind == "timeout":
            time.sleep(self.timeout_sleep)
        if failing and kind == "garbage":
            return send_raw(handler, 200, b"<html>not json")
        time.sleep(self.latency)
        choices = (
            []
            if kind == "empty"
            else [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": self.reply(prompt)},
                    "finish_reason": "stop",
                }
                for i in range(body.get("n") or 1)
            ]
        )
        send(
            handler,
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": choices,
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
    send_raw(handler, status, json.dumps(payload).encode(), headers)


def send_raw(handler, status: int, data: bytes, headers: dict | None = None) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up (a timeout test)
