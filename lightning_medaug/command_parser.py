"""The argument parser of every ``medaug`` subcommand beside LightningCLI's (which is jsonargparse too).

Typed options, ``--config FILE`` holding any of them as YAML (keys spelled ``num_samples`` or
``num-samples``) and ``--print_config`` to write such a file. A mistake raises ``ArgumentError``
instead of exiting, so ``medaug`` prints it as one line with exit code 2
(:mod:`lightning_medaug.cli_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, Namespace

__all__ = ["command_parser", "config_files", "parse_command"]

_REQUIRED = "the following arguments are required: "


def command_parser(prog: str, description: str,
                   config_help: str = "YAML file holding any of these options") -> ArgumentParser:
    """A parser for ``prog`` (e.g. ``"medaug generate"``) with ``--config``; add the options to it."""
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help=config_help)
    return parser


def parse_command(parser: ArgumentParser, argv: Sequence[str]) -> Namespace:
    """``parser.parse_args(argv)``; a mistake's message names the options as typed and points to ``--help``."""
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as err:
        message = str(err)
        if message.startswith(_REQUIRED):  # jsonargparse names config keys (num_samples), not options
            options = {}
            for token in parser.format_usage().split():
                option = token.strip("[]")
                if option.startswith("--"):  # argparse's dest: the long option, dashes as underscores
                    options[option[2:].replace("-", "_")] = option
            keys = message[len(_REQUIRED):].split(", ")
            message = _REQUIRED + ", ".join(options.get(key, key) for key in keys)
        raise ArgumentError(None, f"{message} (see `{parser.prog} --help`)") from err


def config_files(argv: Sequence[str]) -> list[tuple[int, str]]:
    """``(index, path)`` of each ``--config PATH`` or ``--config=PATH`` in ``argv``, for a command that
    reads the file before parsing (the index is that of the ``--config`` token)."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            found.append((i, argv[i + 1]))
        elif arg.startswith("--config="):
            found.append((i, arg.partition("=")[2]))
    return found
