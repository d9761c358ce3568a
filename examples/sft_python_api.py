"""SFT from Python on your own JSONL file: look at the data the way the recipe will see it, then train.

Run (from the repository root; `lab:tiny` is the built-in lab model, built on first use, no downloads):
    python examples/sft_python_api.py
    python examples/sft_python_api.py --data examples/prompt_completion.jsonl --max-steps 50
    python examples/sft_python_api.py --model path/to/hf-model --data my.jsonl --output-dir runs/mine

It prints the schema that was detected, the truncation report, and one example with its counted
(`response_mask` True) tokens in [brackets]. Then it runs the SFT recipe and loads the final model with plain
transformers.
"""

from __future__ import annotations

import argparse
import math

from transformers import AutoModelForCausalLM

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.data import detect_schema, normalize, read_rows, tokenize_sft
from alignlab.lab import resolve_names
from alignlab.models import load_tokenizer
from alignlab.recipes.sft import SFTConfig, main


def show_counted(tokenizer, feature: dict) -> str:
    """The example's text with the tokens that count toward the loss in [brackets]."""
    return "".join(f"[{tokenizer.decode([t])}]" if counted else tokenizer.decode([t])
                   for t, counted in zip(feature["input_ids"], feature["response_mask"]))


def run(model: str, data: str, output_dir: str, max_steps: int) -> dict:
    cfg = SFTConfig(
        model=ModelConfig(path=model),
        data=DataConfig(dataset=data, max_length=128, eval_fraction=0.25),
        optim=OptimConfig(lr=1e-3, batch_size=4, warmup_steps=1, max_steps=max_steps),
        log=LogConfig(output_dir=output_dir, log_every=5, eval_every=10, save_every=0, progress=False),
    )
    cfg = resolve_names(cfg)  # lab:tiny -> its local directory; plain paths pass through

    # 1. the data layer, step by step (the recipe does exactly this, then splits off the eval rows)
    rows = read_rows(cfg.data.dataset)
    print(f"{len(rows)} rows, schema: {detect_schema(rows[0].data)}")
    examples = normalize(rows, "sft", columns=cfg.data.columns or None)
    tokenizer = load_tokenizer(cfg.model.path)
    features, report = tokenize_sft(examples, tokenizer, max_length=cfg.data.max_length)
    print(report.summary())
    print(show_counted(tokenizer, features[-1]))

    # 2. train: writes config.yaml, metrics.jsonl, checkpoints/ and the final model to output_dir
    last = main(cfg)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()})
    assert math.isfinite(last["loss"]), last

    # 3. the result is a plain Hugging Face model directory
    trained = AutoModelForCausalLM.from_pretrained(output_dir)
    print(f"loaded {type(trained).__name__} with {sum(p.numel() for p in trained.parameters()):,} parameters")
    return last


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lab:tiny", help="HF model directory, hub name, or lab:tiny")
    parser.add_argument("--data", default="examples/conversational.jsonl", help="your .jsonl/.json/.parquet/.csv")
    parser.add_argument("--output-dir", default="runs/sft-python")
    parser.add_argument("--max-steps", type=int, default=20)
    args = parser.parse_args()
    run(args.model, args.data, args.output_dir, args.max_steps)
