"""The ``sdlens`` command line: a thin layer over the Python API (``sdlens.analysis``).

Exit codes (the same for every command, documented in the README): 0 done; 1 the command ran and found problems
in what it was asked to check (a file that cannot be read or that has NaN/Inf with ``inspect``, a failed
verification with ``convert``); 2 usage or input error (a wrong option, a missing or unusable input, an output
that may not be written); 3 internal error (a bug, in one line); 130 interrupted.

Every command is one module of ``sdlens.commands`` with one ``run`` function, registered from :data:`COMMANDS`;
they print through ``sdlens.console`` and leave option checks to the API (``sdlens.choices``).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from sdlens.commands import (
    arch,
    convert,
    delta,
    demo,
    diff,
    embed,
    extract_lora,
    inspect,
    lineage,
    matrix,
    recipe,
    schedule,
    version,
)
from sdlens.console import EXIT_INTERNAL, EXIT_PROBLEMS, EXIT_USAGE, err, fail, out  # noqa: F401 - re-exported
from sdlens.errors import SdlensError


def _plain_help(params: list[Any]) -> list[Any]:
    """Help text with words, not Python types: no ``<bool>`` after flags, ``PATH...`` rather than
    ``{paths}... <list[Path]>``. Arguments and options get an upper-case metavar (their own where set)."""
    for p in params:
        if getattr(p, "_sdlens_plain", False):
            continue
        p._sdlens_plain = True
        if getattr(p, "param_type_name", "") == "argument":
            name = (p.metavar or p.name.upper()) + (
                "..." if p.nargs != 1 and not (p.metavar or "").endswith("...") else ""
            )
            p.metavar = name
            usage = name if p.required else f"[{name}]"
            p.display_type_rich = lambda ctx=None: None
            p._usage_display_name = lambda usage=usage: usage
            p.get_usage_pieces = lambda ctx=None, usage=usage: [usage]
        elif getattr(p, "is_flag", False) or getattr(p, "count", False):
            p.metavar = ""
        elif p.metavar is None:
            p.metavar = "N" if _is_int(p) else p.name.upper()
    return params


def _is_int(p: Any) -> bool:
    annotation = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if annotation is not None:
        return annotation in (int, int | None)
    return getattr(getattr(p, "type", None), "name", "") == "integer"


class _Command(TyperCommand):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _plain_help(super().get_params(ctx))


class _Group(TyperGroup):
    """Every command's :class:`SdlensError` becomes one line on stderr and exit 2; Ctrl-C exit 130."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201
        return _plain_help(super().get_params(ctx))

    # a module name's ``_`` is a ``-`` on the command line (``extract_lora`` -> ``sdlens extract-lora``)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            command.name = (command.name or "").replace("_", "-")

    def list_commands(self, ctx):  # noqa: ANN001, ANN201
        return [n.replace("_", "-") for n in super().list_commands(ctx)]

    def get_command(self, ctx, cmd_name):  # noqa: ANN001, ANN201
        return super().get_command(ctx, cmd_name) or super().get_command(ctx, cmd_name.replace("-", "_"))

    def invoke(self, ctx):  # noqa: ANN001, ANN201
        try:
            return super().invoke(ctx)
        except SdlensError as e:
            fail(e)
            raise typer.Exit(getattr(e, "exit_code", EXIT_USAGE)) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="sdlens",
    cls=_Group,
    help="See inside Stable Diffusion family checkpoints: what a file is, what changed, how models relate.\n\n"
    "Exit codes: 0 done; 1 problems found in what was checked; 2 usage or input error; 3 internal error (a bug); 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Every command, in the order ``sdlens --help`` lists them: ``sdlens <module name>`` runs ``<module>.run``.
# Importing them is cheap: each imports its heavy dependencies inside ``run``.
COMMANDS = (
    inspect,
    diff,
    demo,
    version,
    arch,
    schedule,
    convert,
    embed,
    matrix,
    recipe,
    lineage,
    delta,
    extract_lora,
)


def command_name(module: Any) -> str:
    """``sdlens.commands.inspect`` -> ``inspect``."""
    return module.__name__.rsplit(".", 1)[-1]


def command_help(func: Any) -> str:
    """A command's docstring as help: paragraphs kept, the lines inside one joined (the terminal wraps them;
    rich would otherwise keep the source's line breaks as well as its own)."""
    import inspect as _inspect
    import re

    doc = _inspect.getdoc(func) or ""
    return "\n\n".join(re.sub(r"\s*\n\s*", " ", p.strip()) for p in re.split(r"\n\s*\n", doc) if p.strip())


for _module in COMMANDS:
    app.command(command_name(_module), cls=_Command, help=command_help(_module.run))(_module.run)


def _print_version(value: bool) -> None:
    if value:
        from sdlens import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the sdlens version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """See inside Stable Diffusion family checkpoints: what a file is, what changed, how models relate.

    Exit codes: 0 done; 1 problems found in what was checked; 2 usage or input error; 3 internal error (a bug); 130 interrupted."""


def main(argv: list[str] | None = None) -> None:
    """The console entry point; exit codes in the README (0 done, 1 problems found, 2 usage, 3 internal). Whatever happens, one line, no traceback
    (unless ``SDLENS_DEBUG=1``)."""
    import logging

    from sdlens.io.base import debug

    # optional libraries diffusers pulls in (bitsandbytes) log notices about their own kernels: not for users
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        app(args=argv, prog_name="sdlens")
    except SdlensError as e:  # raised outside a command (the group catches the commands' own)
        fail(e)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # the last safety net: a bug, reported in one line
        if debug():
            raise
        from sdlens.io.limits import clip

        fail(
            SdlensError(
                None,
                f"internal error: {type(e).__name__}: {clip(str(e))} "
                "(a bug in sdlens; SDLENS_DEBUG=1 shows the traceback)",
            )
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
