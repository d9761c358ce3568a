"""Run untrusted Python (model-written code) in a contained subprocess.

    result = run_sandboxed("print(sum(range(10)))", timeout_s=2.0)
    result.ok, result.stdout, result.reason        # True, "45\n", "ok"
    containment()                                   # what this machine enforces (see below)

Each program runs as `python -I -S` (the standard library only) in a new session, in a fresh temporary
directory deleted afterwards, with an empty environment and stdin/stdout/stderr as files (output is bounded by
the file-size limit, not by the parent's memory). A launcher sets, before the program's first line: RLIMIT_AS
`memory_mb`, RLIMIT_CPU `cpu_s`, RLIMIT_FSIZE `file_mb`, RLIMIT_NOFILE 64, no core dumps, `no_new_privs`,
RLIMIT_NPROC `max_processes`, and a new empty network namespace (`unshare(CLONE_NEWNET)`; where refused,
Python's socket constructors are replaced instead, which stops ordinary Python code but not another binary).
After `timeout_s` every process of the program is killed.

RLIMIT_NPROC never applies to uid 0, so under root each program runs under its own fresh unused uid: the limit
holds, root's files are not writable, and every process of that uid is killed afterwards, even one that left
the session. If the interpreter lives where only root can enter (e.g. /root/.pyenv), the program keeps
CAP_DAC_READ_SEARCH (read any file) to import the standard library. Without root the limit is the user's
current process count plus `max_processes`, and cleanup kills the process group.

Not contained: reading what its user can read, writing where its user can write (/tmp, /dev/shm under the
uid switch), CPU up to its limits. This is process-level containment for reward computation, not a security
boundary; docs/rewards.md lists every guarantee and limit.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SETUP_EXIT = 125
UID_BASE = 1 << 30  # sandbox uids: UID_BASE + (parent pid << 8) + run number, far above real accounts

# Runs as `python -I -S -c LAUNCHER CONFIG_JSON` in the program's directory, then execs the program in-process.
LAUNCHER = r'''
import ctypes, json, os, resource, sys
def _setup():
    cfg = json.loads(sys.argv[1])
    def fail(what):
        sys.stderr.write("sandbox setup failed: " + what + "\n")
        os._exit(cfg["setup_exit"])
    libc = ctypes.CDLL(None, use_errno=True)
    if cfg["network"] == "namespace" and libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        fail("unshare(CLONE_NEWNET) errno %d" % ctypes.get_errno())
    for name, (soft, hard) in cfg["limits"].items():
        limit = getattr(resource, name)
        ceiling = resource.getrlimit(limit)[1]  # an unprivileged process cannot raise its hard limit
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        try:
            resource.setrlimit(limit, (soft, hard))
        except (ValueError, OSError) as e:
            fail("setrlimit %s: %s" % (name, e))
    with open(cfg["code_path"], encoding="utf-8") as f:
        code = compile(f.read(), "main.py", "exec")
    os.unlink(cfg["code_path"])
    uid = cfg["uid"]
    if uid is not None:
        libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep the permitted set across setuid
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        keep = 4 if cfg["read_any"] else 0  # bit 2 = CAP_DAC_READ_SEARCH
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)(keep, keep, keep, 0, 0, 0)  # effective, permitted, inheritable
        if libc.capset(header, data) != 0:
            fail("capset errno %d" % ctypes.get_errno())
        if keep and libc.prctl(47, 2, 2, 0, 0) != 0:  # PR_CAP_AMBIENT_RAISE: kept by subprocesses too
            fail("ambient capability errno %d" % ctypes.get_errno())
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL (after setuid, which clears it)
    if cfg["network"] == "socket-patch":
        import _socket, socket
        def blocked(*args, **kwargs):
            raise PermissionError("network access is disabled in the sandbox")
        class BlockedSocket(socket.socket):
            def __init__(self, *args, **kwargs):
                blocked()
        for module in (socket, _socket):
            for attr in ("socket", "SocketType"):
                setattr(module, attr, BlockedSocket)
            for attr in ("socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo"):
                if hasattr(module, attr):
                    setattr(module, attr, blocked)
    sys.argv = ["main.py"]
    return code
exec(_setup(), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed program ended."""

    ok: bool  # exited with status 0 before the timeout
    returncode: int | None  # negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool
    reason: str  # "ok", "timeout", "memory limit", "cpu limit", "file size limit", "exit code N", ...
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class Containment:
    """What `run_sandboxed` enforces on this machine (see the module docstring)."""

    network: str  # "namespace" | "socket-patch"
    processes: str  # how processes are bounded and killed: "own uid" | "user count" | "process group" | "none"
    reads: str  # "world-readable" | "any file" (CAP_DAC_READ_SEARCH kept) | "as parent"


