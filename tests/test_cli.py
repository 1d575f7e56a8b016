"""The `dualgpu` command, end to end through its console script on CPU."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
from command import DUALGPU, console_script, dualgpu, in_process
from quick import QUICK_CLI

from pytest_dualgpu.cli.main import COMMAND_EXAMPLES, build_parser

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "report-schema.json").read_text())
#: For tests that read a verdict, which needs figures the sanity checks accept: tiny models measured with
#: tests/quick.py's settings drifted past them now and then (CI: "the concurrent time fell by 63%").
FAST = ["--budget", "0.1", "--max-budget", "3"]
DEMO = "pytest_dualgpu.demo"

ZOO = """
import threading
import time

import torch
from torch import nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 16)

    def forward(self, x):
        return self.linear(x).relu()


small = Small()


def make_small():
    return Small()


class Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("broken on purpose")


class Sleepy(nn.Module):
    def forward(self, x):
        time.sleep(0.03)
        return x * 2


class Racy(nn.Module):
    # right alone and back to back, wrong when run at once (as a lane without synchronization is)
    def forward(self, x):
        return x + 1 if threading.current_thread().name.startswith("dualgpu-lane") else x


class Impossible(nn.Module):
    # faster on a lane thread than alone: at once it beats its own alone time, which no overlap can do
    def forward(self, x):
        time.sleep(0.001 if threading.current_thread().name.startswith("dualgpu-lane") else 0.004)
        return x * 2


class Steady(nn.Module):
    def forward(self, x):
        time.sleep(0.004)
        return x * 2


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("no weights here")


class NeedsBfloat16(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 16)

    def forward(self, x):
        if x.dtype != torch.bfloat16 or self.linear.weight.dtype != torch.bfloat16:
            raise TypeError(f"expected bfloat16, got {x.dtype}")
        return self.linear(x)


def with_helper():
    import helper  # a neighbour module, imported when the factory runs

    return helper.Doubler()


def inputs(batch):
    return torch.randn(batch, 16)


def four_rows(batch):
    return torch.randn(4, 16)


fixed = torch.randn(4, 16)
"""

HELPER = """
from torch import nn


class Doubler(nn.Module):
    def forward(self, x):
        return x * 2
"""


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    path = tmp_path / "zoo.py"
    path.write_text(ZOO)
    (tmp_path / "helper.py").write_text(HELPER)
    return path


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real report of one profiled pair."""
    report = tmp_path_factory.mktemp("profiled") / "good.json"
    assert dualgpu("profile", f"{DEMO}:MLP", f"{DEMO}:MLP", *QUICK_CLI, "--json", str(report)).returncode == 0
    return report


def measured(cell: str) -> bool:
    """A matrix cell of a measured pair: speedup / efficiency, flagged UNRELIABLE where this machine was
    too noisy to trust it (it is still measured, not "failed")."""
    return re.fullmatch(r"\d+\.\d+x / (-|-?\d+\.\d+)( WRONG)?( UNRELIABLE)?", cell) is not None


def marks(cell: str) -> list[str]:
    """The flags after a measured cell's figures (WRONG, UNRELIABLE)."""
    assert measured(cell), cell
    return cell.split()[3:]


def table(text: str) -> list[list[str]]:
    """The rows of a tabulate "simple" table (header first), cells split on runs of two spaces."""
    lines = text.splitlines()
    rule = next(index for index, line in enumerate(lines) if line.startswith("---"))
    starts = [
        i for i, char in enumerate(lines[rule]) if char == "-" and (i == 0 or lines[rule][i - 1] == " ")
    ]
    rows = []
    for line in [lines[rule - 1], *lines[rule + 1 :]]:
        if not line.strip() or line.startswith(("verdict", "eff -:")):
            break
        cut = [*starts, len(line) + 1]
        rows.append([line[a:b].strip() for a, b in itertools.pairwise(cut)])
    return rows


