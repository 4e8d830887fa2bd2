"""Text tokenisation to ids plus a mask of real (non-padding) tokens.

Real presets use SigLIP's own tokenizer, found beside the pretrained weights. Random-init and demo models use
a byte-level tokenizer that needs no files, so they work on a machine without any download. Both pad to a fixed
``length`` (``padding="max_length"``, RSRefSeg) or to the longest query of the call, truncated at ``length``
(``padding="longest"``, as RSRefSeg 2's official code tokenizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

Padding = Literal["max_length", "longest"]


@dataclass(frozen=True)
class TokenizedText:
    """Token ids ``Q x L`` (int64) and ``valid`` ``Q x L`` (bool, True for real tokens incl. end-of-text)."""

    input_ids: torch.Tensor
    valid: torch.Tensor


class Tokenizer(Protocol):
    """Turns queries into :class:`TokenizedText`."""

    def __call__(self, texts: list[str]) -> TokenizedText: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 = pad, 1 = end of text, 2 = unused, bytes at 3..258 (vocabulary 259)."""

    vocab_size = 259
    pad_id, eos_id, offset = 0, 1, 3

    def __init__(self, *, length: int, padding: Padding = "max_length") -> None:
        self.length = length
        self.padding = padding

    def __call__(self, texts: list[str]) -> TokenizedText:
        rows = [
            [b + self.offset for b in text.strip().lower().encode("utf-8")][: self.length - 1] + [self.eos_id]
            for text in texts
        ]
        L = self.length if self.padding == "max_length" else max(len(row) for row in rows)
        ids = torch.full((len(texts), L), self.pad_id, dtype=torch.long)  # Q x L
        valid = torch.zeros((len(texts), L), dtype=torch.bool)  # Q x L
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            valid[i, : len(row)] = True
        return TokenizedText(input_ids=ids, valid=valid)


class PretrainedTokenizer:
    """The pretrained model's tokenizer (SigLIP's, SigLIP2's Gemma), found beside its weights."""

    def __init__(self, path: str | Path, *, length: int, padding: Padding = "max_length") -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.length = length
        self.padding = padding

    def __call__(self, texts: list[str]) -> TokenizedText:
        out = self._tok(
            [t.strip().lower() for t in texts],
            padding=self.padding,
            truncation=True,
            max_length=self.length,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return TokenizedText(input_ids=out["input_ids"], valid=out["attention_mask"].bool())
