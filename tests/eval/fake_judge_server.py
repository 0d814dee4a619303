"""A real HTTP server on 127.0.0.1 that answers OpenAI-style chat completions, with scripted faults (tests only)."""
import collections
import http.server
import json
import threading
import time

import pytest

class FakeServer(http.server.ThreadingHTTPServer):
  """Answers chat completions: the label is the response's first word, unless a scripted fault comes first."""

  def __init__(self):
    super().__init__(("127.0.0.1", 0), Handler)
    self.faults = collections.deque()  # consumed one per request
    self.requests = []
    self.lock = threading.Lock()
    self.in_flight = self.max_in_flight = 0
    self.delay_s = 0.0
    self.label = None  # when set, every answer is this label (else the response's first word)

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}/v1"

  def handle_error(self, request, client_address):  # a client that timed out closed the socket: not an error
    pass


class Handler(http.server.BaseHTTPRequestHandler):
  def log_message(self, *args):
    pass

  def do_POST(self):
    server = self.server
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    with server.lock:
      server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
      fault = server.faults.popleft() if server.faults else None
      server.in_flight += 1
      server.max_in_flight = max(server.max_in_flight, server.in_flight)
    try:
      time.sleep(server.delay_s)
      self.answer(fault, body)
    finally:
      with server.lock:
        server.in_flight -= 1

  def answer(self, fault, body):
    kind, arg = fault or ("ok", None)
    if kind == "hang":
      time.sleep(arg)
      return
    if kind == "status":
      status, headers = arg
      self.send(status, b'{"error": "scripted"}', headers)
    elif kind == "raw":
      self.send(200, arg)
    else:
      response = body["messages"][1]["content"].split("[RESPONSE]\n")[1]
      content = arg if kind == "reply" else self.server.label or response.split()[0]
      self.send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode())

  def send(self, status, payload, headers=None):
    self.send_response(status)
    for name, value in (headers or {}).items():
      self.send_header(name, value)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)


@pytest.fixture
def server():
  server = FakeServer()
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()
