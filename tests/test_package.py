"""The package as installed: entry points, the console script, and a plugin that costs nothing to load."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

import pytest

import pytest_dualgpu

SCRIPT = str(Path(sys.executable).with_name("dualgpu"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_loading_the_package_and_the_plugin_does_not_import_torch() -> None:
    code = "import sys, pytest_dualgpu, pytest_dualgpu.plugin; print('torch' in sys.modules)"
    assert run(sys.executable, "-c", code).stdout.strip() == "False"


def test_public_names_load_on_first_use() -> None:
    code = "import sys, pytest_dualgpu as p; p.dual_infer; print('torch' in sys.modules, p.dual_infer.many)"
    output = run(sys.executable, "-c", code).stdout
    assert output.startswith("True <bound method DualInfer.many")
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        pytest_dualgpu.nothing  # noqa: B018


def test_entry_points_and_typing_marker() -> None:
    plugins = {entry.name: entry.value for entry in metadata.entry_points(group="pytest11")}
    scripts = {entry.name: entry.value for entry in metadata.entry_points(group="console_scripts")}
    assert plugins["dualgpu"] == "pytest_dualgpu.plugin"
    assert scripts["dualgpu"] == "pytest_dualgpu.cli:main"
    assert resources.files("pytest_dualgpu").joinpath("py.typed").is_file()
    assert metadata.version("pytest-dualgpu") == pytest_dualgpu.__version__


@pytest.mark.parametrize("command", [[SCRIPT], [sys.executable, "-m", "pytest_dualgpu"]])
def test_console_script_reports_version_and_device(command: list[str]) -> None:
    version = run(*command, "--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"dualgpu {pytest_dualgpu.__version__}"
    info = run(*command, "info", "--device", "cpu")
    assert info.returncode == 0
    assert info.stdout.startswith("device: cpu (")
    assert "torch: " in info.stdout


def test_console_script_rejects_a_bad_device_with_exit_code_2() -> None:
    result = run(SCRIPT, "info", "--device", "tpu")
    assert result.returncode == 2
    assert "dualgpu info: error: device 'tpu' is not a device" in result.stderr


def test_the_plugin_is_registered_and_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    loaded = pytester.runpytest_subprocess("--trace-config")
    loaded.stdout.fnmatch_lines(["*registered*pytest_dualgpu.plugin*"])
    disabled = pytester.runpytest_subprocess("--trace-config", "-p", "no:dualgpu")
    assert "pytest_dualgpu.plugin" not in disabled.stdout.str()
    disabled.assert_outcomes(passed=1)
