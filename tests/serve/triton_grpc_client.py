"""A tritonclient gRPC client for test_triton.py, run with the PyTriton environment's Python (tritonclient comes
with PyTriton there): `python triton_grpc_client.py HOST:PORT MODEL MAX_TOKENS PROMPT...`.

Sends the prompts at once to the one-shot model (the dynamic batcher may group them) and one by one through a
gRPC stream to `MODEL_stream`; prints {"batched": [...], "streamed": [[chunk, ...], ...]} as JSON.
"""

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient

TIMEOUT_S = 300


def _inputs(prompt: str, max_tokens: int, batched: bool) -> list:
    shape = [1, 1] if batched else [1]
    values = [("text_input", "BYTES", prompt.encode(), object), ("max_tokens", "INT32", max_tokens, np.int32)]
    values.append(("temperature", "FP32", 0.0, np.float32))
    tensors = []
    for name, triton_type, value, dtype in values:
        tensor = grpcclient.InferInput(name, shape, triton_type)
        tensor.set_data_from_numpy(np.array(value, dtype=dtype).reshape(shape))
        tensors.append(tensor)
    return tensors


def main() -> None:
    url, model, max_tokens, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    for index, prompt in enumerate(prompts):
        client.async_infer(
            model,
            _inputs(prompt, max_tokens, True),
            callback=lambda result, error, i=index: answers.put((i, result, error)),  # called with keywords
        )
    batched = [None] * len(prompts)
    for _ in prompts:
        index, result, error = answers.get(timeout=TIMEOUT_S)
        if error is not None:
            raise SystemExit(f"batched request failed: {error}")
        batched[index] = {
            "text": result.as_numpy("text_output").reshape(-1)[0].decode(),
            "finish_reason": result.as_numpy("finish_reason").reshape(-1)[0].decode(),
        }

    chunks: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: chunks.put((result, error)))
    streamed = []
    for prompt in prompts:
        client.async_stream_infer(f"{model}_stream", _inputs(prompt, max_tokens, False))
        pieces = []
        while True:
            result, error = chunks.get(timeout=TIMEOUT_S)
            if error is not None:
                raise SystemExit(f"stream failed: {error}")
            pieces.append(result.as_numpy("text_output").reshape(-1)[0].decode())
            if result.as_numpy("finish_reason").reshape(-1)[0]:
                break
        streamed.append(pieces)
    client.stop_stream()
    print(json.dumps({"batched": batched, "streamed": streamed}))


if __name__ == "__main__":
    main()
