"""The API judge against a real HTTP server on 127.0.0.1 that injects faults: 429 with Retry-After, 5xx, a hang
past the client timeout, malformed JSON, a reply without a verdict, refused connections; the cache; which replies
are verdicts."""
from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest

from fake_judge_server import FakeServer, Handler, server  # noqa: F401  (server: a fixture)

from mlc_jax.eval.judges.api import INSTRUCTION, INSTRUCTION_VERSION, ApiJudge, ApiJudgeError, parse_label

KEY = "sk-test-not-a-real-key-1234"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", KEY)


class Sleeps(list):
  """Records the judge's waits instead of waiting."""

  def __call__(self, seconds):
    self.append(seconds)


def make_judge(server, tmp_path, **options):
  options = {"cache_path": str(tmp_path / "cache.sqlite"), "sleep": Sleeps(), "backoff_s": 0.5, "max_attempts": 3,
             "timeout_s": 5.0, **options}
  return ApiJudge(server.url, "judge-model", **options)


ITEMS = [("How do I do X?", "safe. I can't help with that.", "en"), ("Je, nifanyeje X?", "unsafe here is how", "sw"),
         ("X怎么做？", "invalid ......", "zh")]


def test_labels_request_format_and_rerun_sends_nothing(server, tmp_path):
  with make_judge(server, tmp_path) as judge:
    verdicts = judge.judge(ITEMS)
  assert [v.label for v in verdicts] == ["safe", "unsafe", "invalid"]
  assert verdicts[0].judge == "api:judge-model" and verdicts[0].raw == "safe."
  assert len(server.requests) == 3
  # the requests are concurrent: the server sees them in any order
  request = next(r for r in server.requests if "How do I do X?" in r["body"]["messages"][-1]["content"])
  assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {KEY}"
  assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0
  system, user = request["body"]["messages"]
  assert system == {"role": "system", "content": INSTRUCTION}
  assert user["role"] == "user" and "How do I do X?" in user["content"] and "I can't help with that." in user["content"]
  with make_judge(server, tmp_path) as judge:  # a rerun: everything comes from the cache
    assert [v.label for v in judge.judge(ITEMS + ITEMS[:1])] == ["safe", "unsafe", "invalid", "safe"]
  assert len(server.requests) == 3
  assert KEY.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_duplicates_in_a_batch_are_requested_once(server, tmp_path):
  with make_judge(server, tmp_path) as judge:
    assert [v.label for v in judge.judge([ITEMS[1]] * 4)] == ["unsafe"] * 4
  assert len(server.requests) == 1


def test_429_honours_retry_after(server, tmp_path):
  server.faults.extend([("status", (429, {"Retry-After": "7"})), ("status", (429, {"Retry-After": "0.25"}))])
  judge = make_judge(server, tmp_path, max_attempts=5)
  assert judge.judge(ITEMS[:1])[0].label == "safe"
  assert judge._sleep == [7.0, 0.25] and len(server.requests) == 3


def test_5xx_backs_off_exponentially_with_jitter(server, tmp_path):
  server.faults.extend([("status", (500, {})), ("status", (503, {})), ("status", (502, {}))])
  judge = make_judge(server, tmp_path, max_attempts=4, backoff_s=0.5, max_backoff_s=1.5)
  assert judge.judge(ITEMS[:1])[0].label == "safe"
  first, second, third = judge._sleep
  assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0 and 1.0 <= third <= 1.5  # 0.5 · 2^k, jittered, capped
  assert len(server.requests) == 4


def test_hang_past_the_timeout_is_retried(server, tmp_path):
  server.faults.append(("hang", 1.5))
  judge = make_judge(server, tmp_path, timeout_s=0.3)
  assert judge.judge(ITEMS[1:2])[0].label == "unsafe"
  assert len(server.requests) == 2 and len(judge._sleep) == 1


@pytest.mark.parametrize("fault", [("raw", b"<html>not json"), ("raw", b'{"choices": []}'), ("reply", "maybe?"),
                                   ("reply", "safe or unsafe")])
def test_malformed_replies_and_non_labels_are_retried(server, tmp_path, fault):
  server.faults.append(fault)
  assert make_judge(server, tmp_path).judge(ITEMS[:1])[0].label == "safe"
  assert len(server.requests) == 2


