"""The ``emrshare`` command's one error path, its global options and environment options.

Every expected failure reaches the person as ONE line on stderr::

    emrshare: <what failed>: <why>; <what to do>

and a non-zero exit: 2 for usage (bad arguments, :class:`UsageError`), 1 for
failures (:class:`CliError`, any other :class:`agents.errors.AgentError`, an
``OSError`` such as a missing file or a port in use, a policy text that does
not parse), 130 when Ctrl-C interrupts a command (``swarm up`` and ``patient
serve``, which run until stopped, stop on Ctrl-C or SIGTERM with one line and
exit 0). A traceback is printed only with
``--verbose``, or for a real bug (an exception nobody raised on purpose), and
then the last line says it is a bug.

Commands name what they were doing with :func:`doing`: an expected error
raised inside becomes a :class:`CliError` that starts with that phrase and
ends with a hint (:func:`hint`). Trio wraps errors of concurrent tasks (and
Ctrl-C) in exception groups; :func:`unwrap` finds the one that matters.

argparse reports a usage error in one line too: while a command runs,
:func:`one_line_usage_errors` makes every ``ArgumentParser.error`` (also in
commands registered later, whose parsers are plain argparse) raise
:class:`UsageError` instead of printing the usage block.

Shared option parsing: :func:`parse_attributes` (``--attr NAME=VALUE``),
:func:`unlock_options` (``--passphrase-file`` | ``--key-file``), and
:func:`check_input_file` / :func:`check_output_path` before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn

from agents.errors import AgentError

__all__ = [
    "CliError", "UsageError", "ENV_SWARM", "ENV_SUBJECT", "ENV_PASSPHRASE", "env_default",
    "env_help", "set_verbose", "verbose", "doing", "unwrap", "explain", "hint", "report", "run",
    "one_line_usage_errors", "fail", "no_such_subcommand", "check_output_path", "check_input_file",
]

ENV_SWARM = "EMRSHARE_SWARM"
"""The swarm's data directory for every command that takes ``--swarm``/``--data``."""
ENV_SUBJECT = "EMRSHARE_SUBJECT"
"""The user id for ``emrshare patient``/``doctor`` (``--subject``)."""
ENV_PASSPHRASE = "EMRSHARE_PASSPHRASE"
"""The passphrase of the user's key store (else a prompt, or ``--key-file``)."""

_VERBOSE = False


class CliError(AgentError):
    """An expected failure of a command: ``<what failed>: <why>; <what to do>``."""

    exit_code = 1

    def __init__(self, what: str, why: str, todo: str = ""):
        super().__init__(f"{what}: {why}" + (f"; {todo}" if todo else ""))
        self.what, self.why, self.todo = what, why, todo


class UsageError(CliError):
    """Bad arguments: exit status 2."""

    exit_code = 2


def fail(what: str, why: str, todo: str = "") -> NoReturn:
    raise CliError(what, why, todo)


def no_such_subcommand(group: str, given: str, names: Iterable[str]) -> UsageError:
    """The usage error for ``emrshare GROUP GIVEN`` when GIVEN is none of ``names``: "did you
    mean" the closest, if one is close."""
    import difflib

    close = difflib.get_close_matches(given, list(names), n=1)
    return UsageError(f"{group} {given}", "no such subcommand",
                      (f"did you mean `emrshare {group} {close[0]}`? " if close else "")
                      + f"see `emrshare {group} --help`")


def set_verbose(on: bool) -> None:
    global _VERBOSE
    _VERBOSE = on


def verbose() -> bool:
    """``--verbose`` was given (anywhere on the command line)."""
    return _VERBOSE


def env_default(var: str, fallback: Any = None) -> Any:
    """The environment variable's value if set and non-empty, else ``fallback``."""
    value = os.environ.get(var)
    return value if value else fallback


def env_help(text: str, var: str, fallback: Any = None) -> str:
    """``text`` followed by where the default comes from."""
    tail = f"env {var}" + (f"; default {fallback}" if fallback is not None else "")
    return f"{text} ({tail})"


