"""What the command-line tools share: `--config.KEY=VALUE` overrides after the tool's own flags, and the one way every
`python -m mlc_jax.…` command ends (exit codes, one line naming the problem). Imports no jax."""
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable

from mlc_jax import host_malloc

# What a bad input raises in this package (ConfigError and CheckpointError are ValueErrors; missing files OSErrors).
BAD_INPUT = (OSError, ValueError)


# Ctrl-C (SIGINT, Python's KeyboardInterrupt) ends every command with this code, as shells report 128 + SIGINT.
INTERRUPTED_EXIT_CODE = 130


def run(body: Callable[[], int | None], exit_codes: dict[type[BaseException], int] | None = None) -> int:
  """`body()`'s exit code (None → 0), run with the host allocator tuned (`mlc_jax.host_malloc`); an exception of a
  type in `exit_codes` (default: bad input → 2) is printed as
  one line `error: …` on stderr and exits with its code (the first listed type it is an instance of). Ctrl-C is
  one line `error: interrupted (Ctrl-C): …` and exit 130, wherever it lands in the body; once the body has ended, a
  `python -m mlc_jax.…` command ignores Ctrl-C (its result, already printed, stands)."""
  codes = {BAD_INPUT: 2} if exit_codes is None else exit_codes
  try:
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)  # from here a Ctrl-C unwinds the body's `with`s
    host_malloc.keep_freed_memory()  # before the body's first computation starts jax's threads
    return body() or 0
  except tuple(t for types in codes for t in (types if isinstance(types, tuple) else (types,))) as e:
    code = next(c for types, c in codes.items() if isinstance(e, types))
    print(f"error: {e}", file=sys.stderr)
    return code
  except KeyboardInterrupt:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the line short
    print(f"\nerror: interrupted (Ctrl-C): {_command()} stopped before it finished; run the same "
          "command again", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Every `with` and `finally` has run; the interpreter's teardown is skipped, since XLA's threads may still be
    # running a computation the interrupted main thread dispatched (tearing them down crashed with SIGSEGV).
    os._exit(INTERRUPTED_EXIT_CODE)
  finally:
    if _command().startswith("python -m mlc_jax"):  # a command's result stands: a Ctrl-C during the interpreter's
      signal.signal(signal.SIGINT, signal.SIG_IGN)  # teardown after it does not make it exit 130 without a word


def _raise_keyboard_interrupt(signum, frame):
  """Python's Ctrl-C, except where it would be lost: Python drops an exception raised inside a garbage-collection
  callback (jax has one), so a Ctrl-C landing there is sent again a moment later instead."""
  if frame is not None and any(getattr(callback, "__code__", None) is frame.f_code for callback in gc.callbacks):
    threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
    return
  raise KeyboardInterrupt


def exit_at_ctrl_c_before_run() -> None:
  """For a `python -m mlc_jax.…` command: a Ctrl-C before `run` starts the body (while the command's modules import,
  which takes seconds) ends it at once with the one line and exit 130, rather than a traceback, or nothing at all
  where Python drops the KeyboardInterrupt (raised inside a garbage-collection callback) and the command runs on."""
  argv = getattr(sys, "orig_argv", [])
  if "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("mlc_jax"):
    command = f"python -m {argv[argv.index('-m') + 1]}"

    def interrupted(*_):
      os.write(2, f"\nerror: interrupted (Ctrl-C): {command} stopped before it started; run the same command "
                  "again\n".encode())
      os._exit(INTERRUPTED_EXIT_CODE)  # nothing has been written yet

    signal.signal(signal.SIGINT, interrupted)


def _command() -> str:
  """`python -m mlc_jax.TOOL` of the running command (the script's name when not run with -m)."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is None:
    return sys.argv[0] or "python"
  return f"python -m {spec.name.removesuffix('.__main__')}"


def parse_with_overrides(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, list[str]]:
  """`parser.parse_known_args(argv)`, every unknown argument a `--config.KEY=VALUE` override (else `parser.error`).

  Returns the parsed flags and the overrides as `KEY=VALUE` strings for `mlc_jax.config.apply_overrides`.
  """
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognised argument {item!r} (overrides look like --config.KEY=VALUE)")
    overrides.append(item[len("--config."):])
  return args, overrides
