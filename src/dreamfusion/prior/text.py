"""The prior's own text side: a word tokenizer over the world's vocabulary and a small transformer.

Nothing is downloaded: the vocabulary is the list of words the world's captions use (saved with
the weights), and the encoder is trained with the U-Net. Every sequence starts with a START token
whose output is the pooled text vector; the empty prompt is START alone, the unconditional input
of classifier-free guidance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamfusion.prior.layers import Attention, FeedForward

PAD, START = 0, 1
"""Special token ids; words take the ids from 2 on, in vocabulary order."""

_TOKEN = re.compile(r"[a-z0-9]+|,")


class Tokenizer:
    """Words (and commas) to ids. An unknown word is an error, never silently dropped."""

    def __init__(self, words: Sequence[str], max_length: int) -> None:
        if len(set(words)) != len(words):
            raise ValueError("tokenizer words must be unique")
        self.words = tuple(words)
        self.max_length = max_length
        self.ids = {w: i + 2 for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 2

    def split(self, prompt: str) -> list[str]:
        """Lower-cased words and commas; other punctuation separates words and is dropped."""
        return _TOKEN.findall(prompt.lower())

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """(N,) prompts -> (N, max_length) long: START, the word ids, then PAD.

        Raises ValueError (one line) on unknown words or a prompt longer than max_length - 1 words.
        """
        if isinstance(prompts, str):
            raise TypeError("encode takes a sequence of prompts, not one string")
        rows = []
        for prompt in prompts:
            words = self.split(prompt)
            unknown = sorted({w for w in words if w not in self.ids})
            if unknown:
                known = ", ".join(w for w in self.words if w != ",")
                raise ValueError(
                    f"the bundled prior does not know the word(s) {', '.join(repr(w) for w in unknown)} in "
                    f"{prompt!r}; it knows only: {known}; for other prompts use --guidance stable-diffusion"
                )
            if len(words) + 1 > self.max_length:
                raise ValueError(
                    f"prompt {prompt!r} has {len(words)} words; the bundled prior reads at most "
                    f"{self.max_length - 1}"
                )
            ids = [START] + [self.ids[w] for w in words]
            rows.append(ids + [PAD] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).view(len(rows), self.max_length)


@dataclass
class TextStates:
    """The encoded prompts the U-Net attends to."""

    tokens: Tensor  # (N, L, D) per-token states
    mask: Tensor  # (N, L) bool, True where a token is present (START and words)
    pooled: Tensor  # (N, D) the START token's state

    def __getitem__(self, index: Tensor | slice) -> TextStates:
        return TextStates(self.tokens[index], self.mask[index], self.pooled[index])

    def to(self, device: torch.device | str) -> TextStates:
        return TextStates(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    @staticmethod
    def cat(parts: Sequence[TextStates]) -> TextStates:
        return TextStates(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
        )


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm(x), key_mask=mask)
        return x + self.ff(x)


class TextEncoder(nn.Module):
    """Token ids (N, L) -> TextStates: embeddings plus learned positions through pre-norm blocks."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> TextStates:
        mask = ids != PAD  # (N, L)
        x = self.embed(ids) + self.position[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        return TextStates(tokens=x, mask=mask, pooled=x[:, 0])