# ------------------------------------------------------------------ classifying errors


def unwrap(exc: BaseException) -> BaseException:
    """The exception that matters inside (trio) exception groups: a KeyboardInterrupt
    anywhere, else the first expected error (:func:`explain` knows it), else the lone
    leaf, else the group itself."""
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    for leaf in leaves:
        if _expected(leaf):
            return leaf
    import trio

    real = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    return exc


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _expected(exc: BaseException) -> bool:
    from core.errors import PolicyError

    return isinstance(exc, (AgentError, OSError, PolicyError, UnicodeDecodeError))


_HINTS: list[tuple[str, str]] = [
    # (error class name in its MRO, what to do); the first match wins
    ("KeyStoreError", f"check {ENV_PASSPHRASE} (or --key-file) and --subject"),
    ("PolicyDenied", "the patient's policy decides; ask the patient to change it or give --purpose"),
    ("RequestRejected", "the patient declined; ask the patient"),
    ("GrantRevoked", "the patient revoked access; request it again"),
    ("RecordNotFound", "list the patient's records with `emrshare doctor records PATIENT`"),
    ("UnknownAgent", "check the user id, or register first"),
    ("CertificateRevoked", "this user's certificate is revoked; register a new user"),
    ("EnrollmentExists", "this subject is already registered; use it, or pick another --subject"),
    ("RegistrationError", "check --org and --subject, or register first"),
    ("NotEnoughPeers", "check that the swarm runs (`emrshare swarm status`) and retry"),
    ("Unavailable", "check that the swarm runs (`emrshare swarm status`) and retry"),
    ("TransactionRejected", "the ledger refused it; see the reason"),
    ("IntegrityError", "data failed verification; report it to the swarm's operators"),
    ("PolicyError", "fix the policy text (syntax: docs/policy.md)"),
]


def hint(exc: BaseException, *, port_option: str = "--port") -> str:
    """What to do about an expected error (may be empty); ``port_option``: the option that
    chooses the address of an address already in use."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    for name, text in _HINTS:
        if name in names:
            return text
    if isinstance(exc, OSError):
        return _os_hint(exc, port_option)
    return ""


def _os_hint(exc: OSError, port_option: str = "--port") -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"choose another {port_option}, or stop the program using it"
    if isinstance(exc, FileNotFoundError):
        return "check the path"
    if isinstance(exc, IsADirectoryError):
        return "give a file, not a directory"
    if isinstance(exc, NotADirectoryError):
        return "give a directory, not a file"
    if isinstance(exc, PermissionError):
        return "check the file's permissions"
    return ""


def _why(exc: BaseException) -> str:
    """The reason, without the exception's class name or a repeated file name."""
    if isinstance(exc, OSError) and not isinstance(exc, AgentError):
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        return f"{' -> '.join(map(str, names))}: {reason.lower()}" if names else reason.lower()
    if isinstance(exc, UnicodeDecodeError):
        return "not a text file (UTF-8)"
    if isinstance(exc, AgentError):
        text = str(exc) or type(exc).__name__
        code = getattr(exc, "code", "")
        if code and code not in ("agent.error", "") and code not in text and not isinstance(exc, _quiet_code()):
            text = f"{text} ({code})"
        return text
    return str(exc) or type(exc).__name__


def _quiet_code() -> tuple[type, ...]:
    from agents.keys import KeyStoreError

    return (KeyStoreError, CliError)


def explain(exc: BaseException, what: str, *, port_option: str = "--port") -> CliError | None:
    """The expected error ``exc`` as a CliError naming ``what`` failed; None for a bug."""
    if isinstance(exc, CliError):
        return exc
    if not _expected(exc):
        return None
    return CliError(what, _why(exc), hint(exc, port_option=port_option))


