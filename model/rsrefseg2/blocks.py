"""Building blocks of the cascaded prompter: attention, a two-layer MLP, and a block of named operations.

RSRefSeg 2's official code configures each prompter block by a list of operation names (``self_attn_query_query1``,
``norm_img_1``, ``cross_attn_prompt_text_1``, ...). The list fixes both the order of the operations and the
parameter names: every operation is a sub-module named after it. :func:`parse_operation` reads a name as (kind,
target stream, source stream); :class:`OperationBlock` builds one sub-module per name and applies them in order to a
dict of named token streams (``query1``/``query2``/``text`` in the two-query blocks, ``prompt``/``img``/``text`` in
the others).

Every operation updates its target stream: attention and MLP residually (``x = x + op(x)``), LayerNorm in place
(``x = norm(x)``). Attention takes ``q = target + pe[target]``, ``k = source + pe[source]``, ``v = source`` (a stream
without a positional embedding adds nothing); self-attention is the case source = target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rsrs.model.errors import ConfigError

Kind = Literal["self_attn", "cross_attn", "mlp", "norm"]

# Operation-name prefixes of the official code -> (kind, target stream, source stream). Longest prefixes first.
_PREFIXES: tuple[tuple[str, Kind, str, str], ...] = (
    ("cross_attn_query_query_query1_query2", "cross_attn", "query1", "query2"),
    ("cross_attn_query_query_query2_query1", "cross_attn", "query2", "query1"),
    ("cross_attn_query_text_query1_text", "cross_attn", "query1", "text"),
    ("cross_attn_query_text_query2_text", "cross_attn", "query2", "text"),
    ("self_attn_query_query1", "self_attn", "query1", "query1"),
    ("self_attn_query_query2", "self_attn", "query2", "query2"),
    ("cross_attn_prompt_text", "cross_attn", "prompt", "text"),
    ("cross_attn_prompt_img", "cross_attn", "prompt", "img"),
    ("cross_attn_img_text", "cross_attn", "img", "text"),
    ("self_attn_prompt", "self_attn", "prompt", "prompt"),
    ("self_attn_text", "self_attn", "text", "text"),
    ("mlp_query1", "mlp", "query1", "query1"),
    ("mlp_query2", "mlp", "query2", "query2"),
    ("mlp_prompt", "mlp", "prompt", "prompt"),
    ("mlp_img", "mlp", "img", "img"),
    ("mlp_text", "mlp", "text", "text"),
    ("norm_query1", "norm", "query1", "query1"),
    ("norm_query2", "norm", "query2", "query2"),
    ("norm_prompt", "norm", "prompt", "prompt"),
    ("norm_img", "norm", "img", "img"),
    ("norm_text", "norm", "text", "text"),
)


@dataclass(frozen=True)
class Operation:
    """One named step of a block: ``kind`` applied to stream ``target`` (reading ``source`` when attending)."""

    name: str
    kind: Kind
    target: str
    source: str


def parse_operation(name: str) -> Operation:
    """The operation an official operation name stands for, e.g. ``cross_attn_img_text_1`` -> img attends to text."""
    for prefix, kind, target, source in _PREFIXES:
        if name.startswith(prefix):
            return Operation(name=name, kind=kind, target=target, source=source)
    raise ConfigError(
        f"unknown prompter operation '{name}'; names start with one of {', '.join(p[0] for p in _PREFIXES)}"
    )


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections through an ``internal_dim`` bottleneck.

    Args:
        query_dim: width of the queries (and of the output).
        kv_dim: width of keys and values.
        internal_dim: width of the projected q/k/v (split over ``num_heads``).
        num_heads: attention heads.
    """

    def __init__(self, *, query_dim: int, kv_dim: int, internal_dim: int, num_heads: int) -> None:
        super().__init__()
        if internal_dim % num_heads:
            raise ConfigError(f"prompter internal_dim {internal_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(query_dim, internal_dim)
        self.k_proj = nn.Linear(kv_dim, internal_dim)
        self.v_proj = nn.Linear(kv_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, query_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: B x Nq x query_dim; k, v: B x Nk x kv_dim  ->  B x Nq x query_dim"""
        B, Nq, _ = q.shape
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:  # B x N x I -> B x heads x N x I/heads
            return x.reshape(B, x.shape[1], heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v)))
        return self.out_proj(out.transpose(1, 2).reshape(B, Nq, -1))


class MLP(nn.Module):
    """Linear -> GELU -> Linear, parameters under ``layers.0`` and ``layers.1`` (the official names)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_dim, hidden_dim), nn.Linear(hidden_dim, out_dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ... x in_dim -> ... x out_dim"""
        return self.layers[1](F.gelu(self.layers[0](x)))


class OperationBlock(nn.Module):
    """Named operations over named token streams, applied in the order given (one sub-module per name).

    Args:
        operations: official operation names, in order; each becomes a sub-module of that name.
        dims: width of each stream the operations touch, e.g. ``{"prompt": 256, "img": 1152, "text": 1152}``.
        num_heads, internal_dim: of every attention; mlp_dim: hidden width of every MLP.
    """

    def __init__(
        self, operations: Sequence[str], *, dims: Mapping[str, int], num_heads: int, mlp_dim: int, internal_dim: int
    ) -> None:
        super().__init__()
        if len(set(operations)) != len(operations):
            raise ConfigError(f"prompter operations must not repeat a name: {list(operations)}")
        self.operations = [parse_operation(name) for name in operations]
        for op in self.operations:
            width = dims[op.target]
            if op.kind == "norm":
                module: nn.Module = nn.LayerNorm(width)
            elif op.kind == "mlp":
                module = MLP(width, mlp_dim, width)
            else:
                module = Attention(query_dim=width, kv_dim=dims[op.source], internal_dim=internal_dim,
                                   num_heads=num_heads)  # fmt: skip
            self.add_module(op.name, module)

    def forward(
        self, streams: Mapping[str, torch.Tensor], pe: Mapping[str, torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """Apply every operation in order.

        streams: name -> B x N_s x dim_s tokens; pe: name -> positional embedding broadcastable to the stream, or
        None. Returns the updated streams (streams no operation touches pass through).
        """
        x = dict(streams)
        for op in self.operations:
            module = getattr(self, op.name)
            target = x[op.target]
            if op.kind == "norm":
                x[op.target] = module(target)
            elif op.kind == "mlp":
                x[op.target] = target + module(target)
            else:
                source = x[op.source]
                q = _plus(target, pe.get(op.target))
                k = _plus(source, pe.get(op.source))
                x[op.target] = target + module(q, k, source)
        return x


def _plus(x: torch.Tensor, pe: torch.Tensor | None) -> torch.Tensor:
    return x if pe is None else x + pe