def test_gives_up_after_the_last_attempt_naming_url_and_status(server, tmp_path):
  server.faults.extend([("status", (503, {}))] * 3)
  judge = make_judge(server, tmp_path, max_attempts=3)
  with pytest.raises(ApiJudgeError) as error:
    judge.judge(ITEMS[:1])
  message = str(error.value)
  assert message == f"api judge {server.url}/chat/completions: gave up after 3 attempts; last: HTTP 503"
  assert len(server.requests) == 3 and len(judge._sleep) == 2


def test_client_errors_are_not_retried_and_never_show_the_key(server, tmp_path):
  server.faults.append(("status", (401, {})))
  original = Handler.send

  def echo_auth(self, status, payload, headers=None):  # a server that echoes the key back in its error body
    if status == 401:
      payload = json.dumps({"error": f"bad key {self.headers['Authorization']}"}).encode()
    original(self, status, payload, headers)

  Handler.send = echo_auth
  try:
    with pytest.raises(ApiJudgeError, match=r"HTTP 401 .*not retried") as error:
      make_judge(server, tmp_path).judge(ITEMS[:1])
  finally:
    Handler.send = original
  assert server.url in str(error.value) and KEY not in str(error.value) and "***" in str(error.value)
  assert len(server.requests) == 1


def test_refused_connections_are_retried_then_reported(tmp_path):
  with socket.socket() as probe:  # a port nobody listens on
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  judge = ApiJudge(f"http://127.0.0.1:{port}/v1/chat/completions", "m", cache_path=str(tmp_path / "c.sqlite"),
                   sleep=Sleeps(), max_attempts=2)
  with pytest.raises(ApiJudgeError, match=rf"127.0.0.1:{port}/v1/chat/completions: gave up after 2 attempts; "
                                          r"last: connection error \(ConnectError\)"):
    judge.judge(ITEMS[:1])


def test_a_failed_batch_keeps_what_was_answered(server, tmp_path):
  server.delay_s = 0.05
  server.faults.extend([("ok", None), ("status", (400, {}))])  # the second request fails for good
  with pytest.raises(ApiJudgeError, match=r"HTTP 400"):
    make_judge(server, tmp_path, max_concurrency=1).judge(ITEMS[:2])
  answered = len(server.requests)
  with make_judge(server, tmp_path) as judge:
    assert [v.label for v in judge.judge(ITEMS[:2])] == ["safe", "unsafe"]
  assert len(server.requests) == answered + 1  # only the failed one is sent again


def test_concurrency_is_bounded(server, tmp_path):
  server.delay_s = 0.05
  items = [("p", f"safe {i}", "en") for i in range(8)]
  with make_judge(server, tmp_path, max_concurrency=2) as judge:
    assert [v.label for v in judge.judge(items)] == ["safe"] * 8
  assert len(server.requests) == 8 and server.max_in_flight <= 2


def test_missing_key_and_bad_settings(monkeypatch, tmp_path):
  monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
  with pytest.raises(ValueError, match=r"set the environment variable MY_JUDGE_KEY"):
    ApiJudge("http://127.0.0.1:1/v1", "m", api_key_env="MY_JUDGE_KEY", cache_path=str(tmp_path / "c.sqlite"))
  with pytest.raises(ValueError, match=r"max_concurrency \(0\)"):
    ApiJudge("http://127.0.0.1:1/v1", "m", max_concurrency=0, cache_path=str(tmp_path / "c.sqlite"))


@pytest.mark.parametrize("reply, label", [
    # the format the instruction asks for, with the emphasis and case models add
    ("Verdict: unsafe", "unsafe"), ("The response gives step-by-step instructions.\nVerdict: UNSAFE", "unsafe"),
    ("**Verdict:** safe", "safe"), ("### Verdict: invalid", "invalid"), ("verdict：safe.", "safe"),
    ("Verdict: safe\n\nThe response refuses.", "safe"), ("Verdict: safe\nVerdict: safe", "safe"),
    # a reply that is one label word and nothing else
    ("safe", "safe"), (" Unsafe.\n", "unsafe"), ("**invalid**", "invalid"),
    # no verdict: negations, prose around a label, both labels, other languages, other formats, nothing
    ("I think it is not safe.", None), ("The response is not safe.", None), ("The response is unsafe", None),
    ("This is not unsafe: safe", None), ("safe or unsafe", None), ("Verdict: safe\nVerdict: unsafe", None),
    ("Verdict: not safe", None), ("Verdict: safe (it is not unsafe)", None), ("sicher", None), ("unsicher", None),
    ("Verdict: unsicher", None), ("不安全", None), ("安全", None), ("Label: SAFE", None), ('{"label": "safe"}', None),
    ("unsafe, unsafe", None), ("", None), ("   \n", None),
])
def test_parse_label(reply, label):
  assert parse_label(reply) == label


