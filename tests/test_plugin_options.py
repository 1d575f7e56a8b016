"""Options, ini keys and environment variables: precedence, bad values, the header, GPUs per worker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from command import dualgpu

from pytest_dualgpu.engine.callsettings import CallSettings
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.gpus import no_gpu_here
from pytest_dualgpu.plugin.options import Settings
from pytest_dualgpu.specs import SETTING_RULES

HEADER_SUITE = "def test_nothing():\n    pass\n"


def header(result: pytest.RunResult) -> str:
    return next(line for line in result.outlines if line.startswith("dualgpu: "))


def test_defaults_and_a_header_that_does_not_import_torch(suite: pytest.Pytester) -> None:
    suite.makepyfile(HEADER_SUITE)
    suite.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            print("torch imported:", "torch" in sys.modules)
        """
    )
    result = suite.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    assert header(result) == (
        "dualgpu: device auto (resolved when dual_infer is first used), mode auto, budget 1 s per call"
    )
    result.stdout.fnmatch_lines(["*torch imported: False"])


def test_header_names_the_device_when_a_report_is_asked_for(suite: pytest.Pytester) -> None:
    suite.makepyfile(HEADER_SUITE)
    result = suite.runpytest("--dualgpu-report", "--dualgpu-mode=threads", "--dualgpu-budget=0.25")
    assert header(result).startswith("dualgpu: device cpu (")
    assert "torch " in header(result)
    assert header(result).endswith("; mode threads, budget 0.25 s per call")
    result.stdout.fnmatch_lines(["*= dualgpu =*", "no dual_infer results in this session"])


