"""The OpenAI wire format without a model: body parsing and its 400s, and streamed text that is never retracted."""

import pytest

from trtllm_compile.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    parse_request,
)


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b'{"prompt": "caf\xe9"}', "invalid_encoding", None),
        (b'{"prompt": ', "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        (b'{"prompt": "x", "temperature": "hot"}', "invalid_value", "temperature"),
        (b'{"prompt": "x", "max_tokens": -3}', "invalid_value", "max_tokens"),
        (b'{"prompt": "x", "top_p": 0}', "invalid_value", "top_p"),
        (b'{"prompt": "x", "n": 3}', "invalid_value", "n"),
        (b'{"prompt": "x", "stop": ["a", ""]}', "invalid_value", "stop"),
        (b'{"prompt": []}', "invalid_value", None),
        (b'{"prompt": "x", "logit_bias": {"1": 5}}', "invalid_value", None),
    ],
)
def test_bad_bodies_raise_a_400_naming_the_problem(raw, code, param):
    with pytest.raises(OpenAIError) as caught:
        parse_request(raw, CompletionRequest)
    error = caught.value
    assert (error.status, error.code) == (400, code)
    assert error.param == param or (param and error.param.startswith(param))
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_unknown_fields_are_ignored_and_defaults_of_unsupported_ones_accepted():
    raw = b'{"prompt": "x", "user": "me", "logprobs": null, "presence_penalty": 0}'
    request = parse_request(raw, CompletionRequest)
    assert request.prompts() == ["x"]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("hi", ["hi"]), ([1, 2], [[1, 2]]), (["a", "b"], ["a", "b"]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_prompt_forms(prompt, expected):
    assert CompletionRequest(prompt=prompt).prompts() == expected


def test_chat_content_parts_and_max_completion_tokens():
    request = ChatCompletionRequest(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        max_completion_tokens=5,
        max_tokens=9,
    )
    assert request.messages[0].text() == "ab" and request.requested_max_tokens == 5
