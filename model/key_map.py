"""Renaming state-dict keys between an original (Meta) layout and transformers' layout, by one table of rules.

Meta's SAM and SAM 2 checkpoints differ from transformers' ``SamModel`` / ``Sam2Model`` in names, and in how the
linear layers of an MLP are numbered: Meta counts ``layers.0..n-1`` while transformers names them ``proj_in`` /
``layers.0..n-3`` / ``proj_out``. A :class:`KeyMap` holds the rules for one model family and renames keys in both
directions; the converters on top of it add what is not a rename (a buffer listed twice, embeddings stacked into
one table). Tensors are never touched here, so a conversion that only renames is exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rsrs.core.errors import CheckpointError

_META_MLP = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_MLP = re.compile(r"^(proj_in|proj_out|layers\.(\d+))\.(.+)$")


@dataclass(frozen=True)
class Rule:
    """One renaming: ``meta`` <-> ``hf``. ``{}`` stands for a block index; a name ending in ``.`` is a prefix
    (the rest of the key is kept), any other name is a whole key. ``mlp``: the prefix is an MLP whose linear
    layers are renumbered."""

    meta: str
    hf: str
    mlp: bool = False


def _pattern(name: str) -> re.Pattern[str]:
    end = "" if name.endswith(".") else "$"
    return re.compile("^" + re.escape(name).replace(r"\{\}", r"(\d+)") + end)


class KeyMap:
    """The rules of one model family, applied key by key in either direction (first matching rule wins)."""

    def __init__(self, rules: Sequence[Rule], *, meta_layout: str, hf_layout: str) -> None:
        self._rules = [(rule, _pattern(rule.meta), _pattern(rule.hf)) for rule in rules]
        self._layouts = {True: meta_layout, False: hf_layout}

    def rename(self, keys: Iterable[str], *, to_hf: bool) -> dict[str, str]:
        """Each key renamed to the other layout; a key no rule covers raises :class:`CheckpointError`."""
        matches = {key: self._match(key, to_hf=to_hf) for key in keys}
        depths = _mlp_depths(matches.values(), to_hf=to_hf)
        return {key: _renamed(match, depths, to_hf=to_hf) for key, match in matches.items()}

    def _match(self, key: str, *, to_hf: bool) -> _Match:
        for rule, meta, hf in self._rules:
            if m := (meta if to_hf else hf).match(key):
                target = rule.hf if to_hf else rule.meta
                return _Match(rule, key[: m.end()], target.format(*m.groups()), key[m.end() :])
        raise CheckpointError(
            f"unexpected key '{key}' for a {self._layouts[to_hf]} state dict; is this the right kind of checkpoint?"
        )


@dataclass(frozen=True)
class _Match:
    rule: Rule
    prefix: str  # the matched part of the key, indices filled in
    target: str  # what that part becomes in the other layout
    rest: str  # the unmatched rest of the key


def _mlp_depths(matches: Iterable[_Match], *, to_hf: bool) -> dict[str, int]:
    """Number of linear layers of each MLP instance (by its matched prefix), read from the key names."""
    depths: dict[str, int] = {}
    for match in matches:
        if not match.rule.mlp:
            continue
        prefix, rest = match.prefix, match.rest
        if to_hf and (m := _META_MLP.match(rest)):
            n = int(m.group(1)) + 1
        elif not to_hf and (m := _HF_MLP.match(rest)):
            n = int(m.group(2)) + 3 if m.group(2) is not None else 2
        else:
            continue
        depths[prefix] = max(depths.get(prefix, 0), n)
    return depths


def _renamed(match: _Match, depths: dict[str, int], *, to_hf: bool) -> str:
    target = match.target
    if not match.rule.mlp:
        return target + match.rest
    m = (_META_MLP if to_hf else _HF_MLP).match(match.rest)
    if m is None:
        layout = "Meta" if to_hf else "transformers"
        raise CheckpointError(f"'{match.prefix}{match.rest}' is not a linear layer of a {layout} MLP")
    last = depths[match.prefix] - 1
    if to_hf:
        index = int(m.group(1))
        layer = "proj_in" if index == 0 else "proj_out" if index == last else f"layers.{index - 1}"
        return f"{target}{layer}.{m.group(2)}"
    part = m.group(1)
    index = 0 if part == "proj_in" else last if part == "proj_out" else int(m.group(2)) + 1
    return f"{target}layers.{index}.{m.group(3)}"