@pytest.mark.parametrize("config_file", ["pytest.ini", "ini_options", "native"])
def test_cli_beats_environment_beats_ini(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, config_file: str
) -> None:
    suite.makepyfile(HEADER_SUITE)
    if config_file == "pytest.ini":
        suite.makeini("[pytest]\ndualgpu_budget = 0.3\ndualgpu_mode = sequential\ndualgpu_device = cpu\n")
    elif config_file == "ini_options":
        suite.makepyprojecttoml(
            '[tool.pytest.ini_options]\ndualgpu_budget = "0.3"\ndualgpu_mode = "sequential"\n'
            'dualgpu_device = "cpu"\n'
        )
    else:
        suite.makepyprojecttoml(
            '[tool.pytest]\ndualgpu_budget = 0.3\ndualgpu_mode = "sequential"\ndualgpu_device = "cpu"\n'
        )
    assert header(suite.runpytest()).endswith("mode sequential, budget 0.3 s per call")
    assert header(suite.runpytest()).startswith("dualgpu: device cpu (")

    monkeypatch.setenv("DUALGPU_BUDGET", "0.2")
    monkeypatch.setenv("DUALGPU_MODE", "threads")
    assert header(suite.runpytest()).endswith("mode threads, budget 0.2 s per call")

    result = suite.runpytest("--dualgpu-budget=0.1", "--dualgpu-mode=streams")
    assert header(result).endswith("mode streams, budget 0.1 s per call")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            ["--dualgpu-budget=soon"],
            "ERROR: dualgpu: --dualgpu-budget='soon': budget must be a number of seconds > 0 "
            "(of measuring per call, e.g. 1.0)",
        ),
        (["--dualgpu-budget=-1"], "ERROR: dualgpu: --dualgpu-budget='-1': budget must be*"),
        (
            ["--dualgpu-mode=turbo"],
            "ERROR: dualgpu: --dualgpu-mode='turbo': mode 'turbo' is not one of auto, sequential, streams, "
            "threads, graphs",
        ),
        (
            ["--dualgpu-device=tpu"],
            "ERROR: dualgpu: --dualgpu-device='tpu': the device must be auto, cpu, cuda or cuda:N",
        ),
        (
            ["--dualgpu-report=html:out"],
            "ERROR: dualgpu: --dualgpu-report='html:out': report target 'html:out' is not one of term, "
            "term-wide, json:PATH, md, md:PATH, trace:DIR or png:DIR",
        ),
        (
            ["--dualgpu-report", "test_swallowed.py"],
            "ERROR: dualgpu: --dualgpu-report='test_swallowed.py': report target 'test_swallowed.py' looks "
            "like a test path that --dualgpu-report took as its target: write --dualgpu-report=term (or "
            "another target with '=') before test_swallowed.py",
        ),
        (
            ["--dualgpu-report=trace"],
            "ERROR: dualgpu: --dualgpu-report='trace': report target 'trace' needs a directory: trace:DIR*",
        ),
        (
            ["--dualgpu-compare-fail=speed:10%", "--dualgpu-compare=base.json"],
            "ERROR: dualgpu: --dualgpu-compare-fail='speed:10%': regression threshold 'speed:10%' is not "
            "METRIC:LIMIT; use speedup:10%*",
        ),
        (
            ["--dualgpu-compare-fail=speedup:lots", "--dualgpu-compare=base.json"],
            "*regression threshold 'speedup:lots': cannot read the limit 'lots'*",
        ),
        (
            ["--dualgpu-compare-fail=speedup:10%"],
            "ERROR: dualgpu: compare_fail needs a baseline to compare with: add --dualgpu-compare=PATH*",
        ),
        (
            ["--dualgpu-compare=missing.json"],
            "ERROR: dualgpu: --dualgpu-compare=missing.json: no such file; save one with "
            "--dualgpu-save=missing.json*",
        ),
        ({"DUALGPU_PROFILE": "sometimes"}, "ERROR: dualgpu: DUALGPU_PROFILE='sometimes': expected a yes/no*"),
        (
            ["--dualgpu-report=json"],
            "ERROR: dualgpu: --dualgpu-report='json': report target 'json' needs a file: json:PATH*",
        ),
        (
            ["--dualgpu-devices=first"],
            "ERROR: dualgpu: --dualgpu-devices='first': devices must be auto or GPU indices*",
        ),
        ({"DUALGPU_BUDGET": "lots"}, "ERROR: dualgpu: DUALGPU_BUDGET='lots': budget must be a number*"),
        (
            {"DUALGPU_REQUIRE_CUDA": "maybe"},
            "ERROR: dualgpu: DUALGPU_REQUIRE_CUDA='maybe': expected a yes/no value*",
        ),
        (
            "dualgpu_mode = fast",
            "ERROR: dualgpu: dualgpu_mode (ini)='fast': mode 'fast' is not one of auto*",
        ),
        ("dualgpu_budget = soon", "ERROR: dualgpu: dualgpu_budget (ini): could not convert string to float*"),
        (
            ["--dualgpu-inconclusive=shrug"],
            "ERROR: dualgpu: --dualgpu-inconclusive='shrug': inconclusive must be one of warn, fail, skip*",
        ),
        (
            {"DUALGPU_WARMUP": "-1"},
            "ERROR: dualgpu: DUALGPU_WARMUP='-1': warmup must be a number of seconds >= 0 "
            "(the cap of the steady-state warm-up*",
        ),
        (
            ["--dualgpu-budget=2", "--dualgpu-max-budget=1"],
            "ERROR: dualgpu: max_budget (1 s) must be at least the budget (2 s)*",
        ),
        (
            "dualgpu_lock_timeout = 0",
            "ERROR: dualgpu: dualgpu_lock_timeout (ini)=0.0: lock_timeout must be a number of seconds > 0*",
        ),
        (
            ["--dualgpu-min-rounds=0"],
            "ERROR: dualgpu: --dualgpu-min-rounds='0': min_rounds must be an integer >= 1 "
            "(the fewest measured rounds*",
        ),
        ("dualgpu_min_rounds = many", "ERROR: dualgpu: dualgpu_min_rounds (ini)='many': min_rounds must be*"),
        (
            {"DUALGPU_SETTLE": "-0.1"},
            "ERROR: dualgpu: DUALGPU_SETTLE='-0.1': settle must be a number of seconds >= 0*",
        ),
        (
            ["--dualgpu-require-cuda", "--dualgpu-device=cpu"],
            "ERROR: dualgpu: require_cuda is set but the device is cpu (from --dualgpu-*, DUALGPU_* or *",
        ),
    ],
)
def test_bad_values_are_usage_errors_naming_the_source(
    suite: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    source: list[str] | dict[str, str] | str,
    message: str,
) -> None:
    suite.makepyfile(HEADER_SUITE)
    args: list[str] = []
    if isinstance(source, dict):
        for name, value in source.items():
            monkeypatch.setenv(name, value)
    elif isinstance(source, str):
        suite.makeini(f"[pytest]\n{source}\n")
    else:
        args = source
    result = suite.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


