"""Small built-in models for ``dualgpu demo`` and for trying the command without code of your own.

Each has an ``example_inputs(batch)`` method, so ``dualgpu profile pytest_dualgpu.demo:MLP
pytest_dualgpu.demo:SmallCNN`` needs no input specs. They are sized to finish a demo in seconds on a
laptop CPU while still doing enough arithmetic per call for concurrency to matter on a GPU.
"""

from __future__ import annotations

import torch
from torch import nn

DEMO_MODELS = ("MLP", "SmallCNN", "TinyTransformer")


class MLP(nn.Module):
    """Four 512-wide linear layers: matrix multiplications only."""

    def __init__(self, width: int = 512, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.body(x)
        return output

    def example_inputs(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, self.width)


class SmallCNN(nn.Module):
    """Three convolution blocks on 64x64 images: an image encoder in miniature."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = 3
        for width in (16, 32, 64):
            blocks += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(images).flatten(1))
        return logits

    def example_inputs(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, 64, 64)


class TinyTransformer(nn.Module):
    """A two-layer transformer encoder over token ids: a text encoder in miniature."""

    def __init__(self, vocab: int = 1000, width: int = 128, length: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=4 * width, batch_first=True, dropout=0.0
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.vocab = vocab
        self.length = length

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.encoder(self.embed(tokens))
        return hidden.mean(dim=1)

    def example_inputs(self, batch: int) -> torch.Tensor:
        return torch.randint(0, self.vocab, (batch, self.length))
