"""The sandbox contains hostile programs within their limits, and the next program still runs.

Timeouts are small (about 1 s) so the file runs in seconds. The fork-bomb tests rely on RLIMIT_NPROC
being enforced, i.e. on `containment().processes` being "own uid" (root) or "user count" (Linux user).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from alignlab.rewards import sandbox
from alignlab.rewards.sandbox import Containment, containment, run_many, run_sandboxed

BOUNDED_PROCESSES = containment().processes in ("own uid", "user count")
needs_nproc = pytest.mark.skipif(not BOUNDED_PROCESSES, reason=f"no process limit here: {containment()}")


def _all_uids() -> list[tuple[int, int]]:
    """(pid, uid) of live processes under any sandbox uid (own-uid mode)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid = int(status.split("Uid:")[1].split()[0])
            if uid >= sandbox.UID_BASE and "State:\tZ" not in status:
                out.append((int(entry.name), uid))
    return out


def assert_next_program_runs():
    result = run_sandboxed("print(6 * 7)", timeout_s=5)
    assert result.ok and result.stdout == "42\n", result


def test_a_passing_program_with_stdin_runs_in_a_fresh_directory_with_an_empty_environment():
    code = "import os\nprint(int(input()) * 2)\nprint(os.getcwd())\nprint(sorted(os.environ))\nprint(os.listdir('.'))"
    result = run_sandboxed(code, stdin="21\n")
    assert result.ok and result.reason == "ok" and result.returncode == 0 and not result.timed_out
    doubled, cwd, env, files = result.stdout.splitlines()
    assert doubled == "42" and files == "[]"  # nothing beside the program, and the source was deleted
    assert set(eval(env)) <= {"LC_CTYPE"}  # empty, except what Python's C-locale coercion sets
    assert not Path(cwd).exists()  # the temporary directory is deleted afterwards


def test_exit_codes_and_exceptions_are_reported_not_raised():
    assert run_sandboxed("import sys; sys.exit(3)").reason == "exit code 3"
    failed = run_sandboxed("raise ValueError('boom')")
    assert not failed.ok and failed.returncode == 1 and "ValueError: boom" in failed.stderr


def test_infinite_loop_times_out_quickly():
    start = time.monotonic()
    result = run_sandboxed("while True:\n    pass", timeout_s=1.0)
    assert result.timed_out and result.reason == "timeout" and not result.ok
    assert time.monotonic() - start < 1.0 + 2.0
    assert_next_program_runs()


def test_cpu_limit_kills_a_spinning_program_before_the_wall_clock():
    result = run_sandboxed("while True:\n    pass", timeout_s=10.0, cpu_s=1)
    assert result.reason in ("cpu limit", "killed (SIGKILL)") and not result.timed_out and result.elapsed_s < 8


def test_memory_hog_fails_under_the_limit():
    result = run_sandboxed("x = bytearray(2 * 1024 ** 3)\nprint('allocated')", memory_mb=256, timeout_s=5)
    assert result.reason == "memory limit" and "allocated" not in result.stdout
    assert_next_program_runs()


def test_output_flood_is_cut_by_the_file_size_limit():
    result = run_sandboxed("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", file_mb=1, timeout_s=5,
                           output_chars=1000)
    assert result.reason == "file size limit" and len(result.stdout) == 1000 and not result.timed_out


def test_socket_attempt_fails():
    """A server the test process can reach is unreachable from the sandbox."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # reachable from here
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        result = run_sandboxed(code, timeout_s=5)
    assert not result.ok and "connected" not in result.stdout
    assert "Error" in result.stderr  # OSError: Network is unreachable, or PermissionError (socket patch)


def test_socket_patch_fallback_blocks_python_sockets():
    """The fallback used where network namespaces are refused stops socket(), create_connection, socketpair."""
    mode = Containment("socket-patch", "process group", "as parent")
    code = ("import socket\n"
            "for make in (socket.socket, socket.socketpair, lambda: socket.create_connection(('x', 1))):\n"
            "    try:\n        make()\n        print('made')\n    except PermissionError:\n        print('blocked')")
    result = sandbox._run(mode, code, stdin="", timeout_s=5, memory_mb=512, cpu_s=5, max_processes=16, file_mb=1,
                          output_chars=1000)
    assert result.ok and result.stdout.split() == ["blocked"] * 3, result


@needs_nproc
def test_bounded_forks_stop_at_the_process_limit():
    code = ("import os, time\nmade = failed = 0\nfor _ in range(50):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        failed += 1\n        continue\n    if pid == 0:\n        time.sleep(0.3)\n"
            "        os._exit(0)\n    made += 1\nprint(made, failed)\n")
    result = run_sandboxed(code, max_processes=8, timeout_s=5)
    made, failed = map(int, result.stdout.split())
    assert result.ok and made <= 7 and made + failed == 50 and failed > 0


@needs_nproc
def test_fork_bomb_is_contained_and_cleaned_up():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_sandboxed(bomb, max_processes=8, timeout_s=1.0)
    assert result.timed_out and result.elapsed_s < 3.0
    crash = run_sandboxed("import os\nwhile True:\n    os.fork()\n", max_processes=8, timeout_s=1.0)
    assert not crash.ok and "BlockingIOError" in crash.stderr
    if containment().processes == "own uid":
        assert not _all_uids()  # every process of the bombs was killed
    assert_next_program_runs()


@pytest.mark.skipif(containment().processes != "own uid", reason="needs the per-run uid (root)")
def test_a_process_that_leaves_the_session_is_killed_and_root_files_are_not_writable(tmp_path):
    target = tmp_path / "root_owned.txt"
    target.write_text("original")
    code = (f"import os, time\ntry:\n    open({str(target)!r}, 'w').write('changed')\nexcept PermissionError:\n"
            "    print('denied')\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n")
    result = run_sandboxed(code, timeout_s=5)
    assert result.ok and result.stdout == "denied\n" and target.read_text() == "original"
    assert not _all_uids()


def test_run_many_keeps_order_and_a_bad_sample_does_not_stop_the_others():
    codes = ["print(1)", "while True:\n    pass", "raise SystemExit(2)", "print(input())"]
    results = run_many(codes, workers=4, stdins=["", "", "", "hi"], timeout_s=1.0)
    assert [r.reason for r in results] == ["ok", "timeout", "exit code 2", "ok"]
    assert results[0].stdout == "1\n" and results[3].stdout == "hi\n"


def test_invalid_limits_are_rejected():
    with pytest.raises(ValueError, match="memory_mb"):
        run_sandboxed("pass", memory_mb=1)


def test_containment_is_reported():
    mode = containment()
    assert mode.network in ("namespace", "socket-patch")
    if os.name == "posix" and os.geteuid() == 0 and Path("/proc/self/status").exists():
        assert mode.processes in ("own uid", "process group")