_run_lock = threading.Lock()
_run_counter = itertools.count()


def _next_uid() -> int:
    """A uid no live program of ours uses: 256 per parent pid, cycled. Each run gets a fresh one because
    the killed processes of an earlier run stay zombies until init reaps them, and zombies still count
    toward their uid's RLIMIT_NPROC."""
    with _run_lock:
        n = next(_run_counter) % 256
    return UID_BASE + ((os.getpid() % (1 << 22)) << 8) + n


def _world_accessible(path: str) -> bool:
    """Every directory above `path` can be entered, and `path` read, by any user."""
    p = Path(path).resolve()
    for d in p.parents:
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(p).st_mode & stat.S_IROTH)


def _proc_tasks(uid: int) -> list[tuple[int, int]]:
    """(pid, threads) of the live (not zombie) processes whose real uid is `uid`."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in Path(entry.path, "status").read_text().splitlines()
                          if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(("Z", "X")):
            out.append((int(entry.name), int(fields.get("Threads", "1"))))
    return out


@functools.cache
def containment() -> Containment:
    """Probe once what this machine allows (a network namespace, a uid per run): the strongest mode that works."""
    linux = sys.platform.startswith("linux") and Path("/proc/self/status").exists()
    root = linux and os.geteuid() == 0
    paths = [sys.executable, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]]
    read_any = root and not all(_world_accessible(p) for p in paths)
    own = Containment("namespace", "own uid", "any file" if read_any else "world-readable") if root else None
    fallback = "process group" if root else "user count" if linux else "none"
    candidates = [own, own and Containment("socket-patch", own.processes, own.reads),
                  Containment("namespace", fallback, "as parent") if linux else None]
    for mode in filter(None, candidates):
        probe = _run(mode, "pass", stdin="", timeout_s=10.0, memory_mb=256, cpu_s=5, max_processes=4, file_mb=1,
                     output_chars=1000)
        if probe.ok:
            return mode
    return Containment("socket-patch", fallback, "as parent")


def _limits(memory_mb: int, cpu_s: int, max_processes: int, file_mb: int, nproc_base: int) -> dict:
    return {"RLIMIT_AS": (memory_mb << 20,) * 2, "RLIMIT_CPU": (cpu_s, cpu_s + 1),
            "RLIMIT_NPROC": (nproc_base + max_processes,) * 2, "RLIMIT_FSIZE": (file_mb << 20,) * 2,
            "RLIMIT_NOFILE": (64, 64), "RLIMIT_CORE": (0, 0)}


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """SIGKILL the program's process group, then (own uid) every process of its uid until none is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(200 if uid is not None else 0):
        tasks = _proc_tasks(uid)
        if not tasks:
            break
        for pid, _threads in tasks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def _reason(returncode: int, timed_out: bool, stderr: str) -> str:
    if timed_out:
        return "timeout"
    if returncode == SETUP_EXIT and "sandbox setup failed" in stderr:
        return "sandbox error: " + stderr.split("sandbox setup failed:", 1)[1].strip().splitlines()[0]
    if returncode == 0:
        return "ok"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and "Traceback" not in stderr:
        return "cpu limit" if returncode == -signal.SIGXCPU else "killed (SIGKILL)"
    if returncode == -signal.SIGXFSZ or "[Errno 27]" in stderr:  # Python ignores SIGXFSZ: write() raises EFBIG
        return "file size limit"
    if "MemoryError" in stderr:
        return "memory limit"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def _read(path: Path, chars: int) -> str:
    with open(path, "rb") as f:
        return f.read(4 * chars).decode("utf-8", errors="replace")[:chars]


