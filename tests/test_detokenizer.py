"""Incremental detokenization, through the engine's outputs: the streamed text and deltas equal a full decode of
the output at every step, stop strings cut both alike, and a step decodes a few tokens however long the output.

Over two real decoders: SmolLM2's byte-level BPE, and a SentencePiece-style one (leading-space strip, byte
fallback) built here, since none ships offline. The output mixes multi-byte characters split over tokens,
special tokens (skipped, one inside a character's bytes) and double spaces."""

import string
from collections.abc import Iterator

import pytest
from support import generating_model

from trtllm_compile.runtime.engine import EngineConfig, LLMEngine, RequestOutput
from trtllm_compile.runtime.sampling import SamplingParams

TEXT = "Hello world 😀 日本語 the quick café, naïve fox\n\n  jumps over 👩‍💻 the lazy dog. Ünïcödé ✓ 🦊!\n"
LONG = 500
# Ids one step may decode: the window and its prefix each hold at most a character's bytes (4 tokens) twice, and
# a skipped special token.
MAX_IDS_PER_STEP = 16


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from trtllm_compile.models import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)


def _sentencepiece_tokenizer():
    """A Llama-style tokenizer: words with a leading '▁', bytes for anything else, and Llama's decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "Hello world the quick café naïve fox jumps over lazy dog".split()
    pieces = [f"▁{w}" for w in words] + words + ["▁"] + list(string.ascii_letters + string.digits + ".,!\n")
    vocab = [("<unk>", 0.0)] + [(f"<0x{b:02X}>", -20.0) for b in range(256)] + [(p, len(p) - 10.0) for p in pieces]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


TOKENIZERS = {"smollm2": _smollm2_tokenizer, "sentencepiece": _sentencepiece_tokenizer}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


@pytest.fixture(scope="module")
def engine():
    return LLMEngine(generating_model("llama"), None, EngineConfig(max_batch_size=2, max_num_tokens=64))


def _output_ids(tokenizer) -> list[int]:
    """`LONG` tokens of `TEXT` over and over, with the end-of-sequence token (special: skipped) after every 7th
    token, so some fall inside a character's bytes."""
    ids = tokenizer.encode(TEXT, add_special_tokens=False) * LONG
    ids = [i for k, token in enumerate(ids) for i in ((token, tokenizer.eos_token_id) if k % 7 == 6 else (token,))]
    return ids[:LONG]


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _stream(engine, tokenizer, ids: list[int], stop: list[str] = ()) -> Iterator[RequestOutput]:
    """Feed `ids` to one request a token a step, as read-backs do, and yield its outputs until it finishes (by a
    stop string, or at the last token, as by its length)."""
    engine.tokenizer = tokenizer
    request_id = engine.add_request([1, 2, 3], SamplingParams(max_tokens=len(ids), stop=list(stop)))
    request = engine._requests[request_id]
    for token in ids:
        request.output_token_ids.append(token)
        if len(request.output_token_ids) == len(ids):
            engine.scheduler.finish(request_id, "length")
        output = engine._output(request)
        yield output
        if output.finished:
            break
    assert request_id not in engine._requests and request_id not in engine._detokenizers


def test_streamed_text_and_deltas_equal_a_full_decode_at_every_step(engine, tokenizer):
    ids = _output_ids(tokenizer)
    full, streamed = _decode(tokenizer, ids), ""
    for step, output in enumerate(_stream(engine, tokenizer, ids), 1):
        streamed += output.new_text
        assert full.startswith(streamed), f"step {step}"  # nothing streamed is taken back
        expected = _decode(tokenizer, ids[:step])
        if not expected.endswith("\ufffd"):  # else a character's last byte is still to come: held back
            assert (output.text, streamed) == (expected, expected), f"step {step}"
    assert output.finished and output.finish_reason == "length"
    assert streamed == output.text == full
    assert "😀" in streamed and "日本語" in streamed


@pytest.mark.parametrize(
    "stop", [["😀 日"], ["語 the"], ["dog. Ü", "never in the text, held back all the same"], ["fox\n\n  j"]]
)
def test_stop_strings_across_tokens_cut_the_text_and_the_deltas_alike(engine, tokenizer, stop):
    ids = _output_ids(tokenizer)
    full = _decode(tokenizer, ids)
    stop_step = next(n for n in range(1, len(ids) + 1) if stop[0] in _decode(tokenizer, ids[:n]))
    assert stop[0] not in _decode(tokenizer, ids[stop_step - 1 : stop_step])  # it spans several tokens
    outputs = list(_stream(engine, tokenizer, ids, stop))
    assert len(outputs) == stop_step and not any(o.finished for o in outputs[:-1])
    assert outputs[-1].finish_reason == "stop"
    assert "".join(o.new_text for o in outputs) == outputs[-1].text == full[: full.find(stop[0])]


class _CountingTokenizer:
    """Counts the ids each decode call gets."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_each_step_decodes_a_few_tokens_however_long_the_output(engine, tokenizer):
    counting, per_step = _CountingTokenizer(tokenizer), []
    for _ in _stream(engine, counting, _output_ids(tokenizer)):
        per_step.append(counting.decoded - sum(per_step))
    assert len(per_step) == LONG and max(per_step[:-1]) <= MAX_IDS_PER_STEP
    assert per_step[-1] <= MAX_IDS_PER_STEP + LONG  # finished: one full decode, for the exact final text
