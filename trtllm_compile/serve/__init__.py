"""Serving: an OpenAI-compatible HTTP server (`app.py`) and a Triton Inference Server deployment (`triton.py`),
both on the in-flight batching engine (`runtime/engine.py`)."""
