"""Code rewards: run the completion's program against the row's tests in the sandbox (spec `code`).

    reward = CodeReward(tests_column="tests")
    reward.score(prompts, completions, tests=["assert add(1, 2) == 3\\nassert add(0, 0) == 0", ...])
    reward.last_results                  # the SandboxResult of each sample of the last batch

The program is the last ```python (or ```py) fenced block of the completion, else its last unlabeled
fenced block, else the whole completion; an unclosed fence (generation cut off) runs to the end. The tests
follow it in the same program. A tests value is a string (each top-level `assert` or bare call such as
`check(f)` is one test; other statements, e.g. imports and helper definitions, are setup that runs in
order) or a list of strings (each one test). Score: 1.0 when every test passes, else 0.0; with
`partial=True` the fraction that passed. A program that times out, crashes or breaks a limit scores 0
and the run goes on.

Tests count only when the harness ran to its end and printed a marker carrying a random token drawn for
this sample, so a solution that calls `sys.exit(0)` or `os._exit(0)` before the tests run scores 0. The
source is read by the launcher and deleted before it runs, so the token is not in any file the program
could read. This raises the bar against accidental or simple reward hacks; it does not stop a program that
inspects the interpreter's memory or that returns objects whose `==` is always true.
"""

from __future__ import annotations

import ast
import logging
import re
import secrets

import torch

from alignlab.errors import DataError
from alignlab.rewards.base import column
from alignlab.rewards.sandbox import SandboxResult, run_many

log = logging.getLogger("alignlab")

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str) -> str:
    """The program in a completion: its last python fenced block, else its last unlabeled one, else the text."""
    blocks = _FENCE.findall(text)
    python = [code for lang, code in blocks if lang.lower() in ("python", "python3", "py")]
    plain = [code for lang, code in blocks if not lang]
    if python or plain:
        return (python or plain)[-1].strip("\n")
    return text.strip("\n")


def split_tests(tests, where: str) -> list[tuple[str, bool]]:
    """(source, counts_as_test) units of a tests value (module docstring); DataError if it has no test."""
    if isinstance(tests, list | tuple):
        units = [(str(t), True) for t in tests]
    elif isinstance(tests, str):
        try:
            tree = ast.parse(tests)
        except SyntaxError as e:
            raise DataError(f"{where}: the tests do not parse: {e}") from None
        units = [(ast.get_source_segment(tests, node) or ast.unparse(node),
                  isinstance(node, ast.Assert) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)))
                 for node in tree.body]
    else:
        raise DataError(f"{where}: expected a string or a list of strings of tests, got {type(tests).__name__}")
    if not any(counted for _, counted in units):
        raise DataError(f"{where}: no test (an assert statement or a call) in {tests!r:.80}")
    return units


def build_program(solution: str, units: list[tuple[str, bool]], token: str) -> str:
    """The solution, then a harness that runs each unit in the solution's namespace and prints
    `<token> <passed> <total>`. It holds references to exec/compile/print taken before the solution runs."""
    total = sum(counted for _, counted in units)
    harness = f"""

def __alignlab_run_tests(units, namespace, run=__alignlab_exec, build=__alignlab_compile, say=__alignlab_print):
    passed = 0
    for source, counted in units:
        try:
            run(build(source, "<tests>", "exec"), namespace)
        except BaseException:
            if not counted:  # setup failed: the remaining tests cannot run
                break
            continue
        passed += counted
    say({token!r}, passed, {total}, flush=True)


__alignlab_run_tests({units!r}, globals())
"""
    guard = ("import builtins as __alignlab_b\n"
             "__alignlab_exec, __alignlab_compile, __alignlab_print = __alignlab_b.exec, __alignlab_b.compile, "
             "__alignlab_b.print\n")
    return guard + solution + harness


def passed_fraction(result: SandboxResult, token: str) -> float:
    """Fraction of tests passed, from the harness's marker line; 0 if the marker is missing."""
    for line in reversed(result.stdout.splitlines()):
        parts = line.split()
        if len(parts) == 3 and parts[0] == token:
            return int(parts[1]) / max(1, int(parts[2]))
    return 0.0


class CodeReward:
    """1.0 when the completion's program passes the row's tests in the sandbox (fraction with `partial`).

    Args:
        tests_column: the prompt dataset's column with each row's tests.
        partial: score the fraction of tests passed instead of all-or-nothing.
        timeout_s, memory_mb, max_processes: sandbox limits per sample (see `alignlab.rewards.sandbox`).
        workers: samples run at once.
    """

    def __init__(self, tests_column: str = "tests", *, partial: bool = False, timeout_s: float = 5.0,
                 memory_mb: int = 512, max_processes: int = 16, workers: int = 4):
        self.tests_column, self.partial, self.workers = tests_column, partial, workers
        self.limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "max_processes": max_processes}
        self.last_results: list[SandboxResult] = []

    def score(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        name = f"code:{self.tests_column}"
        tests = column(columns, self.tests_column, len(completions), name)
        units = [split_tests(t, f"reward source {name!r}, column {self.tests_column!r}, item {i}")
                 for i, t in enumerate(tests)]
        tokens = [secrets.token_hex(16) for _ in completions]
        programs = [build_program(extract_code(c), u, t) for c, u, t in zip(completions, units, tokens)]
        self.last_results = run_many(programs, workers=self.workers, **self.limits)
        errors = [r.reason for r in self.last_results if r.reason.startswith("sandbox error")]
        if errors:
            log.warning("%s: %d of %d samples could not run in the sandbox (scored 0): %s", name, len(errors),
                        len(programs), errors[0])
        fractions = [passed_fraction(r, t) for r, t in zip(self.last_results, tokens)]
        scores = fractions if self.partial else [float(f == 1.0) for f in fractions]
        return torch.tensor(scores, dtype=torch.float32)
