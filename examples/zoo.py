"""Small models built from torch.nn for the examples: the classic linear pair, an image and a text encoder."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """A stack of linear layers: the model of the classic "dual model inference" snippet."""

    def __init__(self, width: int = 512, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ImageEncoder(nn.Module):
    """A small CNN: images in, one embedding per image out."""

    def __init__(self, width: int = 32, embedding: int = 128) -> None:
        super().__init__()

        def block(inputs: int, outputs: int) -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(),
            )

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, embedding)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


class TextEncoder(nn.Module):
    """A small transformer encoder: token ids in, one embedding per sequence out."""

    def __init__(self, vocab: int = 1000, width: int = 128, layers: int = 2, length: int = 64) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=4 * width, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.tokens(tokens) + self.positions[: tokens.shape[1]]
        return self.encoder(hidden).mean(dim=1)


def images(batch: int = 16, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def tokens(batch: int = 16, length: int = 64, vocab: int = 1000) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length))


class Detector(nn.Module):
    """A detector-like producer: a feature map and a score per location for each image."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.scores = nn.Conv2d(width, 1, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        return {"features": features, "scores": self.scores(features).sigmoid()}


class Classifier(nn.Module):
    """A classifier-like consumer: pools the detector's features where it scored high, then classifies."""

    def __init__(self, width: int = 32, hidden: int = 1024, classes: int = 10) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        weights = scores / scores.sum(dim=(2, 3), keepdim=True)
        pooled = (features * weights).sum(dim=(2, 3))
        return self.head(pooled)
