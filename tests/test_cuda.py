"""The CUDA backend, on a GPU machine only: ``pytest -m cuda``."""

from __future__ import annotations

import gc

import pytest
import torch
from models import MLP, SmallCNN, TinyTransformer, in_lane_thread, text_inputs

from pytest_dualgpu import ConcurrentOutOfMemoryError, LaneError, dual_infer, place_model
from pytest_dualgpu.engine.backends import lane_streams
from pytest_dualgpu.engine.executor import ThreadsMode

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BUDGET = {"budget": 0.3}


class KernelSleep(torch.nn.Module):
    """GPU positive control: one tiny kernel that spins for a fixed number of clock cycles.

    It occupies almost none of the GPU, so two of them on two streams must run fully at once.
    """

    def __init__(self, cycles: int = 2_000_000) -> None:
        super().__init__()
        self.cycles = cycles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(self.cycles)
        return x * 2


class ItemModel(torch.nn.Module):
    """Synchronizes with the host inside forward: cannot be captured as a CUDA graph."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y * 2 if y.sum().item() > 0 else y


@pytest.fixture
def cuda_input() -> torch.Tensor:
    return torch.ones(8, 64, device="cuda")


@pytest.mark.parametrize("mode", ["streams", "threads", "graphs"])
def test_sleeping_kernels_overlap_in_every_concurrent_mode(mode: str, cuda_input: torch.Tensor) -> None:
    result = dual_infer(KernelSleep(), KernelSleep(), cuda_input, mode=mode, **BUDGET)
    assert result.mode == mode
    assert result.device.startswith("cuda")
    assert result.overlap > 0.8
    assert result.speedup > 1.6
    assert result.correct


def test_sleeping_kernels_do_not_overlap_sequentially(cuda_input: torch.Tensor) -> None:
    result = dual_infer(KernelSleep(), KernelSleep(), cuda_input, mode="sequential", **BUDGET)
    assert result.overlap < 0.1
    assert 0.8 < result.speedup < 1.2


def test_auto_probes_every_mode_and_keeps_the_best(cuda_input: torch.Tensor) -> None:
    result = dual_infer(KernelSleep(), KernelSleep(), cuda_input, **BUDGET)
    assert [probe.mode for probe in result.modes] == ["streams", "threads", "graphs"]
    assert [probe.mode for probe in result.modes if probe.chosen] == [result.mode]
    assert all(probe.error is None for probe in result.modes)


def test_graph_capture_of_a_small_mlp_succeeds(cuda_input: torch.Tensor) -> None:
    first, second = place_model(MLP()), place_model(MLP())
    result = dual_infer(first, second, cuda_input, mode="graphs", **BUDGET)
    assert result.mode == "graphs"
    assert result.modes[0].error is None
    assert result.eager_sequential is not None
    assert result.correct, result.mismatches
    with torch.no_grad():
        torch.testing.assert_close(result.outputs[0], first(cuda_input))


def test_a_host_sync_falls_back_from_graphs_with_the_reason(cuda_input: torch.Tensor) -> None:
    current = torch.cuda.current_stream()
    result = dual_infer(place_model(ItemModel()), place_model(MLP()), cuda_input, mode="graphs", **BUDGET)
    assert result.mode == "threads"
    graphs = next(probe for probe in result.modes if probe.mode == "graphs")
    assert graphs.error is not None
    assert graphs.error.startswith("graph capture of lane 'ItemModel' failed")
    assert any("ran 'threads' instead" in warning for warning in result.warnings)
    assert result.correct
    assert torch.cuda.current_stream() == current
    torch.cuda.empty_cache()
    after = dual_infer(KernelSleep(), KernelSleep(), cuda_input, mode="graphs", **BUDGET)
    assert after.mode == "graphs"


@pytest.mark.parametrize("mode", ["streams", "threads", "graphs"])
def test_real_models_are_correct_on_cuda_in_every_mode(mode: str) -> None:
    images = torch.randn(4, 3, 32, 32, device="cuda")
    result = dual_infer(
        place_model(SmallCNN()),
        place_model(MLP(width=32)),
        images,
        images.mean(dim=(1, 2)),
        mode=mode,
        **BUDGET,
    )
    assert result.mode == mode
    assert result.correct, result.mismatches


@pytest.mark.parametrize("mode", ["auto", "streams", "threads", "graphs"])
def test_an_image_and_a_text_model_are_correct_on_cuda(mode: str) -> None:
    images = torch.randn(4, 3, 32, 32, device="cuda")
    text = {key: value.cuda() for key, value in text_inputs().items()}
    result = dual_infer(
        place_model(SmallCNN()), place_model(TinyTransformer()), images, text, mode=mode, **BUDGET
    )
    assert result.correct, result.mismatches
    if mode != "auto" and result.mode != mode:
        # The transformer's fused kernels may synchronize internally; then the reason must be on record.
        assert mode == "graphs"
        graphs = next(probe for probe in result.modes if probe.mode == "graphs")
        assert graphs.error is not None


def test_peak_memory_is_reported(cuda_input: torch.Tensor) -> None:
    result = dual_infer(
        place_model(MLP(width=1024)),
        place_model(MLP(width=1024)),
        torch.ones(256, 1024, device="cuda"),
        **BUDGET,
    )
    assert result.memory is not None
    assert all(peak > 0 for peak in result.memory.alone)
    assert result.memory.sequential >= max(result.memory.alone) * 0.9
    assert result.memory.concurrent > 0


def test_lane_streams_are_created_once_per_device_and_lane() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    assert lane_streams(device, 3) == lane_streams(device, 3)
    assert len(set(lane_streams(device, 3))) == 3


class Hog(torch.nn.Module):
    """Fine alone and in its first calls on its lane thread (made alone too); in the concurrent run holds
    256 MiB and then asks for more than the GPU has."""

    def __init__(self) -> None:
        super().__init__()
        self.lane_thread_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if in_lane_thread():
            self.lane_thread_calls += 1
        if self.lane_thread_calls > ThreadsMode.FIRST_CALLS:
            held = torch.empty(256 * 2**20, dtype=torch.uint8, device=x.device)
            total = torch.cuda.get_device_properties(x.device).total_memory
            held += torch.empty(2 * total, dtype=torch.uint8, device=x.device)[: held.numel()]
        return x + 1


def _settled_allocation() -> int:
    """Allocated bytes, without the cuBLAS workspaces that new (handle, stream) pairs create on first use."""
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    gc.collect()
    return torch.cuda.memory_allocated()


def test_out_of_memory_names_the_run_and_frees_the_memory(cuda_input: torch.Tensor) -> None:
    model = place_model(MLP())
    dual_infer(model, place_model(MLP()), cuda_input, mode="threads", **BUDGET)
    before = _settled_allocation()
    with pytest.raises(ConcurrentOutOfMemoryError) as info:
        dual_infer(model, Hog(), cuda_input, mode="threads", **BUDGET)
    message = str(info.value)
    assert "out of device memory in the concurrent run (threads) (lane 'Hog')" in message
    assert "peak memory measured alone: MLP" in message
    del info
    assert _settled_allocation() <= before
    assert dual_infer(model, place_model(MLP()), cuda_input, **BUDGET).correct


class StreamRaiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("fails after warm-up")
        return x + 1


def test_a_raising_lane_in_streams_mode_leaves_the_next_call_working(cuda_input: torch.Tensor) -> None:
    with pytest.raises(LaneError, match="lane 'StreamRaiser' raised RuntimeError"):
        dual_infer(StreamRaiser(), KernelSleep(), cuda_input, mode="streams", **BUDGET)
    result = dual_infer(KernelSleep(), KernelSleep(), cuda_input, mode="streams", **BUDGET)
    assert result.overlap > 0.8


@pytest.mark.parametrize("mode", ["streams", "threads"])
def test_profiled_sleeping_kernels_overlap_on_their_streams(mode: str, cuda_input: torch.Tensor) -> None:
    result = dual_infer(KernelSleep(), KernelSleep(), cuda_input, mode=mode, profile=True, **BUDGET)
    assert result.kernel_overlap is not None, result.warnings
    assert result.kernel_overlap > 0.8
    streams = [line for line in result.timelines["kernels"] if line.intervals]
    assert len(streams) >= 2
    assert all(line.lane.startswith("stream ") for line in streams)
    if mode == "threads":  # launches come from the lane threads, so each stream is named after its lane
        assert any("KernelSleep" in line.lane for line in streams), [line.lane for line in streams]


def test_profiled_kernels_back_to_back_do_not_overlap(cuda_input: torch.Tensor) -> None:
    result = dual_infer(KernelSleep(), KernelSleep(), cuda_input, mode="sequential", profile=True, **BUDGET)
    assert result.kernel_overlap == 0.0
