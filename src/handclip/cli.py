"""The ``handclip`` command: a thin layer over the Python API.

Each subcommand lives in ``handclip.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``: ``run`` checks the arguments, then calls one ``handclip.api`` function per action
and prints its result. The api is imported inside ``run``, after those checks, and loads a workflow's
package (torch, for most) only when it is called, so ``--help``, a refused command line and the
commands that need no model answer at once. User errors (``HandCLIPError``) become one line
on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

from . import __version__
from .errors import HandCLIPError, HandCLIPWarning

COMMANDS = {
    "prepare": "write a protocol manifest (train/val/query/gallery splits) for a dataset",
    "scan": "check every image of a manifest: exists, decodes, large enough",
    "train": "train HandCLIP (stage 1 prompts, stage 2 image encoder)",
    "evaluate": "evaluate a checkpoint (or a zero-shot backbone) on a manifest's Monte Carlo runs",
    "calibrate": "fit score -> likelihood-ratio maps for a checkpoint on a manifest's identities",
    "validate": "validate a checkpoint and its calibration against a laboratory's plan (criteria.yaml)",
    "benchmark": "train and evaluate on every benchmark subset and print the paper-style table",
    "enrol": "embed images and add them to a gallery index on disk",
    "search": "rank a gallery's identities for query hand photos",
    "audit": "verify or show a gallery's hash-chained audit log",
    "export": "export a checkpoint's image features to ONNX (for ONNX Runtime and other engines)",
    "gallery": "redact an identity, or re-encode a gallery with a new model into a new gallery",
    "case": "list a case's searches or export the case as one checked bundle",
    "demo": "run the whole pipeline on built-in synthetic hands",
    "serve": "run the examiner web service (REST API and web page) over a gallery",
    "serve-keys": "add, list or revoke the web service's API keys",
    "pretrain-tiny": "pretrain a tiny CLIP on captioned synthetic hands (for the demo)",
}


class UsageError(HandCLIPError):
    """A command line argparse refused; ``prog`` is the (sub)command whose parser refused it."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where the help is, not the whole usage."""

    def error(self, message: str):
        raise UsageError(message, self.prog)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="handclip", description="Hand-based person identification with CLIP-ReID.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"handclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"handclip.commands.{name.replace('-', '_')}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show full tracebacks on errors")
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("HANDCLIP_DEBUG") == "1"
    try:
        try:
            args = build_parser().parse_args(argv)
        except UsageError as exc:
            # Unknown options are reported by the top-level parser; point at the command's own help.
            command = next((a for a in argv if a in COMMANDS), None)
            prog = f"handclip {command}" if exc.prog == "handclip" and command else exc.prog
            print(f"handclip: error: {exc} (see {prog} --help)", file=sys.stderr)
            return 2
        with _warnings_as_lines():
            code = int(args._run(args) or 0)
        sys.stdout.flush()  # here, so a closed pipe is handled below rather than at interpreter exit
        return code
    except HandCLIPError as exc:
        if debug:
            raise
        print(f"handclip: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # SIGTERM during training arrives as a KeyboardInterrupt subclass carrying exit code 143; a training
        # run's interruption carries the command that resumes it.
        print(f"handclip: {str(exc) or 'interrupted'}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except BrokenPipeError:
        # The reader went away (``handclip ... | head``): stop quietly, as command-line tools do.
        _silence_stdout()
        return 141
    except OSError as exc:
        # A file the user named cannot be read or written (missing, read-only, full disk, ...).
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"handclip: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if debug:
            raise
        print(f"handclip: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


@contextlib.contextmanager
def _warnings_as_lines():
    """HandCLIP's own warnings as one line each on stderr (``handclip: warning: ...``), every time they
    occur; any other warning as Python shows it."""
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, HandCLIPWarning):
            print(f"handclip: warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", HandCLIPWarning)
        warnings.showwarning = one_line
        yield


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
