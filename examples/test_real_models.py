"""Real models from Hugging Face transformers (built from small configs, no downloads) under the markers:
a text encoder beside an image encoder, and a decoder whose output carries its cache object."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "transformers", reason="the real-model examples need transformers: pip install -e '.[examples]'"
)

from hf_models import decoder, decoder_inputs, image_encoder, image_inputs, text_encoder, text_inputs


@pytest.mark.dualgpu_correct
@pytest.mark.dualgpu_sync(trials=4)
@pytest.mark.dualgpu_speedup(min=1.1)
@pytest.mark.dualgpu_interference(max_slowdown=1.5, lanes=["BertModel"])  # the latency-critical one
def test_text_encoder_beside_image_encoder(dual_infer, place_model):
    result = dual_infer(
        place_model(text_encoder()), place_model(image_encoder()), text_inputs(), image_inputs()
    )
    assert result.lane_names == ["BertModel", "ViTModel"]


@pytest.mark.dualgpu_correct
def test_decoder_with_its_cache_beside_a_copy(dual_infer, place_model):
    """The outputs hold a cache object: the comparison walks into it, layer by layer, key by key."""
    dual_infer(place_model(decoder()), place_model(decoder()), decoder_inputs())