@contextlib.contextmanager
def doing(what: str, *, port_option: str = "--port") -> Iterator[None]:
    """Expected errors raised inside become ``CliError(what, why, hint)`` (an address in use:
    "choose another ``port_option``")."""
    try:
        yield
    except CliError:
        raise
    except BaseException as exc:
        leaf = unwrap(exc)
        if isinstance(leaf, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if isinstance(leaf, CliError):
            raise leaf from None
        err = explain(leaf, what, port_option=port_option)
        if err is None:
            raise
        raise err from leaf


def parse_attributes(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """``--attr NAME=VALUE`` options as certificate attributes, read the same way by every
    command that takes them (``patient|doctor register``, ``registrar issue``): a whole
    number of at most 17 digits is an int, ``true``/``false`` a bool, anything else text."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(what, f"--attr needs NAME=VALUE, got {pair!r}", "e.g. --attr department=cardiology")
        if value.isascii() and value.lstrip("-").isdigit() and len(value) < 18:
            out[key] = int(value)
        else:
            out[key] = {"true": True, "false": False}.get(value, value)
    return out


def unlock_options(parser: argparse.ArgumentParser, *, passphrase_help: str, key_file_help: str) -> None:
    """The options that unlock an organization's or a user's key stores, one or the other:
    ``--passphrase-file F`` and ``--key-file F`` (as paths; the command reads them)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--passphrase-file", type=Path, metavar="F", help=passphrase_help)
    g.add_argument("--key-file", type=Path, metavar="F", help=key_file_help)


def check_input_file(path: str | Path, what: str, *, directory: bool = False) -> Path:
    """``path`` as a readable regular file (or, with ``directory``, a directory holding
    at least one file), else CliError (checked before any work)."""
    p = Path(path)
    if not p.exists():
        fail(what, f"{p}: no such file", "check the path")
    if p.is_dir():
        if not directory:
            fail(what, f"{p} is a directory", "give a file")
        if not any(f.is_file() for f in p.iterdir()):
            fail(what, f"directory {p} holds no files", "give a file, or a directory of the files to store")
    if not os.access(p, os.R_OK):
        fail(what, f"{p}: permission denied", "check the file's permissions")
    return p


def check_output_path(path: str | Path, what: str, *, option: str = "--out") -> Path:
    """``path`` (given with ``option``) as a writable file path in an existing directory, else CliError."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        fail(what, f"{p} is a directory", "give a file name")
    if not parent.is_dir():
        fail(what, f"directory {parent} does not exist", f"create it first, or choose another {option}")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        fail(what, f"{p}: permission denied", f"choose another {option}")
    return p


# ------------------------------------------------------------------ reporting


def report(exc: BaseException, what: str, *, stream=None) -> int:
    """Print ``exc`` the CLI's way; return the exit status."""
    stream = stream if stream is not None else sys.stderr
    leaf = unwrap(exc)
    if isinstance(leaf, KeyboardInterrupt):
        print("emrshare: interrupted", file=stream)
        return 130
    if isinstance(leaf, BrokenPipeError):  # `emrshare ... | head`: the reader left; say nothing
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    if isinstance(leaf, SystemExit):
        code = leaf.code
        if isinstance(code, str):
            print(f"emrshare: {code}", file=stream)
            return 1
        return int(code or 0)
    err = explain(leaf, what)
    if err is None:
        traceback.print_exception(exc, file=stream)
        print(f"emrshare: {what}: this is a bug in emrshare: {type(leaf).__name__}: {leaf}; "
              "please report it with the traceback above", file=stream)
        return 1
    if _VERBOSE:
        traceback.print_exception(exc, file=stream)
    print(f"emrshare: {' '.join(line.strip() for line in str(err).splitlines())}", file=stream)
    return err.exit_code


def run(fn: Callable[[], int | None], what: str) -> int:
    """Run a command's body through the one error path."""
    try:
        with one_line_usage_errors():
            return int(fn() or 0)
    except BaseException as exc:  # noqa: BLE001 - this is the error path
        return report(exc, what)


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """argparse's ``error`` raises :class:`UsageError` (one line) instead of printing usage."""
    original = argparse.ArgumentParser.error

    def error(self: argparse.ArgumentParser, message: str) -> NoReturn:
        raise UsageError(self.prog.removeprefix("emrshare "), message, f"see `{self.prog} --help`")

    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]
