"""`alignlab <command> [--config FILE] [--dotted.overrides ...]`: parse, then call a recipe's `main(cfg)`.

The CLI only parses and dispatches. Recipes are imported lazily so `alignlab --help` is fast. Errors caused by
input (config, data) print one line without a traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

# command words -> (module, config class, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sft": ("alignlab.recipes.sft", "SFTConfig", "supervised fine-tuning (completion-only loss, packing)"),
    "dpo": ("alignlab.recipes.preference", "PreferenceConfig", "DPO family: DPO, IPO, KTO, ORPO, SimPO, ..."),
    "rm": ("alignlab.recipes.reward", "RewardConfig", "reward model: Bradley-Terry, K-wise, ensembles, gating, PRM"),
    "eval rm": ("alignlab.recipes.reward_eval", "RewardEvalConfig", "evaluate a reward model: accuracy, ECE, acc@k"),
    "ppo": ("alignlab.recipes.ppo", "PPOConfig", "PPO (RLHF): policy + critic, KL-shaped reward, GAE, adaptive KL"),
    "grpo": ("alignlab.recipes.pg", "PGConfig", "critic-free RL: GRPO, Dr.GRPO, DAPO, RLOO, ReMax, REINFORCE++"),
    "bon": ("alignlab.recipes.best_of_n", "BoNConfig", "best-of-n sampling against a reward; RAFT (--bon.iterations)"),
    "demo": ("alignlab.lab.demo", "DemoConfig", "the lab demo on the built-in tiny model"),
    "lab list": ("alignlab.lab.experiments.listing", "LabListConfig", "list the lab's paper reproductions"),
    "lab run": ("alignlab.lab.experiments.run", "LabRunConfig", "run one lab experiment and write its report"),
}


def usage() -> str:
    width = max(len(k) for k in COMMANDS)
    lines = ["usage: alignlab <command> [--config FILE] [--key value ...] [--debug]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`alignlab <command> --help` lists every option of a command."]
    return "\n".join(lines)


def setup_logging(debug: bool) -> None:
    logger = logging.getLogger("alignlab")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load/save bars drown ours


def main(argv: list[str] | None = None) -> int:
    from alignlab.errors import AlignlabError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    words = [a for a in argv[:2] if not a.startswith("-")]
    name = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in COMMANDS), None)
    if name is None:
        print(usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    rest = argv[len(name.split()):]
    module_name, cls_name, help_ = COMMANDS[name]
    setup_logging(debug)
    try:
        from alignlab.config import parse

        module = importlib.import_module(module_name)
        cfg = parse(getattr(module, cls_name), rest, prog=f"alignlab {name}", description=module.__doc__)
        from alignlab.lab import resolve_names

        cfg = resolve_names(cfg)
        module.main(cfg)
    except AlignlabError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
