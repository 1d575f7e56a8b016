"""An image encoder beside a text encoder on one device, checked with every dualgpu marker."""

from __future__ import annotations

import pytest
import torch
from zoo import ImageEncoder, TextEncoder, images, tokens


@pytest.mark.dualgpu_correct
@pytest.mark.dualgpu_sync
@pytest.mark.dualgpu_speedup(min=1.1)
@pytest.mark.dualgpu_memory(max_ratio=2.5)
def test_image_and_text_encoders_share_the_device(dual_infer, place_model):
    torch.manual_seed(0)
    image_model = place_model(ImageEncoder())
    text_model = place_model(TextEncoder())
    result = dual_infer(image_model, text_model, images(), {"tokens": tokens()})
    assert result.lane_names == ["ImageEncoder", "TextEncoder"]


@pytest.mark.dualgpu_cuda
@pytest.mark.dualgpu_correct(rtol=1e-2, atol=1e-2)
@pytest.mark.dualgpu_memory(max_bytes="4GiB")
def test_half_precision_with_a_second_image_model(dual_infer, place_model):
    torch.manual_seed(0)
    models = [
        place_model(ImageEncoder(), dtype=torch.float16, channels_last=True),
        place_model(ImageEncoder(), dtype=torch.float16, channels_last=True),
        place_model(TextEncoder()),
    ]
    pictures = images().half().contiguous(memory_format=torch.channels_last)
    dual_infer.many(
        models, [pictures, pictures, {"tokens": tokens()}], names=["photos", "thumbnails", "captions"]
    )
