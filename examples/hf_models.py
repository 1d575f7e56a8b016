"""Real models from Hugging Face transformers, built from small configs (nothing is downloaded): a text
encoder (BERT-like), an image encoder (a vision transformer) and a decoder that returns its cache
(GPT-2-like). Each factory returns a model in eval mode; each inputs function returns the keyword
arguments that model takes, for a batch size (the ``dualgpu`` command passes it).
"""

from __future__ import annotations

import torch
import transformers

transformers.logging.set_verbosity_error()


def text_encoder() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512
    )
    return transformers.BertModel(config).eval()


def image_encoder() -> torch.nn.Module:
    config = transformers.ViTConfig(
        image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512,
    )  # fmt: skip
    return transformers.ViTModel(config).eval()


def decoder() -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=1000, n_positions=128, n_embd=128, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def text_inputs(batch: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 1000, (batch, 64), generator=generator)}


def image_inputs(batch: int = 4) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))}


def decoder_inputs(batch: int = 4) -> dict[str, object]:
    return {**text_inputs(batch), "use_cache": True}
