"""Reward sources from Python: score a few completions with every kind of source, then combine them.

Run (from the repository root):
    python examples/rewards.py
    python examples/rewards.py --rm runs/rm/final        # add a trained reward model (`alignlab rm` output)

Online recipes build their reward the same way, from the `reward` block of their config
(`--reward.sources math rules:examples/rules.yaml --reward.weights 1 0.5`): `build_reward(cfg)` returns one
object with `score(prompts, completions, **columns) -> (B,)`; the extra columns are the prompt rows' other
fields (here `answer` and `tests`).
"""

from __future__ import annotations

import argparse

from alignlab.rewards import (
    CodeReward,
    MathReward,
    RewardModelSource,
    RewardSourceConfig,
    RuleReward,
    build_reward,
    containment,
    run_sandboxed,
)

PROMPTS = ["Natalia sold 48 clips in April and half as many in May. How many in total?"] * 3 + [
    "Write add(a, b) in Python."] * 3
COMPLETIONS = [
    "In May she sold 48 / 2 = 24. In total 48 + 24 = 72.\n#### 72",
    "I think maybe 70.",
    r"48 + 24 = 72, so the answer is $\boxed{72}$.",
    "```python\ndef add(a, b):\n    return a + b\n```",
    "```python\ndef add(a, b):\n    return a - b\n```",
    "import sys\nsys.exit(0)  # skip the tests",
]
COLUMNS = {
    # GSM8K-style gold solutions (the answer after ####) for the math rows; unused by the code rows
    "answer": ["She sold 48/2 = 24 in May, 48 + 24 = 72 in all.\n#### 72"] * 6,
    "tests": ["assert add(1, 2) == 3\nassert add(-1, 1) == 0"] * 6,
}


def show(name: str, scores) -> None:
    print(f"{name:<28}" + " ".join(f"{s:6.2f}" for s in scores.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rm", help="a saved reward model directory to add as a source")
    parser.add_argument("--rules", default="examples/rules.yaml")
    args = parser.parse_args()

    print(f"sandbox on this machine: {containment()}")
    hog = run_sandboxed("x = bytearray(2 * 1024 ** 3)", memory_mb=256, timeout_s=2)
    print(f"a 2 GB allocation under a 256 MB limit: {hog.reason}\n")

    print(f"{'source':<28}" + " ".join(f"{'#' + str(i):>6}" for i in range(len(COMPLETIONS))))
    show("math (answer column)", MathReward("answer").score(PROMPTS, COMPLETIONS, **COLUMNS))
    code = CodeReward("tests", timeout_s=2.0)
    show("code (tests column)", code.score(PROMPTS, COMPLETIONS, **COLUMNS))
    print(f"{'':<28}sandbox: {', '.join(r.reason for r in code.last_results)}")
    show(f"rules ({args.rules})", RuleReward.from_yaml(args.rules).score(PROMPTS, COMPLETIONS))
    if args.rm:
        show("reward model (whitened)", RewardModelSource(args.rm).score(PROMPTS, COMPLETIONS))

    # what a recipe does with its `reward` config block
    summed = build_reward(RewardSourceConfig(sources=["math", "code", f"rules:{args.rules}"],
                                             weights=[1.0, 1.0, 0.5]))
    show("math + code + 0.5 * rules", summed.score(PROMPTS, COMPLETIONS, **COLUMNS))
    ensemble = build_reward(RewardSourceConfig(sources=["math", "code"], combine="mean"))
    show("mean(math, code)", ensemble.score(PROMPTS, COMPLETIONS, **COLUMNS))
    show("their disagreement (std)", ensemble.disagreement(PROMPTS, COMPLETIONS, **COLUMNS))
    if args.rm:
        cautious = build_reward(RewardSourceConfig(sources=[f"rm:{args.rm}", f"rules:{args.rules}"],
                                                   combine="mean_minus_std", lam=0.5))
        show("mean - 0.5 std (rm, rules)", cautious.score(PROMPTS, COMPLETIONS, **COLUMNS))


if __name__ == "__main__":
    main()
