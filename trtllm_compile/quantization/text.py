"""Text for calibration and evaluation: reading corpus files and cutting token streams into fixed windows."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import torch

_DOC_TAG = re.compile(r"^</?doc\b[^>]*>\s*$", re.MULTILINE)


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 corpus file with wiki-dump `<doc ...>` / `</doc>` tag lines removed."""
    with open(path, encoding="utf-8") as f:
        return _DOC_TAG.sub("", f.read())


def token_windows(tokenizer, texts: str | Iterable[str], window: int, max_windows: int | None = None) -> torch.Tensor:
    """[n, window] int64 token ids: the texts' tokens concatenated and cut into non-overlapping windows.

    The tail shorter than a window is dropped. With `max_windows`, only as much text as those windows need is
    tokenized (a prefix grown until it holds enough tokens), so a long corpus costs little.
    """
    if isinstance(texts, str):
        texts = [texts]
    text = "\n\n".join(texts)
    if window < 2:
        raise ValueError(f"window must hold at least 2 tokens, not {window}")
    needed = None if max_windows is None else window * max_windows
    chars = len(text) if needed is None else min(len(text), 8 * needed)  # ~4 chars per token: 2x margin
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False, verbose=False)["input_ids"]
        if needed is None or len(ids) > needed or chars >= len(text):
            break
        chars = min(len(text), 2 * chars)
    count = len(ids) // window if needed is None else min(len(ids) // window, max_windows)
    if count == 0:
        raise ValueError(f"the text holds {len(ids)} tokens, fewer than one window of {window}; give more text")
    return torch.tensor(ids[: count * window], dtype=torch.long).view(count, window)
