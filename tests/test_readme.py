"""The README is a user's path: it starts with `make run` and `make test`, every `imgclf` command line in it
parses (and its recipe and config resolve), every flag it names exists, and both make targets are defined."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from imgclf.cli import build_parser
from test_cli import parse_as_documented, subcommands

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
OTHER_TOOLS_FLAGS = {"--index-url", "--nproc-per-node", "--monitor-interval"}  # pip's and torchrun's, in the README
BENCHMARK_FLAGS = {"--smoke"}  # the GPU benchmarks' CPU mode


def bash_lines() -> list[str]:
    """The command lines of the README's ```bash blocks, comments and trailing `&` removed."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip().removesuffix("&").strip()
            if line:
                lines.append(line)
    return lines


def test_readme_starts_with_the_two_commands() -> None:
    assert bash_lines()[:2] == ["make run", "make test"]
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "run"], ["make", "test"]]


def test_every_imgclf_command_line_parses() -> None:
    commands = [shlex.split(line) for line in bash_lines() if line.startswith("imgclf ")]
    assert len(commands) >= 6
    for argv in commands:
        parse_as_documented(argv[1:])


def test_every_flag_the_readme_names_exists() -> None:
    parsers = [build_parser(), *subcommands().values()]
    known = {flag for p in parsers for a in p._actions for flag in a.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README))
    assert named - known <= OTHER_TOOLS_FLAGS | BENCHMARK_FLAGS, sorted(named - known - OTHER_TOOLS_FLAGS)
    for flag in BENCHMARK_FLAGS:
        assert all(flag in path.read_text() for path in (ROOT / "benchmarks").glob("gpu_*.py")), flag


def test_make_targets_dry_run() -> None:
    """`make -n` expands both targets (no work done): run sets up through .ci/run, test is .ci/run."""
    # as a user types them: not inside another make (`make test` runs this suite), whose MAKEFLAGS and
    # MAKELEVEL would add "make[1]: Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    run = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "bash .ci/run setup" in run.stdout and "imgclf compare --data flowers-mini" in run.stdout
    assert "shared" not in run.stdout  # a user's clone has no ../shared
    test = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert test.returncode == 0 and test.stdout.strip() == "bash .ci/run", test.stdout


@pytest.mark.slow  # about 2 minutes on 2 cores: the whole main job, one seed a side
def test_make_run_as_a_fresh_clone_without_shared_runs_it(tmp_path: Path) -> None:
    """What `make run` runs after set-up, taken from `make -n run` itself, run from a folder with no ../shared
    beside it: it must end with a report in which fine-tuning beats training from scratch on the bundled
    photos (the point of the main job), by more than the noise of 100 test photos."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = tmp_path / "compare"
    # one seed a side: the default repeat (4 runs, tested in test_compare_seeds) would double this test's 4 minutes
    dry = subprocess.run(["make", "-n", "run", f"OUT={out}", "ARGS=--seeds 1"], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    command = next(line for line in dry.stdout.splitlines() if "imgclf compare" in line)
    argv = shlex.split(command)
    argv[0] = str(ROOT / argv[0])  # .venv/bin/imgclf, relative to the checkout
    work = tmp_path / "clone-without-shared"
    work.mkdir()
    result = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "report.html").is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["verdict"].startswith("finetune"), comparison["verdict"]
