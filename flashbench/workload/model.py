"""A small decoder-only transformer language model over bytes, in MLX."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import mlx.nn as nn

VOCAB = 256  # byte-level tokens


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the transformer."""

    d_model: int = 192
    n_layers: int = 3
    n_heads: int = 4
    context: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for field in ("d_model", "n_layers", "n_heads", "context"):
            if getattr(self, field) < 1:
                raise ValueError(f"invalid workload.{field} {getattr(self, field)}: expected a positive integer")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"invalid workload.d_model {self.d_model}: it must be a multiple of workload.n_heads ({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"invalid workload.dropout {self.dropout}: expected 0 <= dropout < 1")


class Block(nn.Module):
    """Pre-norm attention and MLP with residual connections."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.d_model)
        self.attention = nn.MultiHeadAttention(config.d_model, config.n_heads)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp_in = nn.Linear(config.d_model, 4 * config.d_model)
        self.mlp_out = nn.Linear(4 * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        h = self.attention_norm(x)
        x = x + self.dropout(self.attention(h, h, h, mask))
        h = self.mlp_out(nn.gelu(self.mlp_in(self.mlp_norm(x))))
        return x + self.dropout(h)


class ByteTransformer(nn.Module):
    """Next-byte prediction with learned position embeddings."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, config.d_model)
        self.position_embedding = nn.Embedding(config.context, config.d_model)
        self.blocks = [Block(config) for _ in range(config.n_layers)]
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB, bias=False)

    def __call__(self, tokens: mx.array) -> mx.array:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.position_embedding(mx.arange(length))
        mask = nn.MultiHeadAttention.create_additive_causal_mask(length)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def loss_fn(model: ByteTransformer, inputs: mx.array, targets: mx.array) -> mx.array:
    logits = model(inputs)
    return nn.losses.cross_entropy(logits, targets, reduction="mean")


def parameter_count(model: nn.Module) -> int:
    from mlx.utils import tree_flatten

    return sum(value.size for _, value in tree_flatten(model.parameters()))
