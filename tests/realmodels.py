"""Real third-party models for the tests: transformers models built from small configs, never downloaded.

Each builder gives a fresh model in eval mode and its keyword inputs. The outputs are what serving code
really gets back: ``ModelOutput``s (a dict and a dataclass at once) holding cache objects (a decoder's
``DynamicCache``, an encoder-decoder's ``EncoderDecoderCache``), whose layout changes between
transformers versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="the real-model zoo needs transformers (the test extra)"
)
transformers.logging.set_verbosity_error()

Built = tuple[torch.nn.Module, dict[str, Any]]


def _tokens(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 100, shape, generator=torch.Generator().manual_seed(seed))


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def bert() -> Built:
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return transformers.BertModel(config).eval(), {"input_ids": _tokens((2, 8))}


def vit() -> Built:
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return transformers.ViTModel(config).eval(), {"pixel_values": _images()}


def gpt2() -> Built:
    config = transformers.GPT2Config(
        vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval(), {"input_ids": _tokens((2, 8)), "use_cache": True}


def t5() -> Built:
    config = transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0
    )
    inputs = {"input_ids": _tokens((2, 8)), "decoder_input_ids": _tokens((2, 4), seed=1), "use_cache": True}
    return transformers.T5ForConditionalGeneration(config).eval(), inputs


def clip() -> Built:
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 16,
        },
        vision_config={
            "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64,
        },
        projection_dim=16,
    )  # fmt: skip
    return transformers.CLIPModel(config).eval(), {"input_ids": _tokens((2, 8)), "pixel_values": _images()}


def resnet() -> Built:
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    return transformers.ResNetForImageClassification(config).eval(), {"pixel_values": _images()}


ZOO: dict[str, Callable[[], Built]] = {
    "encoder (BERT-like)": bert,
    "vision transformer (ViT-like)": vit,
    "decoder with its cache (GPT-2-like)": gpt2,
    "encoder-decoder with its cache (T5-like)": t5,
    "dual encoder (CLIP-like)": clip,
    "conv net (ResNet-like)": resnet,
}


class CacheCorruptedEachCall(torch.nn.Module):
    """A decoder whose cache holds a value that differs on every call, deep inside the cache object (the
    third tensor in it, whatever the cache's layout in this transformers version: in 5.x that is
    ``past_key_values.layers[1].keys``)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder, _ = gpt2()
        self.calls = 0

    def forward(self, input_ids: torch.Tensor) -> Any:
        from pytest_dualgpu.engine.trees import iter_tensors

        self.calls += 1
        output = self.decoder(input_ids=input_ids, use_cache=True)
        target = list(iter_tensors(output.past_key_values))[2]
        target[0, 0, 3, 2] += self.calls
        return output
