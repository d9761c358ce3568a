"""Reward-model recipe: learning against gold, plain-transformers parity, every objective, CLI, bad input, resume."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.data import collate_preference, normalize, read_rows, tokenize_preference
from alignlab.errors import DataError, NonFiniteLossError
from alignlab.lab.labeler import label_pairs
from alignlab.lab.tasks import sentiment
from alignlab.models.reward import load_gating, load_reward_model, normalize_scores, reward_scores
from alignlab.recipes import reward_eval
from alignlab.recipes.reward import RewardConfig, RewardOptions, main
from alignlab.rewards.ensemble import disagreement

LABELER_TEMPERATURE = 0.1
"""Gold rewards lie in [0, 1]; at T = 0.1 a gold gap of 0.2 is labeled correctly 88% of the time."""


def config(model_dir, data, out, *, steps=8, **rm) -> RewardConfig:
    return RewardConfig(
        model=ModelConfig(path=str(model_dir)),
        data=DataConfig(dataset=str(data), max_length=64, eval_fraction=0.25),
        optim=OptimConfig(lr=3e-3, batch_size=8, max_steps=steps, warmup_steps=2, scheduler="linear"),
        log=LogConfig(output_dir=str(out), log_every=2, eval_every=4, save_every=0, progress=False,
                      tensorboard=False),
        rm=RewardOptions(**rm),
    )


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lab_pairs(n: int, *, seed: int, temperature: float):
    """`n` labeled pairs: two reviews with the same opening, one from a positive-leaning pool (70% positive)
    and one from a negative-leaning pool (30%), labeled by the simulated Bradley-Terry labeler."""
    pools: dict[str, tuple[list, list]] = {}
    for side, share in ((0, 0.7), (1, 0.3)):
        for opening, rest in sentiment.review_pairs(6 * n, seed=seed + side, positive_share=share):
            pools.setdefault(opening, ([], []))[side].append(rest)
    rng = random.Random(seed)
    openings, prompts, a, b = sorted(pools), [], [], []
    while len(prompts) < n:
        opening = rng.choice(openings)
        if pools[opening][0] and pools[opening][1]:
            prompts.append(opening)
            a.append(pools[opening][0].pop())
            b.append(pools[opening][1].pop())
    gold_a = sentiment.gold_reward([p + c for p, c in zip(prompts, a)])
    gold_b = sentiment.gold_reward([p + c for p, c in zip(prompts, b)])
    return label_pairs(prompts, a, b, gold_a, gold_b, temperature=temperature, seed=seed)


def pair_rows(pairs, *, by_gold=False):
    rows = []
    for p in pairs:
        chosen, rejected = p.chosen, p.rejected
        if by_gold and p.score_chosen < p.score_rejected:
            chosen, rejected = rejected, chosen
        rows.append({"prompt": p.prompt, "chosen": chosen, "rejected": rejected,
                     "score_chosen": p.score_chosen, "score_rejected": p.score_rejected,
                     "topic": "positive" if max(p.score_chosen, p.score_rejected) > 0.75 else "mixed"})
    return rows


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two OpenMP threads run several times slower than one
    (a descheduled thread stalls the other at every barrier; see alignlab.lab.base)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    pairs = lab_pairs(48, seed=5, temperature=LABELER_TEMPERATURE)
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", pair_rows(pairs))


def test_rm_learns_the_gold_preference_from_noisy_labels(tiny_path, tmp_path, one_thread):
    """Train on labeler-noised pairs; held-out accuracy is measured against the GOLD ordering (ties left out).
    The noise ceiling (share of training labels that agree with gold) is printed: a model that predicts gold
    perfectly agrees with the labels only that often, while its gold accuracy can be 1."""
    train = lab_pairs(3000, seed=0, temperature=LABELER_TEMPERATURE)
    held = [p for p in lab_pairs(200, seed=100, temperature=0.0) if p.score_chosen != p.score_rejected]
    ceiling = sum(p.extra["gold_agrees"] for p in train) / len(train)
    data = write_jsonl(tmp_path / "train.jsonl", pair_rows(train))
    gold = write_jsonl(tmp_path / "gold.jsonl", pair_rows(held, by_gold=True))
    out = tmp_path / "rm"
    cfg = config(tiny_path, data, out, steps=160)
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.batch_size = 1e-3, 10, 32
    cfg.data.eval_fraction, cfg.log.eval_every, cfg.log.log_every = 0.1, 0, 20
    result = main(cfg)
    metrics = reward_eval.main(reward_eval.RewardEvalConfig(model=str(out), dataset=str(gold),
                                                            output_dir=str(tmp_path / "gold_eval")))
    print(f"\nheld-out gold accuracy {metrics['accuracy']:.3f}; label-vs-gold agreement (noise ceiling) "
          f"{ceiling:.3f}; accuracy vs noisy held-out labels {result['pairs']['accuracy']:.3f}")
    assert 0.85 < ceiling < 0.95  # moderate noise
    assert metrics["accuracy"] > 0.8, metrics

    # the saved RM scores identically with plain transformers and with alignlab, and stores its whitening
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ours = load_reward_model(out).eval()
    feats, _ = tokenize_preference(normalize(read_rows(gold), "preference")[:6], tok, max_length=64)
    batch = collate_preference(feats, tok.pad_token_id)
    with torch.no_grad():
        raw = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(raw, reward_scores(ours, batch))
    gain, bias = plain.config.alignlab_reward_gain, plain.config.alignlab_reward_bias
    assert gain == pytest.approx(result["normalization"]["gain"]) and len(bias) == 1
    assert torch.allclose(normalize_scores(raw, plain), (raw - bias[0]) * gain[0])
    assert (out / "eval.json").exists() and (out / "reliability.png").exists()


def test_margin_smoothing_centering_and_categories(tiny_model_dir, small_pairs, tmp_path):
    out = tmp_path / "rm"
    result = main(config(tiny_model_dir, small_pairs, out, margin_column="score", label_smoothing=0.1,
                         center_coef=0.01, category_column="topic"))
    pairs = result["pairs"]
    assert set(pairs["by_category"]) <= {"positive", "mixed"} and 0 <= pairs["category_score"] <= 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "accuracy", "margin", "score_mean", "score_std"} <= set(lines[-1])
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in lines if "loss" in x)


def test_ensemble_of_three_heads_exposes_disagreement(tiny_model_dir, small_pairs, tmp_path):
    out = tmp_path / "rm"
    result = main(config(tiny_model_dir, small_pairs, out, ensemble_size=3, ensemble_mode="mean_minus_std",
                         lam=0.5))
    ens = result["pairs"]["ensemble"]
    assert len(ens["member_accuracy"]) == 3 and 0 <= ens["unanimous"] <= 1
    model = load_reward_model(out).eval()
    assert model.config.alignlab_ensemble == 3
    tok = AutoTokenizer.from_pretrained(out)
    feats, _ = tokenize_preference(normalize(read_rows(small_pairs), "preference")[:4], tok, max_length=64)
    with torch.no_grad():
        scores = reward_scores(model, collate_preference(feats, tok.pad_token_id))  # (8, 3)
    spread = disagreement(scores)
    assert scores.shape == (8, 3) and spread.shape == (8,) and (spread > 0).all()


def test_kwise_on_ranked_lists(tiny_model_dir, tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(24):
        texts = [f" it was {w}" for w in rng.sample(["great", "wonderful", "terrible", "boring", "fine"], 4)]
        gold = sentiment.gold_reward(texts)
        rows.append({"prompt": f"review {i}:", "completions": texts, "scores": gold})
    data = write_jsonl(tmp_path / "ranked.jsonl", rows)
    result = main(config(tiny_model_dir, data, tmp_path / "rm", objective="kwise"))
    ranked = result["ranked"]
    assert ranked["lists"] == 6 and 0 <= ranked["pairwise_accuracy"] <= 1
    curve = ranked["best_of_n"]
    assert curve["k"] == [1, 2, 3, 4] and curve["rm"][0] == pytest.approx(curve["random"])


def helpsteer_rows(n: int, seed: int):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = rng.random() < 0.5
        words = ["great", "wonderful"] if good else ["terrible", "boring"]
        rows.append({"prompt": f"question {i}?", "response": f" the answer is {rng.choice(words)}",
                     "helpfulness": 4 if good else 1, "correctness": 3 if good else 1, "verbosity": 2})
    return rows


def test_attributes_then_gating(tiny_model_dir, small_pairs, tmp_path):
    attr = write_jsonl(tmp_path / "helpsteer.jsonl", helpsteer_rows(32, 0))
    stage1 = tmp_path / "attributes"
    result = main(config(tiny_model_dir, attr, stage1, objective="attributes"))
    assert set(result["attributes"]) == {"helpfulness", "correctness", "verbosity"}
    assert all(v["rmse"] >= 0 for v in result["attributes"].values())

    stage2 = tmp_path / "gated"
    result = main(config(stage1, small_pairs, stage2, objective="gating"))
    assert 0 <= result["pairs"]["accuracy"] <= 1
    frozen, gated = load_reward_model(stage1), load_reward_model(stage2)
    for (name, a), (_, b) in zip(frozen.state_dict().items(), gated.state_dict().items()):
        assert torch.equal(a, b), f"{name} changed: the attribute RM must stay frozen in stage 2"
    gating = load_gating(stage2)
    weights = gating(torch.randn(5, frozen.config.hidden_size))
    assert weights.shape == (5, 3) and torch.allclose(weights.sum(-1), torch.ones(5))
    metrics = reward_eval.main(reward_eval.RewardEvalConfig(model=str(stage2), dataset=str(small_pairs)))
    assert metrics["accuracy"] == pytest.approx(result["pairs"]["accuracy"], abs=0.1)


def step_rows(n: int, seed: int):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        wrong = rng.random() < 0.5
        steps = [f"{a} + {b} = {a + b + wrong}", f"so the answer is {a + b + wrong}"]
        rows.append({"prompt": f"what is {a} + {b}?", "completions": steps, "labels": [not wrong, not wrong]})
    return rows


def test_process_objective_on_step_labeled_rows(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "steps.jsonl", step_rows(32, 0))
    result = main(config(tiny_model_dir, data, tmp_path / "prm", objective="process"))
    assert result["process"]["steps"] == 16 and 0 <= result["process"]["step_accuracy"] <= 1
    bad = write_jsonl(tmp_path / "bad_steps.jsonl", step_rows(3, 0)[:2] + [{"prompt": "x", "completions": ["a"],
                                                                             "labels": ["yes"]}])
    with pytest.raises(DataError, match=r"bad_steps.jsonl, row 3, field 'labels'"):
        main(config(tiny_model_dir, bad, tmp_path / "bad", objective="process"))


def test_binary_and_imitation_baselines(tiny_model_dir, small_pairs, tmp_path):
    binary = main(config(tiny_model_dir, small_pairs, tmp_path / "binary", objective="binary"))
    imitation = main(config(tiny_model_dir, small_pairs, tmp_path / "imitation", objective="imitation"))
    for result in (binary, imitation):
        assert result["pairs"]["pairs"] == 12 and 0 <= result["pairs"]["accuracy"] <= 1
    metrics = reward_eval.main(reward_eval.RewardEvalConfig(model=str(tmp_path / "imitation"),
                                                            dataset=str(small_pairs)))
    assert metrics["pairs"] == 48  # a causal LM is scored by its mean completion log-prob


def test_resume_is_exact(tiny_model_dir, small_pairs, tmp_path, resumed_like_full):
    full = tmp_path / "full"
    cfg = config(tiny_model_dir, small_pairs, full, steps=12)
    cfg.log.save_every, cfg.log.keep_checkpoints, cfg.log.log_every = 4, 0, 1
    main(cfg)
    assert resumed_like_full(main, cfg, full, (8, 12))


def test_nan_guard_names_step_and_rows(tiny_model_dir, small_pairs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(broken)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    cfg = config(broken, small_pairs, tmp_path / "run")
    cfg.log.save_every, cfg.data.eval_fraction = 1, 0.0
    with pytest.raises(NonFiniteLossError, match=r"at step 1; batch rows: \[\d+"):
        main(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


CLI = """
import sys
from alignlab import cli
# the routes `alignlab rm` / `alignlab eval rm` (added here in case this checkout's cli.py lacks them)
cli.COMMANDS.setdefault("rm", ("alignlab.recipes.reward", "RewardConfig", "reward model"))
cli.COMMANDS.setdefault("eval rm", ("alignlab.recipes.reward_eval", "RewardEvalConfig", "evaluate a reward model"))
sys.exit(cli.main(sys.argv[1:]))
"""


def cli(*args):
    """`alignlab <args>` in a fresh process, through alignlab.cli.main."""
    return subprocess.run([sys.executable, "-c", CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_eval_rm_cli_writes_metrics_and_plot(tiny_model_dir, small_pairs, tmp_path):
    model = tmp_path / "rm"
    main(config(tiny_model_dir, small_pairs, model, steps=2))
    out = tmp_path / "eval"
    proc = cli("eval", "rm", "--model", model, "--dataset", small_pairs, "--category-column", "topic",
               "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs"] == 48 and set(metrics["by_category"]) <= {"positive", "mixed"}
    assert (out / "reliability.png").exists() and "accuracy" in proc.stdout and "ECE" in proc.stdout


def test_empty_rejected_names_file_row_and_field(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": " good", "rejected": " bad"},
                                                {"prompt": "b", "chosen": " good", "rejected": ""}])
    out = tmp_path / "run"
    proc = cli("rm", "--model", tiny_model_dir, "--dataset", data, "--output-dir", out)
    assert proc.returncode == 1
    assert "bad.jsonl" in proc.stderr and "row 2" in proc.stderr and "'rejected'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["run.log"]  # stopped before any compute


def test_shared_prompt_forward_equals_separate_rows(tiny_model_dir, small_pairs):
    """Prompt held once (4D mask) vs prompt+chosen and prompt+rejected rows: the same scores."""
    from alignlab.recipes.reward_data import shared_prompt_batch, shared_prompt_scores

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = load_reward_model(tiny_model_dir, num_labels=2).eval()
    feats, _ = tokenize_preference(normalize(read_rows(small_pairs), "preference")[:6], tok, max_length=64)
    with torch.no_grad():
        separate = reward_scores(model, collate_preference(feats, tok.pad_token_id))
        shared = shared_prompt_scores(model, shared_prompt_batch(feats, tok.pad_token_id))
    assert torch.allclose(shared, separate, atol=1e-5), (shared - separate).abs().max()


def test_shared_prompt_with_lora_equals_separate_rows_values_and_grads(tiny_model_dir, small_pairs):
    """A LoRA-wrapped RM runs shared-prompt rows too (the model's own forward, the head's output read by a hook):
    same scores and same gradients as the 2B separate rows."""
    from alignlab.models.reward import apply_reward_lora
    from alignlab.recipes.reward_data import shared_prompt_batch, shared_prompt_scores, shares_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = apply_reward_lora(load_reward_model(tiny_model_dir, num_labels=1), r=4, alpha=8)
    assert shares_prompt(model)
    feats, _ = tokenize_preference(normalize(read_rows(small_pairs), "preference")[:5], tok, max_length=64)
    out = []
    for scores_fn, batch in ((reward_scores, collate_preference(feats, tok.pad_token_id)),
                             (shared_prompt_scores, shared_prompt_batch(feats, tok.pad_token_id))):
        model.zero_grad()
        scores = scores_fn(model, batch)
        (scores[:, 0] * torch.arange(1.0, 11.0)).sum().backward()
        out.append((scores.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (separate, g_sep), (shared, g_shared) = out
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=0)
    assert g_sep.keys() == g_shared.keys() and any("lora" in n for n in g_sep)
    for name in g_sep:
        torch.testing.assert_close(g_shared[name], g_sep[name], atol=1e-5, rtol=1e-4)
