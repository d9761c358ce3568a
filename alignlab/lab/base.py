"""The lab's tiny base model (`lab:tiny`), pretrained from scratch on the lab's own tasks, no downloads.

The corpus is balanced-polarity synthetic movie reviews plus arithmetic problems with answers, so the
base model writes fluent review-like text whose gold sentiment averages about 0.5: imperfect, with room
for SFT, RLHF and DPO to move it. Tokenizer: `build_tokenizer(corpus)`; model: a ~1M-parameter Llama
trained for 160 AdamW steps on padded single-document batches (each document ends with EOS, so the
model learns to stop). It takes about 30 s on one idle CPU thread (up to a minute on a busy machine).

`tiny_model_path()` builds it once into the user cache (`$ALIGNLAB_CACHE`, else
`$XDG_CACHE_HOME/alignlab`, else `~/.cache/alignlab`) under a directory named after a hash of the build
settings, so a changed recipe rebuilds. The build happens in a temporary directory that is renamed into
place, under a lock file, so concurrent processes never see a half-written model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from alignlab.lab.tasks import arithmetic, sentiment
from alignlab.lab.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

BUILD_VERSION = 1
"""Bump when the build code changes in a way the settings below do not capture."""


@dataclasses.dataclass(frozen=True)
class BaseModelSpec:
    """Everything that determines the tiny base model's weights (hashed into the cache directory name)."""

    seed: int = 0
    """Seeds the corpus, the initialization and the batch order."""
    n_reviews: int = 8000
    """Balanced-polarity reviews in the pretraining corpus."""
    n_problems_per_level: int = 800
    """Arithmetic problems (with answers) per level in the corpus."""
    levels: tuple[int, ...] = (1, 2, 3)
    """Arithmetic levels in the corpus."""
    vocab_size: int = 1024
    """BPE vocabulary size, special tokens included."""
    hidden_size: int = 128
    """Model width."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = 352
    """SwiGLU MLP width."""
    max_positions: int = 256
    """Longest sequence the model (and its tokenizer's `model_max_length`) accepts."""
    steps: int = 160
    """AdamW steps."""
    batch_size: int = 32
    """Documents per step (each ~20 tokens)."""
    lr: float = 3e-3
    """Peak learning rate; linear warm-up then cosine decay to 10% of it."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    threads: int = 1
    """CPU threads for the build. One, because on a shared 2-core machine two OpenMP threads ran 4-10x
    slower than one (a descheduled thread stalls the other at every barrier); fixed, so weights repeat."""

    def key(self) -> str:
        """A short hash of the settings and BUILD_VERSION."""
        blob = json.dumps({"version": BUILD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The lab cache: `cache_dir`, else `$ALIGNLAB_CACHE`, `$XDG_CACHE_HOME/alignlab`, `~/.cache/alignlab`."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("ALIGNLAB_CACHE"):
        return Path(os.environ["ALIGNLAB_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "alignlab"
    return Path.home() / ".cache" / "alignlab"


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive inter-process lock on `path` (a no-op where fcntl is missing; the rename still guards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: concurrent builds waste time, but the atomic rename keeps them safe
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_corpus(spec: BaseModelSpec) -> list[str]:
    """Balanced-polarity reviews plus "What is 3+5? The answer is 8." problems, shuffled."""
    docs = sentiment.reviews(spec.n_reviews, seed=spec.seed, positive_share=0.5)
    for level in spec.levels:
        for p in arithmetic.problems(spec.n_problems_per_level, level=level, seed=spec.seed + level):
            docs.append(p["prompt"] + arithmetic.completion_for(p["answer"]))
    random.Random(spec.seed).shuffle(docs)
    return docs


def _make_model(spec: BaseModelSpec, tokenizer):
    """A freshly initialized tiny Llama sized by `spec`."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, do_sample=True, max_new_tokens=48,
    )
    return model


def _batch(docs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded causal-LM batch; padded positions are ignored by the loss (label -100)."""
    width = max(len(d) for d in docs)
    input_ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(docs), width), dtype=torch.long)
    for i, doc in enumerate(docs):
        input_ids[i, : len(doc)] = torch.tensor(doc)
        attention_mask[i, : len(doc)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pretrain(model, docs: list[list[int]], spec: BaseModelSpec, pad_id: int, progress: bool) -> float:
    """Train `model` on random batches of `docs` (token ids, EOS-terminated); returns the final loss
    (mean of the last 20 steps)."""
    from tqdm.auto import tqdm

    rng = random.Random(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(spec.warmup_steps, 1)
    schedule = lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / spec.steps)) * 0.9 + 0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(spec.steps), desc="building lab:tiny", disable=not progress, leave=False)
    for _ in bar:
        batch = _batch(rng.sample(docs, spec.batch_size), pad_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # a CPU build: the sync costs nothing
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    tail = losses[-20:]
    return sum(tail) / len(tail)


def build_base_model(out_dir: Path, spec: BaseModelSpec, *, progress: bool | None = None) -> dict:
    """Build the tokenizer and pretrain the tiny model into `out_dir`; returns the build report."""
    start = time.perf_counter()
    progress = sys.stderr.isatty() if progress is None else progress
    log.info("building the lab:tiny base model (one time, about half a minute) in %s", out_dir)
    threads, flush = torch.get_num_threads(), torch.set_flush_denormal(True)  # denormals slow CPUs 10x+
    torch.set_num_threads(spec.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            corpus = build_corpus(spec)
            tokenizer = build_tokenizer(corpus, vocab_size=spec.vocab_size)
            eos = tokenizer.eos_token_id
            docs = [ids + [eos] for ids in tokenizer(corpus, add_special_tokens=False)["input_ids"]]
            tokenizer.model_max_length = spec.max_positions
            model = _make_model(spec, tokenizer)
            final_loss = pretrain(model, docs, spec, tokenizer.pad_token_id, progress)
    finally:
        torch.set_num_threads(threads)
        if flush:  # it was off before (the torch default)
            torch.set_flush_denormal(False)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    report = {
        "spec": dataclasses.asdict(spec), "key": spec.key(), "final_loss": final_loss,
        "parameters": sum(p.numel() for p in model.parameters()), "documents": len(docs),
        "build_seconds": time.perf_counter() - start,
    }
    (out_dir / "lab_build.json").write_text(json.dumps(report, indent=2))
    return report


def tiny_model_path(cache_dir: str | os.PathLike | None = None, *, spec: BaseModelSpec | None = None,
                    progress: bool | None = None) -> Path:
    """The directory of the `lab:tiny` model + tokenizer (plain `from_pretrained` loads it), built on
    first use into the lab cache and reused afterwards."""
    spec = spec or BaseModelSpec()
    models_dir = cache_root(cache_dir) / "models"
    final = models_dir / f"tiny-{spec.key()}"
    if (final / "lab_build.json").exists():
        return final
    with file_lock(models_dir / f"tiny-{spec.key()}.lock"):
        if (final / "lab_build.json").exists():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-tiny-{spec.key()}-", dir=models_dir))
        try:
            build_base_model(tmp, spec, progress=progress)
            try:
                os.rename(tmp, final)
            except OSError:  # lost a race with a process that has no lock (e.g. no fcntl)
                if not (final / "lab_build.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
