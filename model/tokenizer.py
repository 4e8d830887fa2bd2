"""Text tokenisation to ids plus a mask of real (non-padding) tokens.

Real presets use SigLIP's own tokenizer, found beside the pretrained weights. Random-init and demo models use
a byte-level tokenizer that needs no files, so they work on a machine without any download. Both pad to a fixed
``length`` (``padding="max_length"``, RSRefSeg) or to the longest query of the call, truncated at ``length``
(``padding="longest"``, as RSRefSeg 2's official code tokenizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from rsrs.core.errors import CheckpointError, ConfigError
from rsrs.model.weights import resolve_pretrained

if TYPE_CHECKING:
    import torch

    from rsrs.model.rsrefseg.config import SiglipSpec
    from rsrs.model.rsrefseg2.config import Siglip2Spec

Padding = Literal["max_length", "longest"]


@dataclass(frozen=True)
class TokenizedText:
    """Token ids ``Q x L`` (int64) and ``valid`` ``Q x L`` (bool, True for real tokens incl. end-of-text)."""

    input_ids: torch.Tensor
    valid: torch.Tensor


class Tokenizer(Protocol):
    """Turns queries into :class:`TokenizedText` of at most ``length`` tokens."""

    length: int

    def __call__(self, texts: list[str]) -> TokenizedText: ...

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text before any truncation (end-of-text included)."""
        ...


class QueryTooLongError(ConfigError):
    """A query has more tokens than the model reads: it would be cut silently."""


def check_query_lengths(tokenizer: Tokenizer, texts: Sequence[str]) -> None:
    """Raise :class:`QueryTooLongError` for the first query longer than the model's text length."""
    for text, n in zip(texts, tokenizer.count(list(texts)), strict=True):
        if n > tokenizer.length:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise QueryTooLongError(
                f'query "{shown}" has {n} tokens but the model reads at most {tokenizer.length}; shorten it'
            )


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 = pad, 1 = end of text, 2 = unused, bytes at 3..258 (vocabulary 259)."""

    vocab_size = 259
    pad_id, eos_id, offset = 0, 1, 3

    def __init__(self, *, length: int, padding: Padding = "max_length") -> None:
        self.length = length
        self.padding = padding

    def _bytes(self, text: str) -> bytes:
        return text.strip().lower().encode("utf-8")

    def count(self, texts: list[str]) -> list[int]:  # noqa: D102
        return [len(self._bytes(t)) + 1 for t in texts]

    def __call__(self, texts: list[str]) -> TokenizedText:
        import torch  # lazily: checking a job's query lengths (count) needs no torch

        rows = [[b + self.offset for b in self._bytes(text)][: self.length - 1] + [self.eos_id] for text in texts]
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

    def count(self, texts: list[str]) -> list[int]:  # noqa: D102
        return [len(ids) for ids in self._tok([t.strip().lower() for t in texts])["input_ids"]]

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


def build_tokenizer(
    spec: SiglipSpec | Siglip2Spec,
    *,
    pretrained: bool,
    weights_root: str | Path | None,
    padding: Padding = "max_length",
    download: bool = True,
) -> Tokenizer:
    """The text tokenizer the SigLIP spec asks for; random-init models (``pretrained=False``) use bytes."""
    if spec.tokenizer == "bytes" or not pretrained:
        return ByteTokenizer(length=spec.text_length, padding=padding)
    if not spec.pretrained:
        raise CheckpointError("siglip.tokenizer 'pretrained' needs siglip.pretrained (a hub id or directory)")
    path = resolve_pretrained(spec.pretrained, what="SigLIP tokenizer", weights_root=weights_root, download=download)
    return PretrainedTokenizer(path, length=spec.text_length, padding=padding)