ROUNDS_SUITE = """
import torch
from inner_models import Sleep

def test_pair(dual_infer):
    dual_infer(Sleep(0.002), Sleep(0.002), torch.ones(2), mode="threads", budget=0.01, max_budget=0.01)
"""


def test_min_rounds_and_settle_reach_every_call(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget too short for the fewest rounds says how many it needed and what the pauses took."""
    suite.makepyfile(ROUNDS_SUITE)
    suite.makeini("[pytest]\ndualgpu_min_rounds = 9\n")
    saying = suite.runpytest("--dualgpu-report=term-wide")
    saying.stdout.fnmatch_lines(["*(min_rounds 9)*10 ms of it settling pauses per variant*"])
    monkeypatch.setenv("DUALGPU_SETTLE", "0")
    quiet = suite.runpytest("--dualgpu-report=term-wide", "--dualgpu-min-rounds=4")
    quiet.stdout.fnmatch_lines(["*(min_rounds 4)*"])
    assert "settling pauses" not in quiet.stdout.str()


def test_require_cuda_is_an_error_at_session_start_without_a_gpu(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(HEADER_SUITE)
    result = suite.runpytest("--dualgpu-require-cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: dualgpu: --dualgpu-require-cuda, but there is no CUDA GPU: torch * is a CPU build. *"]
    )
    monkeypatch.setenv("DUALGPU_REQUIRE_CUDA", "yes")
    assert suite.runpytest().ret == pytest.ExitCode.USAGE_ERROR
    assert suite.runpytest("--no-dualgpu-require-cuda").ret == pytest.ExitCode.OK


def test_report_targets_repeat_and_come_from_the_environment_too(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(
        """
        import torch
        from inner_models import Sleep

        def test_pair(dual_infer):
            dual_infer(Sleep(), Sleep(), torch.ones(2))
        """
    )
    monkeypatch.setenv("DUALGPU_REPORT", "json:env.json md:env.md")
    monkeypatch.setenv("DUALGPU_BUDGET", "0.05")
    from_env = suite.runpytest()
    assert (suite.path / "env.json").is_file()
    assert (suite.path / "env.md").is_file()
    assert "speedup [95% CI]" not in from_env.stdout.str()  # no table asked for: only where files went
    from_env.stdout.fnmatch_lines(
        [f"dualgpu: json report: {suite.path / 'env.json'}", f"dualgpu: md report: {suite.path / 'env.md'}"]
    )
    from_cli = suite.runpytest("--dualgpu-report", "--dualgpu-report=json:cli/out.json")
    from_cli.stdout.fnmatch_lines(["*= dualgpu =*", "test_report_targets*::test_pair*Sleep + Sleep-2*"])
    assert (suite.path / "cli" / "out.json").is_file()


def test_fixtures_follow_the_device_option(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch

        def test_device(dualgpu_device):
            assert dualgpu_device == torch.device("cpu")

        def test_place_model(place_model):
            model = place_model(torch.nn.Linear(2, 2).train(), dtype=torch.float64)
            assert not model.training
            assert model.weight.dtype == torch.float64
            assert model.weight.device.type == "cpu"

        def test_cuda_asked_for_but_missing(dual_infer):
            from inner_models import Sleep
            dual_infer(Sleep(), Sleep(), torch.ones(2))
        """
    )
    result = suite.runpytest("--dualgpu-device=cuda", "-k", "cuda_asked")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # at start-up: no test ran to find out
    result.stderr.fnmatch_lines(
        [
            "*dualgpu: --dualgpu-device=cuda (or DUALGPU_DEVICE, or dualgpu_device in the ini file), but "
            "there is no CUDA GPU: torch * is a CPU build; use --dualgpu-device=cpu or auto"
        ]
    )
    assert "passed" not in result.stdout.str()
    suite.runpytest("--dualgpu-device=cpu", "-k", "not cuda_asked").assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("devices", "expected"), [("auto", {"gw0": "5", "gw1": "7"}), ("1", {"gw0": "7", "gw1": "7"})]
)
def test_each_xdist_worker_gets_its_gpu_as_an_index_into_cuda_visible_devices(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, devices: str, expected: dict[str, str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    suite.makepyfile(
        f"""
        import os
        import pytest
        from pathlib import Path

        @pytest.mark.parametrize("index", range(8))
        def test_record(index, worker_id):
            Path({str(suite.path)!r}, worker_id + ".gpu").write_text(os.environ["CUDA_VISIBLE_DEVICES"])
        """
    )
    result = suite.runpytest_subprocess("-n", "2", f"--dualgpu-devices={devices}")
    result.assert_outcomes(passed=8)
    assert {path.stem: path.read_text() for path in suite.path.glob("*.gpu")} == expected


def test_without_xdist_the_process_takes_the_first_chosen_gpu(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    suite.makepyfile(
        """
        import os

        def test_record():
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
        """
    )
    suite.runpytest("--dualgpu-devices=1,0").assert_outcomes(passed=1)


def test_devices_auto_on_a_machine_without_gpus_changes_nothing(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    suite.makepyfile(
        """
        import os

        def test_record(worker_id):
            assert "CUDA_VISIBLE_DEVICES" not in os.environ
        """
    )
    suite.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            if not hasattr(session.config, "workerinput"):
                print("controller imported torch:", "torch" in sys.modules)
        """
    )
    result = suite.runpytest_subprocess("-n", "2", "--dualgpu-devices=auto", "-s")
    result.assert_outcomes(passed=1)
    # No GPU device file here: the controller counts no GPU without importing torch.
    result.stdout.fnmatch_lines(["*controller imported torch: False"])


def test_a_gpu_is_seen_by_its_device_file_and_none_where_there_is_none(tmp_path: Path) -> None:
    (tmp_path / "nvidia0").touch()
    linux = sys.platform.startswith("linux")
    assert no_gpu_here([str(tmp_path / "nvidia[0-9]*")]) is False
    assert no_gpu_here([str(tmp_path / "kfd"), str(tmp_path / "dxg")]) is linux


def test_a_chosen_gpu_that_cuda_cannot_see_fails_at_first_use(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "restored afterwards")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    suite.makepyfile(
        """
        def test_device(dualgpu_device):
            pass
        """
    )
    result = suite.runpytest("--dualgpu-devices=3")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*DualGpuUsageError: --dualgpu-devices set CUDA_VISIBLE_DEVICES=3 for this process, but CUDA "
            "sees no GPU*"
        ]
    )


def test_a_gpu_index_beyond_the_visible_ones_is_a_usage_error(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    suite.makepyfile(HEADER_SUITE)
    result = suite.runpytest_subprocess("-n", "2", "--dualgpu-devices=0,2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--dualgpu-devices: GPU index 2 is out of range; 2 GPU(s) are visible (5, 7), so indices go "
            "from 0 to 1"
        ]
    )


@pytest.mark.parametrize(
    ("name", "given", "value"),
    [("budget", "-1", -1.0), ("max_budget", "0", 0.0), ("warmup", "inf", float("inf")),
     ("min_rounds", "0", 0), ("settle", "-0.5", -0.5), ("lock_timeout", "0", 0.0)],
)  # fmt: skip
def test_a_bad_number_gets_one_message_from_the_api_the_plugin_and_the_command(
    name: str, given: str, value: float
) -> None:
    expected = SETTING_RULES[name].expected(name)
    with pytest.raises(DualGpuUsageError) as api:
        CallSettings(**{name: value})
    assert str(api.value) == f"{expected}, got {value!r}"
    with pytest.raises(DualGpuUsageError) as plugin:
        Settings.resolve([("env", {name: given})])
    assert str(plugin.value) == f"DUALGPU_{name.upper()}={given!r}: {expected}"
    if name != "lock_timeout":  # the command has no flag for it
        flag = f"--{name.replace('_', '-')}"
        command = dualgpu("profile", "pytest_dualgpu.demo:MLP", "pytest_dualgpu.demo:MLP", flag, given)
        assert command.returncode == 2
        assert command.stderr.rstrip().endswith(f"argument {flag}: {given!r}: {expected}")
