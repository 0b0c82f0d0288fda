"""``fanout``: one command for the launcher, the operator tools and the model's training.

    fanout serve [--layout FILE]             every tier of a layout; Ctrl-C stops them
    fanout check [LAYOUT]                    validate a layout and say what it starts
    fanout capacity --pool small --users 8   ... and the rest: ``fanout --help``

Each subcommand lives in a module that declares its options (``add_arguments(parser)``,
when it has any) and does its work (``run(args)``, or ``run(args, layout)`` for one that
reads a layout). That module is imported only when its subcommand runs, so ``fanout
--help`` and ``fanout check`` import no torch, and a tool's dependencies (the
``fanout[tools]`` and ``fanout[train]`` extras) are needed by that tool only. The layout
is read here, once, for every subcommand that needs one: a bad file exits 2 with the
file, the key and what is wrong. ``python -m fanout`` is the same command, for where
the console script is not installed (the container image).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import NoReturn

from fanout.layout import LAYOUT_ENV, load_layout_or_exit

LAYOUT_HELP = f"layout file (default: ${LAYOUT_ENV}, else the shipped gpu_layout.yaml)"


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    layout: str | None = None  # "option" (--layout FILE) or "positional" ([LAYOUT])
    extra: str | None = None  # the setup.cfg extra whose packages it needs


COMMANDS = {
    # The launcher: what runs the tiers.
    "serve": Command("fanout.launch.serve", "run every tier of a layout; Ctrl-C stops them",
                     layout="option"),
    "check": Command("fanout.layout", "validate a layout and say what it starts",
                     layout="positional"),
    "fit": Command("fanout.launch.memory_fit", "estimate how many replicas of each pool's "
                   "model fit on each device", layout="positional"),
    "procfile": Command("fanout.launch.tiers", "print the Procfile that runs a layout's "
                        "tiers (honcho, foreman)", layout="positional"),
    "edge": Command("fanout.launch.edge", "run the edge: nginx in front of the front, "
                    "configured from the layout", layout="option"),
    "convert": Command("fanout.convert", "convert the layout's ctranslate2 pools into the "
                       "cache, ahead of time", layout="option"),
    # The operator tools.
    "capacity": Command("fanout.tools.capacity", "size a pool's worker count under a "
                        "closed-loop load", layout="option", extra="tools"),
    "soak": Command("fanout.tools.soak", "a bounded soak against real tiers, then the books",
                    layout="option", extra="tools"),
    "bench": Command("fanout.tools.bench.bench", "time fan-out against naive, batched and "
                     "the in-process floor", extra="tools"),
    "slow-clients": Command("fanout.tools.bench.slow_clients", "time what slow and silent "
                            "clients do to everyone else, with the edge and without",
                            extra="tools"),
    "fetch": Command("fanout.tools.fetch_model", "download GPT-2 checkpoints from the model "
                     "hub into models/"),
    "tiny-model": Command("fanout.tools.tiny_model", "make a small random GPT-2 with the "
                          "real tokenizer (tests, timing)", extra="tools"),
    # The shipped models.
    "train": Command("training.train", "train one of the shipped models", extra="train"),
    "eval": Command("training.evaluate", "evaluate a model folder on the held-out slice",
                    extra="train"),
    "card": Command("training.model_card", "write a model folder's MODEL_CARD.md"),
}


def missing_requirements(extra: str, requirements: Iterable[str] | None = None) -> list[str]:
    """The packages of ``fanout[extra]`` that are not installed. ``requirements`` are as
    ``importlib.metadata.requires`` gives them, by default fanout's own: none are known
    where fanout itself is not installed (run from source, as in the container image)."""
    if requirements is None:
        try:
            requirements = metadata.requires("fanout") or []
        except metadata.PackageNotFoundError:
            return []
    missing = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", marker) is None:
            continue
        name = re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0]
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def load(name: str, command: Command) -> ModuleType:
    """The subcommand's module, or exit 2 saying what this install lacks for it."""
    missing = missing_requirements(command.extra) if command.extra else []
    if missing:
        refuse(f"fanout {name} needs the {command.extra!r} extra ({', '.join(missing)} "
               f"missing): pip install 'fanout[{command.extra}]', or in a checkout "
               f"pip install -e '.[{command.extra}]'")
    try:
        return importlib.import_module(command.module)
    except ModuleNotFoundError as error:  # e.g. the container image, which has no tools
        hint = f" (and the {command.extra!r} extra)" if command.extra else ""
        refuse(f"fanout {name}: this install has no {error.name}: install fanout from a "
               f"checkout{hint}")


def refuse(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def declare(parser: argparse.ArgumentParser, command: Command, module: ModuleType) -> None:
    """The subcommand's options: the layout's, when it reads one, then the module's own."""
    parser.description = (module.__doc__ or command.help).strip().splitlines()[0]
    if command.layout == "option":
        parser.add_argument("--layout", metavar="FILE", help=LAYOUT_HELP)
    elif command.layout == "positional":
        parser.add_argument("layout", nargs="?", metavar="LAYOUT", help=LAYOUT_HELP)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="fanout", description=__doc__.splitlines()[0].replace("``", ""),
        epilog="fanout COMMAND --help says more about each.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    declared: dict[str, tuple[argparse.ArgumentParser, ModuleType]] = {}
    for name, command in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=command.help, description=command.help)
        if argv and argv[0] == name:  # only the subcommand that runs is imported
            module = load(name, command)
            declare(subparser, command, module)
            declared[name] = subparser, module
    args = parser.parse_args(argv)  # exits on --help and on a command it does not know
    subparser, module = declared[args.command]
    command = COMMANDS[args.command]
    try:
        if command.layout:
            status = module.run(args, load_layout_or_exit(args.layout))
        else:
            status = module.run(args)
    except argparse.ArgumentError as error:  # arguments that make no sense together
        subparser.error(str(error))
    return int(status or 0)