def _run(mode: Containment, code: str, *, stdin: str, timeout_s: float, memory_mb: int, cpu_s: int,
         max_processes: int, file_mb: int, output_chars: int) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="alignlab-sandbox-") as tmp:
        outer = Path(tmp)
        work = outer / "work"
        work.mkdir()
        uid = _next_uid() if mode.processes == "own uid" else None
        nproc_base = sum(t for _, t in _proc_tasks(os.getuid())) if mode.processes == "user count" else 0
        if uid is not None:
            os.chmod(outer, 0o711)  # the program may enter its work dir, not read our files beside it
            os.chown(work, uid, uid)
        (outer / "main.py").write_text(code, encoding="utf-8")
        (outer / "stdin").write_text(stdin, encoding="utf-8")
        cfg = {"network": mode.network, "uid": uid, "read_any": mode.reads == "any file", "setup_exit": SETUP_EXIT,
               "code_path": str(outer / "main.py"),
               "limits": _limits(memory_mb, cpu_s, max_processes, file_mb, nproc_base)}
        if mode.processes in ("none", "process group"):  # no per-user count to bound (or root: not applied)
            del cfg["limits"]["RLIMIT_NPROC"]
        start = time.monotonic()
        with open(outer / "stdin", "rb") as f_in, open(outer / "stdout", "wb") as f_out, \
                open(outer / "stderr", "wb") as f_err:
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(cfg)], cwd=work,
                                        stdin=f_in, stdout=f_out, stderr=f_err, env={}, start_new_session=True)
            except OSError as e:
                return SandboxResult(False, None, "", str(e), False, f"sandbox error: {e}", 0.0)
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_all(proc, uid)
                proc.wait()
        elapsed = time.monotonic() - start
        stdout, stderr = _read(outer / "stdout", output_chars), _read(outer / "stderr", output_chars)
        reason = _reason(proc.returncode, timed_out, stderr)
        return SandboxResult(reason == "ok", proc.returncode, stdout, stderr, timed_out, reason, elapsed)


def run_sandboxed(code: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
                  cpu_s: int | None = None, max_processes: int = 16, file_mb: int = 16,
                  output_chars: int = 100_000) -> SandboxResult:
    """Run `code` with `python -I -S` under the limits in the module docstring; never raises for the program.

    Args:
        code: the program's source. stdin: its standard input.
        timeout_s: wall-clock limit; every process of the program is killed when it passes.
        memory_mb: address-space limit per process. cpu_s: CPU-seconds limit (default ceil(timeout_s) + 1).
        max_processes: processes (threads count too) the program may run at once, itself included.
        file_mb: largest file it may write (stdout and stderr included). output_chars: stdout/stderr kept.
    Returns:
        SandboxResult; `reason` says why it ended ("sandbox error: ..." when the launcher itself failed).
    """
    if not timeout_s > 0 or memory_mb < 16 or max_processes < 1 or file_mb < 1:
        raise ValueError(f"invalid sandbox limits: timeout_s={timeout_s}, memory_mb={memory_mb} (>= 16), "
                         f"max_processes={max_processes}, file_mb={file_mb}")
    cpu = cpu_s if cpu_s is not None else math.ceil(timeout_s) + 1
    return _run(containment(), code, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu,
                max_processes=max_processes, file_mb=file_mb, output_chars=output_chars)


def run_many(codes: list[str], *, workers: int = 4, stdins: list[str] | None = None, **limits) -> list[SandboxResult]:
    """`run_sandboxed` on each program, `workers` at a time (threads waiting on subprocesses); input order."""
    stdins = stdins if stdins is not None else [""] * len(codes)
    if len(stdins) != len(codes):
        raise ValueError(f"{len(codes)} programs but {len(stdins)} stdins")
    with ThreadPoolExecutor(max_workers=max(1, min(workers, 64, len(codes) or 1))) as pool:
        return list(pool.map(lambda cs: run_sandboxed(cs[0], stdin=cs[1], **limits), zip(codes, stdins)))
