"""A command's own lines on the terminal, everything its libraries print in a log file.

`altlake demo` runs Airflow (structlog on stdout), Spark (a JVM writing to its inherited file
descriptors), py4j and worker subprocesses in its own process. Python-level settings cannot catch
all of them, so `LogRedirect` works one level lower: it points file descriptors 1 and 2 at the log
file, which every library, thread, JVM and child process then writes to, and hands back a `Console`
that writes the command's own lines to duplicates of the original descriptors, taken first.

`log_tail` gives the end of such a log for a failure message, with stack traces folded to their
last line (the user reads what failed; the frames stay in the file).
"""

from __future__ import annotations

import atexit
import os
import re
import sys
from pathlib import Path
from typing import TextIO


class Console:
    """The user's terminal while the process's own stdout and stderr go to a log file.

    `line()` prints one line; on a terminal `status()` shows a line that the next one replaces
    (a task that is running, then how it ended); in a pipe or a file, `status()` prints nothing.
    """

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._status = False

    def line(self, text: str = "") -> None:
        self._clear_status()
        self.stream.write(text + "\n")
        self.stream.flush()

    def status(self, text: str) -> None:
        if not self.tty:
            return
        self._clear_status()
        self.stream.write(text)
        self.stream.flush()
        self._status = True

    def _clear_status(self) -> None:
        if self._status:
            self.stream.write("\r\033[K")
            self._status = False


class LogRedirect:
    """`with LogRedirect(path) as console:` file descriptors 1 and 2 write to `path` (truncated
    first unless `append`), `console` to the terminal they pointed at before. On exit they are
    restored; with `quiet_exit`, they are pointed at the log again when the interpreter exits, for
    whatever libraries log while shutting down (py4j closing its connections, a JVM's last lines).
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False, quiet_exit: bool = False) -> None:
        self.path = Path(path)
        self.append = append
        self.quiet_exit = quiet_exit
        self._saved: dict[int, int] = {}
        self.console: Console | None = None

    def __enter__(self) -> Console:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _flush_python_streams()
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if self.append else os.O_TRUNC)
        log_fd = os.open(self.path, flags, 0o644)
        try:
            self._saved = {fd: os.dup(fd) for fd in (1, 2)}  # os.dup: not inherited by child processes
            for fd in (1, 2):
                os.dup2(log_fd, fd)
        finally:
            os.close(log_fd)
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        stream = os.fdopen(os.dup(self._saved[1]), "w", encoding=encoding, errors="replace", buffering=1)
        self.console = Console(stream, tty=os.isatty(self._saved[1]))
        return self.console

    def __exit__(self, *exc) -> None:
        _flush_python_streams()
        if self.console is not None:
            self.console._clear_status()
            self.console.stream.close()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = {}
        if self.quiet_exit:
            # Registered last, so run first among the atexit handlers (py4j's and pyspark's included).
            atexit.register(_redirect_to, str(self.path))


def _redirect_to(path: str) -> None:
    _flush_python_streams()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):
        os.dup2(log_fd, fd)
    os.close(log_fd)


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


# A Python traceback's header and the lines between it and the exception it ends with.
_PY_TRACEBACK = "Traceback (most recent call last):"
_PY_CHAINED = re.compile(r"^(During handling of the above exception|The above exception was the direct cause)")
_JAVA_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ (more|common frames omitted))")
TAIL_BYTES = 256 * 1024


def fold_stack_traces(lines: list[str]) -> list[str]:
    """`lines` with each Python traceback reduced to a note and its final exception line, and
    each run of Java stack frames (`\\tat ...`) to a note."""
    out: list[str] = []
    in_traceback = False
    for line in lines:
        if line.startswith(_PY_TRACEBACK):
            in_traceback = True
            out.append("(traceback: in the log)")
            continue
        if in_traceback:
            if line[:1].isspace() or not line.strip():
                continue
            in_traceback = False
        if _PY_CHAINED.match(line):
            continue
        if _JAVA_FRAME.match(line):
            if not out or out[-1] != "(stack frames: in the log)":
                out.append("(stack frames: in the log)")
            continue
        out.append(line)
    # A chained traceback's notes follow one another: one is enough.
    return [line for i, line in enumerate(out) if i == 0 or line != out[i - 1]]


def log_tail(path: str | os.PathLike, lines: int = 20, *, start: int = 0, end: int | None = None, width: int = 220) -> list[str]:
    """The last `lines` lines of `path` between byte offsets `start` and `end` (its end), stack
    traces folded, each line cut to `width` characters."""
    try:
        with open(path, "rb") as file:
            end = file.seek(0, os.SEEK_END) if end is None else end
            skip = max(start, end - TAIL_BYTES)  # a long log: its end is enough
            file.seek(skip)
            data = file.read(max(0, end - skip))
    except OSError:
        return []
    text = [line.rstrip() for line in data.decode("utf-8", "replace").splitlines()]
    if skip > start and text:
        text = text[1:]  # cut mid-line
    folded = fold_stack_traces([line for line in text if line.strip()])
    return [line if len(line) <= width else line[: width - 1] + "…" for line in folded[-lines:]]