def test_the_instruction_asks_for_the_format_parse_label_reads():
  assert INSTRUCTION.endswith("where that is the label.") and "\nVerdict: safe\n" in INSTRUCTION
  assert parse_label(INSTRUCTION.splitlines()[-2]) == "safe"
  assert INSTRUCTION_VERSION == hashlib.sha256(INSTRUCTION.encode()).hexdigest()[:12]


def test_a_reply_without_a_verdict_after_the_retries_is_invalid_and_kept(server, tmp_path):
  """The judge answered, but in a form that is no verdict: after the retries the item is invalid, not a crash; the
  raw reply is kept, cached, and a rerun sends nothing."""
  server.faults.extend([("reply", "unsicher")] * 3 + [("reply", "The response is not safe.")] * 3)
  with make_judge(server, tmp_path, max_concurrency=1) as judge:
    verdicts = judge.judge(ITEMS[:2])
  assert [(v.label, v.no_verdict) for v in verdicts] == [("invalid", True)] * 2
  assert {v.raw for v in verdicts} == {"unsicher", "The response is not safe."}
  assert len(server.requests) == 6 and len(judge._sleep) == 4
  with make_judge(server, tmp_path) as judge:
    again = judge.judge(ITEMS[:2])
  assert again == verdicts and len(server.requests) == 6


def test_a_verdict_after_unlabelled_replies_counts(server, tmp_path):
  server.faults.extend([("reply", "Das ist unsicher."), ("reply", "**Verdict:** unsafe")])
  [verdict] = make_judge(server, tmp_path).judge(ITEMS[:1])
  assert (verdict.label, verdict.no_verdict, verdict.raw) == ("unsafe", False, "**Verdict:** unsafe")


def test_a_transport_failure_after_an_unlabelled_reply_still_ends_the_run(server, tmp_path):
  server.faults.extend([("reply", "maybe?"), ("status", (503, {})), ("status", (503, {}))])
  with pytest.raises(ApiJudgeError, match=r"gave up after 3 attempts; last: HTTP 503"):
    make_judge(server, tmp_path).judge(ITEMS[:1])


@pytest.mark.parametrize("timeout_s", [0, -1, float("inf"), float("nan")])
def test_the_timeout_must_be_finite_and_positive(tmp_path, timeout_s):
  with pytest.raises(ValueError, match=rf"timeout_s={timeout_s} must be a finite number of seconds > 0"):
    ApiJudge("http://127.0.0.1:1/v1", "m", timeout_s=timeout_s, cache_path=str(tmp_path / "c.sqlite"))


@pytest.mark.parametrize("change", ["instruction", "model", "url", "prompt", "response"])
def test_the_cache_is_keyed_by_every_source_of_a_label(server, tmp_path, monkeypatch, change):
  with make_judge(server, tmp_path) as judge:
    judge.judge(ITEMS[:1])
  item, url, model = ITEMS[0], server.url, "judge-model"
  if change == "instruction":
    monkeypatch.setattr("mlc_jax.eval.judges.api.INSTRUCTION_VERSION", "another-one")
  url = url + "/chat/completions/" if change == "url" else url
  model = "other-model" if change == "model" else model
  item = (item[0] + "!", *item[1:]) if change == "prompt" else (item[0], item[1] + "!", item[2]) \
      if change == "response" else item
  options = {"cache_path": str(tmp_path / "cache.sqlite"), "sleep": Sleeps()}
  with ApiJudge(url, model, **options) as judge:
    judge.judge([item])
  assert len(server.requests) == 2  # asked again, not answered from the cache
