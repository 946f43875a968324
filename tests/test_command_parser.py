"""Every `medaug` subcommand parses with jsonargparse: `--help`, `--config` files, one-line mistakes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lightning_medaug.cli import _COMMANDS, main
from lightning_medaug.command_parser import parse_command
from lightning_medaug.demo import build_parser as demo_parser

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_medaug"


def test_no_module_of_the_package_imports_stdlib_argparse():
    """One parsing style: jsonargparse (LightningCLI's own), never a second stdlib argparse parser."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(name.split(".")[0] == "argparse" for name in names):
                found.append(f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno}")
    assert not found, f"stdlib argparse imported at {found}: build the parser with command_parser()"


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: medaug {command}") and "--config CONFIG" in out


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_a_mistyped_option_is_one_line_and_exit_2(command, capsys):
    assert main([command, "--no-such-option", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medaug: error: "), err
    assert f"(see `medaug {command} --help`)" in err[0]


def test_demo_keeps_its_spellings_and_reads_them_from_a_config(tmp_path):
    parser = demo_parser()
    args = parse_command(parser, ["--no-classic", "--generator-epochs", "3", "--out", "x"])
    assert (args.classic, args.generator_epochs, args.out) == (False, 3, "x")
    assert parse_command(parser, ["--classic"]).classic is True and parse_command(parser, []).classic is True
    config = tmp_path / "demo.yaml"
    config.write_text("classic: false\ngenerator-epochs: 4\nsteps: 9\n", encoding="utf-8")
    args = parse_command(parser, ["--config", str(config), "--steps", "7"])  # the command line comes later: it wins
    assert (args.classic, args.generator_epochs, args.steps) == (False, 4, 7)


def test_a_missing_required_option_is_named_as_typed(capsys):
    assert main(["evaluate", "--bank", "b"]) == 2
    err = capsys.readouterr().err
    assert "required: --data, --out (see `medaug evaluate --help`)" in err, err