def test_profile_takes_module_and_file_references_and_writes_a_json_report(zoo: Path, tmp_path: Path) -> None:
    report = tmp_path / "profile.json"
    done = dualgpu(
        "profile", f"{zoo}:small", f"{zoo}:make_small", "--inputs", "8x16", *FAST, "--json", str(report)
    )
    assert done.returncode == 0, done.stderr
    [header, row] = table(done.stdout)
    assert header[:4] == ["result", "lanes", "device", "mode"]
    # An instance's lane goes by the reference; a factory's by the class it builds.
    assert row[:4] == ["small + Small", "small + Small", "cpu", "threads"]
    assert "verdict: threads mode: " in done.stdout
    assert "latency of each model, ms (closed loop, alone and while the other runs):" in done.stdout
    document = json.loads(report.read_text())
    jsonschema.validate(document, SCHEMA)
    [result] = document["results"]
    assert result["nodeid"] == "dualgpu profile"
    assert [lane["name"] for lane in result["lanes"]] == ["small", "Small"]
    assert result["correct"] is True


def test_transformers_factories_and_keyword_input_references(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    models = Path(__file__).resolve().parents[1] / "examples" / "hf_models.py"
    report = tmp_path / "real.json"
    done = dualgpu(
        "profile", f"{models}:text_encoder", f"{models}:image_encoder",
        "--inputs", f"{models}:text_inputs", f"{models}:image_inputs", *FAST, "--json", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "verdict: threads mode: " in done.stdout
    (row,) = json.loads(report.read_text())["results"]
    assert row["correct"]
    assert [lane["name"] for lane in row["lanes"]] == ["BertModel", "ViTModel"]


def test_input_references_and_dtypes(zoo: Path) -> None:
    by_function = dualgpu("profile", f"{zoo}:Small", f"{zoo}:Small", "--inputs", f"{zoo}:inputs", *QUICK_CLI)
    assert by_function.returncode == 0, by_function.stderr
    assert "Small + Small-2" in by_function.stdout
    by_value = dualgpu(
        "profile", f"{zoo}:Small", f"{DEMO}:MLP", "--inputs", f"{zoo}:fixed", "64x512", *QUICK_CLI
    )
    assert by_value.returncode == 0, by_value.stderr
    typed = dualgpu(
        "profile",
        f"{DEMO}:TinyTransformer",
        f"{DEMO}:MLP",
        "--inputs",
        "2x64:int64",
        "2x512",
        "--dtype",
        "bfloat16",
        *QUICK_CLI,
    )
    assert typed.returncode == 0, typed.stderr
    own = dualgpu("profile", f"{DEMO}:SmallCNN", f"{DEMO}:TinyTransformer", *QUICK_CLI)  # example_inputs
    assert own.returncode == 0, own.stderr


def test_the_matrix_is_symmetric_with_every_model_beside_a_copy_of_itself(tmp_path: Path) -> None:
    report = tmp_path / "matrix.json"
    models = [f"{DEMO}:MLP", f"{DEMO}:SmallCNN", f"{DEMO}:TinyTransformer"]
    done = dualgpu("matrix", *models, *FAST, "--json", str(report))
    assert done.returncode == 0, done.stderr
    header, *rows = table(done.stdout)
    assert header == ["speedup / eff", "MLP", "SmallCNN", "TinyTransformer"]
    cells = [row[1:] for row in rows]
    assert [row[0] for row in rows] == header[1:]
    for i in range(3):
        for j in range(3):
            assert cells[i][j] == cells[j][i]
            assert measured(cells[i][j]), cells[i][j]
    assert "verdict: " in done.stdout
    assert "pairings gain beyond noise" in done.stdout
    names = [row["name"] for row in json.loads(report.read_text())["results"]]
    assert names == [
        "MLP + MLP-copy", "MLP + SmallCNN", "MLP + TinyTransformer",
        "SmallCNN + SmallCNN-copy", "SmallCNN + TinyTransformer", "TinyTransformer + TinyTransformer-copy",
    ]  # fmt: skip


def test_an_unreliable_result_is_marked_listed_and_never_the_best_pairing(zoo: Path) -> None:
    done = dualgpu("matrix", f"{zoo}:Impossible", f"{zoo}:Steady", "--inputs", "2x16", *FAST)
    assert done.returncode == 0, done.stderr
    _, impossible, steady = table(done.stdout)
    assert impossible[1].endswith("UNRELIABLE")  # Impossible beside a copy of itself
    assert not steady[2].endswith("UNRELIABLE")  # two sleeping lanes: about 2x, and possible
    verdict = next(line for line in done.stdout.splitlines() if line.startswith("verdict: "))
    best = verdict.split(";")[0]
    assert "Impossible + Impossible-copy" not in best  # its 7x would be the best by far, if it counted
    assert "2 of 2 pairings gain beyond noise" in verdict
    assert "Impossible + Impossible-copy is unreliable (not counted)" in verdict
    assert "Impossible + Impossible-copy (threads): UNRELIABLE: speedup" in done.stdout
    assert "is above the ideal" in done.stdout


def test_the_slowdown_matrix_and_latency_objectives_per_batch_size(zoo: Path) -> None:
    matrix = dualgpu(
        "matrix", f"{zoo}:Steady", f"{zoo}:Small", "--inputs", "2x16", "--metric", "slowdown", *FAST
    )
    assert matrix.returncode == 0, matrix.stderr
    header, steady, small = table(matrix.stdout)
    assert header[0] == "worse slowdown (p50)"
    assert steady[1].endswith("x")
    assert steady[2] == small[1]
    assert "verdict: the pairing that costs its models least: " in matrix.stdout
    sweep = dualgpu(
        "sweep", f"{zoo}:Small", f"{zoo}:Steady", "--batch", "1,2", "--inputs", "1x16", *FAST,
        "--slo", "Steady:p50<=50ms", "--slo", "Small:p99<=1s",
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    header, *rows = table(sweep.stdout)
    assert header[-1] == "objectives at once"
    assert all("Steady p50" in row[-1] and row[-1].count(" ok") == 2 for row in rows), rows
    assert "objectives: the largest batch meeting Steady:p50<=50ms, Small:p99<=1000ms is 2" in sweep.stdout
    missed = dualgpu(
        "sweep", f"{zoo}:Small", f"{zoo}:Steady", "--batch", "1", "--inputs", "1x16", *FAST,
        "--slo", "Steady:p50<=1ms",
    )  # fmt: skip
    assert "MISSED" in missed.stdout
    assert "objectives: no batch size measured meets Steady:p50<=1ms" in missed.stdout
    unknown = dualgpu(
        "sweep",
        f"{zoo}:Small",
        f"{zoo}:Steady",
        "--batch",
        "1",
        "--inputs",
        "4x16",
        "--slo",
        "Other:p50<=1ms",
    )
    assert unknown.returncode == 2
    assert "--slo Other:p50<=1ms: no model named 'Other'; the models are Small, Steady" in unknown.stderr
    malformed = dualgpu("sweep", f"{zoo}:Small", f"{zoo}:Steady", "--batch", "1", "--slo", "Steady<=1ms")
    assert malformed.returncode == 2
    assert "is not MODEL:pNN<=TIME" in malformed.stderr


def test_a_failing_model_fills_its_cells_and_the_rest_of_the_matrix_still_runs(zoo: Path) -> None:
    done = dualgpu("matrix", f"{zoo}:Small", f"{zoo}:Broken", "--inputs", "4x16", *QUICK_CLI)
    assert done.returncode == 1
    _, small, broken = table(done.stdout)
    assert measured(small[1]), f"Small beside Small was measured: {small[1]!r}"
    assert small[2] == broken[1] == broken[2] == "failed"
    assert "Small + Broken failed: LaneError: lane 'Broken' raised RuntimeError" in done.stdout
    assert "broken on purpose" in done.stdout


def test_the_sweep_has_a_row_per_batch_size_and_says_where_it_stops_paying(zoo: Path, tmp_path: Path) -> None:
    report = tmp_path / "sweep.json"
    png = tmp_path / "sweep.png"
    done = dualgpu("sweep", f"{zoo}:Small", f"{zoo}:Sleepy", "--batch", "4,1,2", "--inputs", "1x16",
                   *FAST, "--json", str(report), "--png", str(png))  # fmt: skip
    assert done.returncode == 0, done.stderr
    header, *rows = table(done.stdout)
    assert header[:3] == ["batch", "mode", "speedup [95% CI]"]
    assert header[-3:] == ["each at once items/s", "total back to back", "total at once"]
    assert [row[0] for row in rows] == ["1", "2", "4"]
    assert "verdict: concurrency" in done.stdout
    results = json.loads(report.read_text())["results"]
    assert [row["name"] for row in results] == [f"Small + Sleepy @ batch {batch}" for batch in (1, 2, 4)]
    from PIL import Image

    with Image.open(png) as picture:
        assert (picture.format, picture.size) == ("PNG", (1000, 700))
    sleepy_alone = [row["lanes"][1]["alone"]["median"] for row in results]
    assert all(0.025 < seconds < 0.2 for seconds in sleepy_alone), (
        "a 30 ms sleep per call, whatever the batch"
    )


def test_report_merges_shards_and_keeps_rows_of_several_machines_apart(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    assert dualgpu("profile", f"{DEMO}:MLP", f"{DEMO}:MLP", *QUICK_CLI, "--json", str(first)).returncode == 0
    document = json.loads(first.read_text())
    document["machine"]["hostname"] = "other-runner"
    second = tmp_path / "b.json"
    second.write_text(json.dumps(document))
    merged = dualgpu("report", str(first), str(second), "--format", "json")
    assert merged.returncode == 0, merged.stderr
    combined = json.loads(merged.stdout)
    jsonschema.validate(combined, SCHEMA)
    assert len(combined["results"]) == 2
    assert [row["source"].split()[0] for row in combined["results"]] == [os.uname().nodename, "other-runner"]
    assert len(combined["machines"]) == 2
    term = dualgpu("report", str(first), str(second))
    assert table(term.stdout)[0][:2] == ["test", "source"]
    markdown = tmp_path / "out" / "summary.md"
    assert dualgpu("report", str(first), "--format", "md", "--output", str(markdown)).returncode == 0
    assert "| dualgpu profile [MLP + MLP-2]" in markdown.read_text()
    other_folder = tmp_path / "shard" / "a.json"
    other_folder.parent.mkdir()
    other_folder.write_text(first.read_text())
    same_machine = json.loads(dualgpu("report", str(first), str(other_folder), "--format", "json").stdout)
    assert [row["source"].rsplit(" ", 1)[1] for row in same_machine["results"]] == [
        f"[{first}]",
        f"[{other_folder}]",
    ], "two files of one machine are told apart by their paths"
    assert "source" not in markdown.read_text(), "one machine: no source column"


def test_report_errors(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text('{"version": 1, "machine": {}, "results": []}')
    old = dualgpu("report", str(tmp_path / "old.json"))
    assert old.returncode == 2
    assert "a version 1 report; this pytest-dualgpu reads versions 2, 3 and 4" in old.stderr
    (tmp_path / "odd.json").write_text('{"version": 2, "results": [{"nodeid": "x", "verdicts": ["a"]}]}')
    odd = dualgpu("report", str(tmp_path / "odd.json"))
    assert odd.returncode == 2
    assert "a result could not be read" in odd.stderr
    (tmp_path / "bad.json").write_text("[1, 2]")
    missing = dualgpu("report", str(tmp_path / "missing.json"))
    assert missing.returncode == 2
    assert "missing.json: no such file" in missing.stderr
    bad = dualgpu("report", str(tmp_path / "bad.json"))
    assert bad.returncode == 2
    assert "not a pytest-dualgpu JSON report" in bad.stderr


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("speedup", "1.2", "results[0].speedup is the string '1.2', expected a number"),
        ("rounds", 7.5, "results[0].rounds is float 7.5, expected an integer"),
        ("speedup_ci", [1.0, "x"], "results[0].speedup_ci[1] is the string 'x', expected a number"),
        (
            "lanes",
            [{"name": "A", "alone": {"median": "fast"}}],
            "results[0].lanes[0].alone.median is the string",
        ),
    ],
)
@pytest.mark.parametrize("output", ["term", "json"])
def test_a_wrongly_typed_field_is_refused_naming_it_and_the_file(
    tmp_path: Path, profiled: Path, field: str, value: object, message: str, output: str
) -> None:
    assert dualgpu("report", str(profiled)).returncode == 0
    document = json.loads(profiled.read_text())
    if field == "lanes":
        lane = document["results"][0]["lanes"][0]
        lane["alone"]["median"] = "fast"
    else:
        document["results"][0][field] = value
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(document))
    done = dualgpu("report", str(edited), "--format", output)
    assert done.returncode == 2, done.stdout
    assert f"{edited}: {message}" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_runs_on_built_in_models_and_draws(tmp_path: Path) -> None:
    png = tmp_path / "demo.png"
    done = dualgpu("demo", *QUICK_CLI, "--png", str(png))
    assert done.returncode == 0, done.stderr
    assert "== matrix of the built-in models (MLP, SmallCNN, TinyTransformer) ==" in done.stdout
    assert "== profile of the best pair" in done.stdout
    assert done.stdout.count("verdict: ") == 2
    from PIL import Image

    with Image.open(png) as picture:
        assert picture.format == "PNG"


MLP = f"{DEMO}:MLP"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile", "nope:X", MLP], "model 'nope:X': cannot import 'nope'"),
        (["profile", "justaname", MLP], "model 'justaname' is not a reference; use package.module:name"),
        (["profile", f"{DEMO}:Nope", MLP], "pytest_dualgpu.demo has no 'Nope' (it has: MLP, SmallCNN"),
        (["profile", "missing.py:M", MLP], "model 'missing.py:M': no such file 'missing.py'"),
        (["profile", "torch.nn:Linear", MLP], "Linear() cannot be called without arguments"),
        (["profile", "torch:float16", MLP], "model 'torch:float16' is a dtype; use package.module:name"),
        (
            ["profile", MLP, MLP, "--inputs", "1xfoo"],
            "'1xfoo' is not an input spec; use a shape",
        ),
        (["profile", MLP, MLP, "--inputs", "4x512:float8"], "unknown dtype 'float8'"),
        (
            ["profile", MLP, MLP, "--inputs", "1x1", "2x2", "3x3"],
            "one spec for every model or one per model",
        ),
        (["profile", "torch.nn:Identity", "torch.nn:Identity"], "Identity needs inputs: give --inputs"),
        (["sweep", MLP, MLP, "--batch", "0,2"], "batch sizes must be at least 1"),
        (["profile", MLP, MLP, "--device", "tpu"], "device 'tpu' is not a device"),
        (["profile", MLP], "profile takes two models, got 1; use matrix for more"),
        (["profile", MLP, MLP, MLP], "profile takes two models, got 3; use matrix for more"),
        (["sweep", "--batch", "1,2"], "the following arguments are required: MODEL"),
        (["profile", MLP, MLP, "--budget", "inf"], "a number of seconds > 0"),
        (["profile", MLP, MLP, "--min-rounds", "0"], "--min-rounds: '0': min_rounds must be an integer >= 1"),
        (["profile", MLP, MLP, "--settle", "-1"], "--settle: '-1': settle must be a number of seconds >= 0"),
        (
            ["profile", MLP, MLP, "--budget", "2", "--max-budget", "1"],
            "max_budget (1 s) must be at least the budget",
        ),
        (["profile", MLP, MLP, "--inputs", "torch:randn"], "a builtin whose arguments cannot be read"),
        (["profile", MLP, MLP, "--json", "."], "--json: . is a directory; give a file path"),
        (
            ["profile", MLP, MLP, "--device", "cuda"],
            "--device cuda was asked for but CUDA is not available (torch 2",
        ),
        (["profile", MLP, MLP, "--json", f"{__file__}/out.json"], "is a file, so"),
    ],
)
def test_bad_usage_exits_2_and_shows_the_accepted_forms(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process: the console script adds only `sys.exit(main())`, which
    # test_the_console_script_exits_with_main_s_code covers, and a subprocess per case costs a torch import.
    code = in_process(*args)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert message in err


def test_the_console_script_exits_with_main_s_code() -> None:
    assert console_script("profile", "justaname", MLP).returncode == 2
    assert console_script("profile", "--budget", "-1", MLP, MLP).returncode == 2
    assert console_script("--version").returncode == 0


@pytest.mark.parametrize("command", sorted(COMMAND_EXAMPLES))
def test_each_command_helps_with_its_own_usage_and_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert in_process(command, "--help") == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: dualgpu {command} ")
    examples = help_text[help_text.index("examples:") :]
    for other, lines in COMMAND_EXAMPLES.items():
        for line in lines:
            assert (line in examples) is (other == command), line
    assert ("models:  package.module:name" in help_text) is (command in ("profile", "matrix", "sweep"))
    assert (
        "exit codes: 0 ok, 1 a model failed or gave wrong outputs (doctor: a check failed), 2 bad usage,\n"
        "            130 interrupted" in help_text
    )


def test_every_argument_of_every_command_has_help() -> None:
    parser = build_parser()
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert set(commands.choices) == set(COMMAND_EXAMPLES)
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help, f"dualgpu {name} {action.option_strings or action.metavar} has no help"


def _ctrl_c_default() -> None:
    """Ctrl-C as a terminal gives it: a suite run in the background (``&``) passes SIGINT on ignored, and
    Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_what_finished(zoo: Path) -> None:
    process = subprocess.Popen(
        [DUALGPU, "matrix", f"{zoo}:Sleepy", f"{zoo}:Small", f"{zoo}:make_small", "--inputs", "2x16",
         "--budget", "0.3", "--progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default,
    )  # fmt: skip
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + 120
    while "1/6" not in seen and time.monotonic() < deadline:  # the progress bar, after the first pair
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + seen + stderr
    header, *rows = table(stdout)
    assert header[1:] == ["Sleepy", "Small", "Small-2"]
    assert measured(rows[0][1]), "the first pair finished and is shown"
    assert "..." in [cell for row in rows for cell in row], "pairs not measured are marked"
    assert "interrupted: " in stderr
    assert " of 6 measured" in stderr
    assert "matrix:" in seen, "the bar names the command"
    assert "Sleepy + Sleepy-copy" in seen, "and the pair being measured"


def test_profile_under_auto_or_one_mode_gives_its_numbers(zoo: Path) -> None:
    for mode in ("auto", "sequential"):
        # Sleeping models: figures steady enough to be reliable on any machine, so the verdict gives them.
        done = dualgpu("profile", f"{zoo}:Steady", f"{zoo}:Steady", "--inputs", "4x16", "--mode", mode, *FAST)
        assert done.returncode == 0, done.stderr
        expected = "threads" if mode == "auto" else "sequential"
        assert f"verdict: {expected} mode: " in done.stdout
        assert " of an ideal " in done.stdout


def test_wrong_outputs_are_named_and_never_the_best_pairing(zoo: Path) -> None:
    done = dualgpu("matrix", f"{zoo}:Small", f"{zoo}:Racy", "--inputs", "4x16", *FAST)
    assert done.returncode == 1, done.stdout + done.stderr
    _, small, racy = table(done.stdout)
    assert "WRONG" not in marks(small[1])
    assert "WRONG" in marks(small[2])  # and UNRELIABLE too, where this machine was noisy meanwhile
    assert "WRONG" in marks(racy[2])
    assert "Small + Racy gave wrong outputs: max abs error 1" in done.stdout
    best = done.stdout.split("verdict: ")[1].split(";")[0]
    assert "Racy" not in best
    profile = dualgpu("profile", f"{zoo}:Racy", f"{zoo}:Small", "--inputs", "4x16", *FAST)
    assert profile.returncode == 1
    assert "threads mode gave wrong outputs" in profile.stdout


def test_a_model_that_fails_to_build_fails_its_cells_not_the_matrix(zoo: Path) -> None:
    done = dualgpu("matrix", f"{zoo}:Small", f"{zoo}:Boom", "--inputs", "4x16", *QUICK_CLI)
    assert done.returncode == 1, done.stdout + done.stderr
    _, small, boom = table(done.stdout)
    assert measured(small[1]), small[1]
    assert small[2] == boom[1] == boom[2] == "failed"
    assert "Boom() raised RuntimeError: no weights here" in done.stdout


def test_dtype_casts_models_and_inputs(zoo: Path) -> None:
    args = ["profile", f"{zoo}:NeedsBfloat16", f"{zoo}:Small", "--inputs", "4x16", *QUICK_CLI]
    assert dualgpu(*args, "--dtype", "bfloat16").returncode == 0
    uncast = dualgpu(*args)
    assert uncast.returncode == 1
    assert "expected bfloat16, got torch.float32" in uncast.stdout


def test_a_file_reference_can_import_its_neighbours(zoo: Path) -> None:
    done = dualgpu("profile", f"{zoo}:with_helper", f"{zoo}:Small", "--inputs", "4x16", *QUICK_CLI)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Doubler + Small" in done.stdout


def test_a_module_reference_is_found_in_the_current_directory(zoo: Path) -> None:
    done = dualgpu("profile", "zoo:Small", "zoo:small", "--inputs", "4x16", *QUICK_CLI, cwd=zoo.parent)
    assert done.returncode == 0, done.stderr


def test_sweeps_check_that_inputs_follow_the_batch_size(zoo: Path) -> None:
    fixed = dualgpu("sweep", f"{zoo}:Small", f"{zoo}:Small", "--batch", "1,2", "--inputs", f"{zoo}:fixed")
    assert fixed.returncode == 2
    assert "is a fixed value; a batch sweep needs a shape spec or a function" in fixed.stderr
    ignoring = dualgpu(
        "sweep", f"{zoo}:Small", f"{zoo}:Small", "--batch", "1,2", "--inputs", f"{zoo}:four_rows"
    )
    assert ignoring.returncode == 2
    assert "gave a batch of 4 for batch size 1" in ignoring.stderr


def test_a_full_disk_leaves_the_file_that_was_there_whole(tmp_path: Path, profiled: Path) -> None:
    """A file size limit makes every write past it fail as a full disk would (EFBIG; Python ignores the
    SIGXFSZ that would otherwise end the process)."""
    import resource

    report = profiled
    saved = tmp_path / "summary.md"
    saved.write_text("a good summary\n")
    limit = 64  # bytes: the rendered table is far longer

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [DUALGPU, "report", str(report), "--format", "md", "--output", str(saved)],
        capture_output=True, text=True, timeout=120, check=False, preexec_fn=small_disk,
    )  # fmt: skip
    assert done.returncode == 1
    assert "File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert saved.read_text() == "a good summary\n"
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")] == []
