"""The OpenAI-compatible server on SmolLM2-135M (CPU), one server for the module on a free loopback port.

Greedy answers (completion and chat, streamed or not, sent concurrently) equal `LLM.generate` on the same
prompts; every bad request gets its 4xx and OpenAI error JSON without disturbing a request running beside it;
a client that goes away frees its KV blocks; a full queue answers 503; the API key is enforced.
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.sampling import SamplingParams
from trtllm_compile.serve.app import ServerConfig, build_app
from trtllm_compile.serve.background import BackgroundServer

pytestmark = pytest.mark.slow

MODEL = "smollm2-test"
API_KEY = "test-key"
MAX_BATCH, MAX_QUEUE, CONTEXT = 4, 2, 256
MAX_TOKENS = 8
PROMPTS = ["The capital of France is", "def fibonacci(n):", "1, 2, 3,"]
CHATS = [[{"role": "user", "content": "Hi!"}], [{"role": "user", "content": "Name a color."}]]
WAIT_S = 60.0  # bound on every poll: far above a few CPU steps, so a failure is a bug, not a slow machine


@pytest.fixture(scope="module")
def served(smollm2):
    model, tokenizer = smollm2
    llm = LLM(model, tokenizer, max_batch_size=MAX_BATCH, max_num_tokens=CONTEXT, num_blocks=128)
    greedy = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    chat_ids = [
        tokenizer(
            tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True), add_special_tokens=False
        )
        for m in CHATS
    ]
    expected = {
        "completion": [o.text for o in llm.generate(PROMPTS, greedy)],
        "chat": [o.text for o in llm.generate([c["input_ids"] for c in chat_ids], greedy)],
    }
    app = build_app(llm.engine, tokenizer, ServerConfig(MODEL, api_key=API_KEY, max_queue=MAX_QUEUE))
    with BackgroundServer(app) as url:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=url, headers=headers, timeout=WAIT_S) as client:
            yield client, llm.engine, expected


def _body(kind: str, index: int, **extra) -> dict:
    if kind == "completion":
        base = {"prompt": PROMPTS[index]}
    else:
        base = {"messages": CHATS[index]}
    return {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0, **base, **extra}


def _path(kind: str) -> str:
    return "/v1/completions" if kind == "completion" else "/v1/chat/completions"


def _events(response: httpx.Response) -> list[dict]:
    """The SSE payloads up to `data: [DONE]` (which must come)."""
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        if line == "data: [DONE]":
            return events
        events.append(json.loads(line[len("data: ") :]))
    raise AssertionError("stream ended without data: [DONE]")


def _streamed_text(client: httpx.Client, kind: str, body: dict) -> tuple[str, str]:
    with client.stream("POST", _path(kind), json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        events = _events(response)
    choices = [e["choices"][0] for e in events if e["choices"]]
    text = "".join(c["text"] if kind == "completion" else c["delta"].get("content", "") for c in choices)
    return text, choices[-1]["finish_reason"]


def _answer_text(kind: str, answer: dict) -> str:
    choice = answer["choices"][0]
    return choice["text"] if kind == "completion" else choice["message"]["content"]


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.05)


def _assert_idle(engine) -> None:
    _wait_until(lambda: engine.block_manager.num_used_blocks == 0 and not engine.has_unfinished(), "KV blocks freed")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_concurrent_greedy_answers_equal_llm_generate(served, stream):
    client, engine, expected = served
    jobs = [(kind, i) for kind in ("completion", "chat") for i in range(len(expected[kind]))]

    def ask(job):
        kind, i = job
        if stream:
            return _streamed_text(client, kind, _body(kind, i))[0]
        response = client.post(_path(kind), json=_body(kind, i))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["usage"]["completion_tokens"] <= MAX_TOKENS
        assert answer["object"] == ("text_completion" if kind == "completion" else "chat.completion")
        return _answer_text(kind, answer)

    with ThreadPoolExecutor(len(jobs)) as pool:  # all in flight at once: the engine batches them
        texts = list(pool.map(ask, jobs))
    assert texts == [expected[kind][i] for kind, i in jobs]
    _assert_idle(engine)


def test_batched_prompts_get_one_choice_each(served):
    client, _, expected = served
    answer = client.post("/v1/completions", json={**_body("completion", 0), "prompt": PROMPTS}).json()
    assert [c["index"] for c in answer["choices"]] == list(range(len(PROMPTS)))
    assert [c["text"] for c in answer["choices"]] == expected["completion"]


def test_stop_string_is_cut_the_same_streamed_or_not(served):
    client, _, expected = served
    stop = expected["completion"][0][3:6]  # a string the greedy answer is known to contain
    body = _body("completion", 0, stop=[stop])
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    streamed, reason = _streamed_text(client, "completion", body)
    assert whole["text"] == streamed == expected["completion"][0][:3]
    assert whole["finish_reason"] == reason == "stop"


def test_stream_usage_and_chunk_format(served):
    client, _, _ = served
    body = _body("chat", 0, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == MAX_TOKENS


LONG_PROMPT = "hello " * (CONTEXT + 10)
BAD_REQUESTS = {
    # name: (path, body: dict or raw bytes, status, param, code)
    "prompt-longer-than-context": ("c", {"prompt": LONG_PROMPT}, 400, "prompt", "context_length_exceeded"),
    "max-tokens-too-large": ("c", {"prompt": "Hi", "max_tokens": CONTEXT}, 400, "max_tokens", None),
    "max-tokens-negative": ("c", {"prompt": "Hi", "max_tokens": -1}, 400, "max_tokens", None),
    "max-tokens-zero": ("c", {"prompt": "Hi", "max_tokens": 0}, 400, "max_tokens", None),
    "chat-too-large": ("chat", {"messages": CHATS[0], "max_completion_tokens": CONTEXT}, 400, "max_tokens", None),
    "temperature-negative": ("c", {"prompt": "Hi", "temperature": -0.5}, 400, "temperature", None),
    "top-p-zero": ("c", {"prompt": "Hi", "top_p": 0}, 400, "top_p", None),
    "top-p-above-one": ("c", {"prompt": "Hi", "top_p": 1.5}, 400, "top_p", None),
    "top-k-negative": ("c", {"prompt": "Hi", "top_k": -5}, 400, "top_k", None),
    "n-above-one": ("c", {"prompt": "Hi", "n": 2}, 400, "n", None),
    "seed-negative": ("c", {"prompt": "Hi", "seed": -1}, 400, "seed", None),
    "logprobs-unsupported": ("c", {"prompt": "Hi", "logprobs": 2}, 400, None, None),
    "empty-prompt": ("c", {"prompt": ""}, 400, "prompt", "invalid_prompt"),
    "token-out-of-vocab": ("c", {"prompt": [1, 10**9]}, 400, "prompt", None),
    "missing-prompt": ("c", {"max_tokens": 4}, 400, "prompt", None),
    "no-messages": ("chat", {"messages": []}, 400, "messages", None),
    "bad-role": ("chat", {"messages": [{"role": "robot", "content": "x"}]}, 400, None, None),
    "malformed-json": ("c", b'{"prompt": "Hi", ', 400, None, "invalid_json"),
    "json-not-object": ("c", b'["Hi"]', 400, None, "invalid_json"),
    "invalid-utf8": ("c", b'{"prompt": "caf\xe9"}', 400, None, "invalid_encoding"),
    "unknown-model": ("c", {"prompt": "Hi", "model": "gpt-9"}, 404, "model", "model_not_found"),
    "unknown-model-chat": ("chat", {"messages": CHATS[0], "model": "gpt-9"}, 404, "model", "model_not_found"),
}


def _send_bad(client: httpx.Client, name: str) -> httpx.Response:
    kind, body, *_ = BAD_REQUESTS[name]
    path = "/v1/completions" if kind == "c" else "/v1/chat/completions"
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"Content-Type": "application/json"})
    return client.post(path, json=body)


def _assert_openai_error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param), error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_answered_with_openai_error(served, name):
    client, engine, _ = served
    _, _, status, param, code = BAD_REQUESTS[name]
    _assert_openai_error(_send_bad(client, name), status, param, code)
    assert engine.block_manager.num_used_blocks == 0


def test_bad_requests_do_not_disturb_a_running_stream(served):
    client, engine, expected = served
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(_streamed_text, client, "completion", _body("completion", 1))
        statuses = [_send_bad(client, name).status_code for name in BAD_REQUESTS]
        text, reason = running.result(timeout=WAIT_S)
    assert all(400 <= s < 500 for s in statuses)
    assert (text, reason) == (expected["completion"][1], "length")
    _assert_idle(engine)


def _num_aborted(client: httpx.Client) -> float:
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith(ABORTED))
    return float(line.split()[-1])


ABORTED = 'trtllm_requests_finished_total{reason="abort"}'
# Hundreds of CPU steps (EOS ignored: a greedy answer that ends early made the whole-answer timeout flaky on a
# quiet machine): only an abort frees its blocks within WAIT_S.
LONG_ANSWER = dict(max_tokens=CONTEXT - 16, ignore_eos=True)


def test_client_disconnecting_mid_stream_frees_its_blocks(served):
    client, engine, _ = served
    aborted = _num_aborted(client)
    with client.stream("POST", "/v1/completions", json=_body("completion", 0, stream=True, **LONG_ANSWER)) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):  # a token arrived: the request holds KV blocks now
            pass
        assert engine.block_manager.num_used_blocks > 0
    # Leaving the block closed the connection: the server aborts the request within a step or so.
    _assert_idle(engine)
    assert _num_aborted(client) == aborted + 1


def test_client_timing_out_on_a_whole_answer_frees_its_blocks(served):
    client, engine, _ = served
    aborted = _num_aborted(client)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/completions", json=_body("completion", 0, **LONG_ANSWER), timeout=1.0)
    _assert_idle(engine)
    assert _num_aborted(client) == aborted + 1


def test_queue_full_answers_503_and_recovers(served):
    client, engine, expected = served
    body = _body("completion", 0, max_tokens=100, stream=True)
    with contextlib.ExitStack() as streams:
        for _ in range(MAX_BATCH + MAX_QUEUE):  # a full batch plus a full wait queue
            response = streams.enter_context(client.stream("POST", "/v1/completions", json=body))
            assert response.status_code == 200
        _assert_openai_error(client.post("/v1/completions", json=_body("completion", 0)), 503, code="queue_full")
    _assert_idle(engine)
    answer = client.post("/v1/completions", json=_body("completion", 0)).json()
    assert answer["choices"][0]["text"] == expected["completion"][0]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {API_KEY}"], ids=["none", "wrong", "not-bearer"])
def test_api_key_is_required_on_v1(served, header):
    client, _, _ = served
    headers = {"Authorization": header} if header else {}
    with httpx.Client(base_url=client.base_url, headers=headers, timeout=WAIT_S) as anonymous:
        for response in (anonymous.get("/v1/models"), anonymous.post("/v1/completions", json=_body("completion", 0))):
            _assert_openai_error(response, 401, code="invalid_api_key")
        assert anonymous.get("/health").status_code == 200  # probes need no key


def test_models_health_and_metrics(served):
    client, engine, _ = served
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == engine.max_seq_len
    assert client.get("/health").json() == {"status": "ok"}
    client.post("/v1/completions", json=_body("completion", 2))
    metrics = client.get("/metrics").text
    for name in (
        'trtllm_requests_total{endpoint="completions",status="200"}',
        "trtllm_generation_tokens_total",
        "trtllm_num_requests_waiting",
        "trtllm_kv_cache_blocks_used 0.0",
        "trtllm_time_to_first_token_seconds_bucket",
        "trtllm_time_per_output_token_seconds_bucket",
    ):
        assert name in metrics, name
    _assert_openai_error(client.get("/v1/nothing-here"), 404)
