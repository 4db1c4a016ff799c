"""Running external codec programs with time limits and readable errors."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Sequence

from licbench.codecs.base import CodecError, CodecTimeout, CodecUnavailable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[int], None] | None:
    """On Linux, what makes a tool get SIGKILL when the process that started it dies: a tool runs
    in a session of its own (so that a timeout kills its whole group), which no group signal
    reaches, and a worker process killed while it waits (a stopped run, the out-of-memory
    killer) would leave it running, past every timeout, for nobody. Elsewhere, None."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def set_parent_death_signal(parent: int) -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: nobody will wait
            os._exit(1)

    return set_parent_death_signal


_DIE_WITH_PARENT = _die_with_parent()


def run_tool(
    cmd: Sequence[str | os.PathLike], timeout: float, cwd: Path | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess:
    """Run ``cmd``; raise CodecTimeout past ``timeout`` seconds (the whole process group is
    killed), CodecError on a non-zero exit or a signal (with the last stderr line), and
    CodecUnavailable when the program does not exist."""
    args = [str(c) for c in cmd]
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=partial(_DIE_WITH_PARENT, os.getpid()) if _DIE_WITH_PARENT else None,
        )
    except FileNotFoundError:
        raise CodecUnavailable(f"program not found: {args[0]}") from None
    except PermissionError:
        raise CodecUnavailable(f"program is not executable: {args[0]}") from None
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CodecTimeout(f"{Path(args[0]).name} timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        if proc.returncode < 0:
            what = f"was killed by signal {signal.Signals(-proc.returncode).name}"
        else:
            what = f"exited with status {proc.returncode}"
        detail = f": {lines[-1].strip()}" if lines else ""
        raise CodecError(f"{Path(args[0]).name} {what}{detail}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The static ffmpeg shipped by imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise CodecUnavailable("imageio-ffmpeg is not installed: pip install imageio-ffmpeg") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


@lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    out = run_tool([ffmpeg_exe(), "-hide_banner", "-version"], timeout=30).stdout.decode()
    return out.splitlines()[0].replace("ffmpeg version ", "").split(" Copyright")[0].strip()


@lru_cache(maxsize=None)
def ffmpeg_has_encoder(encoder: str) -> bool:
    out = run_tool([ffmpeg_exe(), "-hide_banner", "-encoders"], timeout=30).stdout.decode()
    return any(line.split()[1:2] == [encoder] for line in out.splitlines() if line.startswith(" "))
