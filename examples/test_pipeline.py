"""A detector feeding a classifier: the classifier works on one micro-batch while the detector does the next.

``dual_infer.pipeline`` splits the batch into micro-batches, runs the detector on its own stream (on a CPU,
its own thread) and hands each output to the classifier's stream through an event. ``dualgpu_sync`` reruns
the pipeline with random delays injected, so a hand-over that does not wait would be caught;
``dualgpu_correct`` checks the pipelined result against the classifier on the whole batch's detections.
"""

from __future__ import annotations

import pytest
import torch
from zoo import Classifier, Detector, images


@pytest.mark.dualgpu_sync(trials=8)
@pytest.mark.dualgpu_correct(rtol=1e-4, atol=1e-5)  # micro-batches may take other kernels than one batch
def test_detector_feeds_classifier(dual_infer, place_model):
    torch.manual_seed(0)
    detector, classifier = place_model(Detector()), place_model(Classifier())
    result = dual_infer.pipeline(detector, classifier, images(batch=32), micro_batches=4)
    assert result.outputs[1].shape == (32, 10)
    assert result.ideal_speedup <= 2.0
