"""The `spacetime` entry point: help for every subcommand, config printing, honest stubs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.cli import EXIT_NOT_BUILT, NOT_BUILT, build_parser, main

SUBCOMMANDS = [
    "shard",
    "recaption",
    "train-vae",
    "encode",
    "train",
    "sample",
    "launch",
    "demo",
    "config",
]


def test_top_level_help_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infra.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_exits_zero(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([name, "--help"])
    assert e.value.code == 0
    assert name in capsys.readouterr().out


def test_console_script_installed() -> None:
    exe = Path(sys.executable).with_name("spacetime")
    assert exe.exists(), "pip install -e . should install the spacetime console script"
    r = subprocess.run([str(exe), "config", "presets"], capture_output=True, text=True)
    assert r.returncode == 0 and "tiny" in r.stdout


def test_config_show_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "tiny", "--set", "run.seed=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run"]["name"] == "tiny" and shown["run"]["seed"] == 7
    good = tmp_path / "good.yaml"
    good.write_text("run:\n  seed: 11\n")
    assert main(["config", "validate", str(good)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run"]["seed"] == 11
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  sede: 11\n")
    assert main(["config", "validate", str(bad)]) == 2


def test_unbuilt_subcommands_say_so_and_fail(caplog: pytest.LogCaptureFixture) -> None:
    argv = {
        "recaption": ["--shards", "x", "--output", "y"],
        "train": [],
        "sample": ["--checkpoint", "c", "--output", "o"],
        "launch": [],
    }
    for name in NOT_BUILT:
        caplog.clear()
        assert main([name, *argv[name]]) == EXIT_NOT_BUILT
        assert "not built yet" in caplog.text
