"""The examples, run as a newcomer runs them: the example suite with the report (run once for the whole
session, by conftest's ``example_run``), and the quickstart script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from examplesuite import ExampleRun

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_the_example_suite_passes_on_cpu_and_reports_every_call(example_run: ExampleRun) -> None:
    completed = example_run.completed
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "6 passed, 1 skipped" in completed.stdout
    saved = json.loads((example_run.folder / "dualgpu.json").read_text())
    rows = {row["nodeid"].split("::")[1]: row for row in saved["results"]}
    assert set(rows) == {
        "test_on_the_default_stream_they_run_one_after_the_other",
        "test_dual_infer_runs_them_at_once",
        "test_image_and_text_encoders_share_the_device",
        "test_detector_feeds_classifier",
        "test_text_encoder_beside_image_encoder",
        "test_decoder_with_its_cache_beside_a_copy",
    }
    assert rows["test_decoder_with_its_cache_beside_a_copy"]["verdicts"]["correct"] == "pass"
    assert rows["test_text_encoder_beside_image_encoder"]["lanes"][0]["name"] == "BertModel"
    pipeline = rows["test_detector_feeds_classifier"]
    assert (
        pipeline["micro_batches"],
        pipeline["sync"]["race_trials"],
        pipeline["sync"]["race_failures"],
    ) == (4, 8, 0)
    assert pipeline["verdicts"]["correct"] == pipeline["verdicts"]["sync"] == "pass"
    assert rows["test_on_the_default_stream_they_run_one_after_the_other"]["overlap"] < 0.1
    assert rows["test_image_and_text_encoders_share_the_device"]["verdicts"] == {
        "correct": "pass",
        "sync": "pass",
        "speedup": "not judged (cpu)",
        "memory": "not judged (cpu)",
        "interference": None,
    }
    assert "= dualgpu =" in completed.stdout


def test_the_quickstart_script_compares_one_stream_with_dual_infer() -> None:
    completed = run(sys.executable, "examples/quickstart.py", "--device", "cpu", "--budget", "0.1")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].split()[:4] == ["result", "lanes", "device", "mode"]
    assert lines[2].split()[:7] == ["default", "stream", "Encoder", "+", "Encoder-2", "cpu", "sequential"]
    assert "back to back the lanes overlap 0%" in completed.stdout


def test_the_real_model_examples_skip_with_the_fix_where_transformers_is_missing() -> None:
    without = (
        "import sys; sys.modules['transformers'] = None; import pytest; "
        "sys.exit(pytest.main(['examples', '-k', 'default_stream or real', '-rs', '-p', 'no:cacheprovider', "
        "'--dualgpu-budget=0.1', '--dualgpu-warmup=0.5']))"
    )
    completed = run(sys.executable, "-c", without)
    assert completed.returncode == 0, completed.stdout
    assert "the real-model examples need transformers: pip install -e '.[examples]'" in completed.stdout
    assert "1 passed, 1 skipped" in completed.stdout
