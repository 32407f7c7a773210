"""The two small models: a CNN classifier and an LSTM language model.

Both are deliberately tiny stand-ins (the paper trains ResNets and a 3-layer
AWD-LSTM): they have to train dozens of times on two shared CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv3×3(c₁)-ReLU-maxpool-conv3×3(c₂)-ReLU-maxpool-linear(10), no batch norm.

    No batch norm on purpose: its running statistics are buffers, not parameters,
    so Lookahead would not interpolate them and the slow-weight evaluation would
    mix slow weights with fast statistics.

    Args:
        side: image side (8 for digits, 28 for MNIST); must be divisible by 4.
        channels: the two convolutions' output channels.
        classes: number of classes.
    """

    def __init__(self, side: int, channels: tuple[int, int] = (16, 32), classes: int = 10) -> None:
        super().__init__()
        if side % 4:
            raise ValueError(f"side must be divisible by 4, got {side}")
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(c2 * (side // 4) ** 2, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class LSTMLanguageModel(nn.Module):
    """Embedding-dropout-LSTM-dropout-linear, with tied input and output embeddings.

    Args:
        vocabulary_size: number of tokens.
        width: embedding and hidden size (equal, so the weights can be tied).
        layers: stacked LSTM layers.
        dropout: dropout on the embeddings, between layers and on the outputs.
    """

    def __init__(self, vocabulary_size: int, width: int, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, width)
        self.lstm = nn.LSTM(
            width, width, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(width, vocabulary_size)
        self.decoder.weight = self.embedding.weight  # tied (Press & Wolf 2017), as AWD-LSTM
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits of the next token, shape ``(batch, time, vocabulary)``, and the new LSTM state."""
        hidden, state = self.lstm(self.dropout(self.embedding(tokens)), state)
        return self.decoder(self.dropout(hidden)), state
