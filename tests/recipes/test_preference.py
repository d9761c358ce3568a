"""Preference recipe: learning on the lab task, every loss, reference modes and cache, TR-DPO, sDPO, KTO,
RRHF/PRO, exact resume, bad input."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig, parse
from alignlab.errors import ConfigError, DataError
from alignlab.recipes.preference import LOSSES, PreferenceConfig, PreferenceOptions, main


def write_pairs(path, n: int = 48, seed: int = 0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = rng.choice(["great", "wonderful", "terrible", "boring"])
            good, bad = rng.choice([(" it was good", " it was bad"), (" loved it", " hated it")])
            f.write(json.dumps({"prompt": f"the film was {word} and", "chosen": good, "rejected": bad,
                                "score_chosen": 0.9, "score_rejected": 0.2}) + "\n")
    return path


def write_ranked(path, n: int = 24):
    with open(path, "w") as f:
        for i in range(n):
            completions = [" great fun", " it was ok", " very bad"] + ([" awful"] if i % 2 else [])
            row = {"prompt": "the film was", "completions": completions}
            row.update({"scores": [1.0, 0.5, 0.0, -1.0][:len(completions)]} if i % 3 else
                       {"ranks": list(range(len(completions)))})
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread beats two on a shared 2-core machine (OpenMP barriers stall under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pref") / "pairs.jsonl")


def config(model_dir, data, out, cache, **over) -> PreferenceConfig:
    cfg = PreferenceConfig(
        model=ModelConfig(path=str(model_dir)),
        data=DataConfig(dataset=str(data), max_length=32, eval_fraction=0.1),
        optim=OptimConfig(lr=1e-3, batch_size=4, max_steps=2, warmup_steps=0, scheduler="constant"),
        log=LogConfig(output_dir=str(out), log_every=1, eval_every=2, save_every=0, progress=False,
                      tensorboard=False),
        pref=PreferenceOptions(ref_cache_dir=str(cache)),
    )
    for key, value in over.items():
        block, _, name = key.partition("__")
        setattr(getattr(cfg, block), name, value) if name else setattr(cfg, block, value)
    cfg.__post_init__()
    cfg.pref.__post_init__()
    return cfg


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_log(out) -> str:
    return (out / "run.log").read_text()


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_runs_two_steps_with_finite_metrics(loss, tiny_model_dir, pairs, tmp_path):
    data = write_ranked(tmp_path / "ranked.jsonl") if loss in ("rrhf", "pro") else pairs
    out = tmp_path / "run"
    last = main(config(tiny_model_dir, data, out, tmp_path / "cache", pref__loss=loss, optim__grad_accum=2,
                       pref__label_smoothing=0.1 if loss == "cdpo" else 0.0))
    need = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "lr",
            "tokens_per_s", "eval/loss", "eval/rewards/accuracy", "eval/rewards/margin"}
    if LOSSES[loss].inputs not in ("list",):
        need |= {"logps/chosen", "logps/rejected"}
    if LOSSES[loss].inputs in ("ref", "ref+kl", "kto"):
        need.add("kl")
    assert need <= set(last), need - set(last)
    assert all(torch.isfinite(torch.tensor(float(v))) for v in last.values()), last
    assert last["step"] == 2 and (out / "model.safetensors").exists()


def test_dpo_on_lab_pairs_raises_the_gold_reward(tiny_path, tmp_path):
    """SFT-free: pairs sampled from the lab base model, labelled by a noiseless labeler; 20 DPO steps."""
    from alignlab.eval import sequence_kl
    from alignlab.lab.pairs import preference_dataset
    from alignlab.lab.tasks import sentiment
    from alignlab.models import load_model, load_tokenizer
    from alignlab.rollout import HFEngine, Sampling

    tok, base = load_tokenizer(tiny_path), load_model(tiny_path)
    data = preference_dataset(tmp_path / "pairs.jsonl", 160, seed=0, policy=base, tokenizer=tok)
    prompts = sentiment.prompts(128, seed=999)

    def gold(model):
        r = HFEngine(model, tok).generate(prompts, 1, Sampling(max_new_tokens=24), seed=1)
        return sum(sentiment.gold_reward([p + c for p, c in zip(r.prompts, r.completions)])) / len(prompts), r

    before, _ = gold(base)
    out = tmp_path / "dpo"
    cfg = config(tiny_path, data, out, tmp_path / "cache", data__max_length=64, data__eval_fraction=0.0,
                 optim__batch_size=16, optim__max_steps=20, optim__lr=2e-3, log__log_every=5)
    main(cfg)
    policy = load_model(out)
    after, rollouts = gold(policy)
    kl = float(sequence_kl(policy, base, rollouts.batch()).mean())
    print(f"gold reward {before:.3f} -> {after:.3f}, KL(policy || base) {kl:.1f} nats")
    assert after > before + 0.1, (before, after)
    assert kl > 0
    log = metrics(out)
    assert log[-1]["rewards/accuracy"] > 0.6 and log[-1]["rewards/margin"] > log[0]["rewards/margin"]


def test_precomputed_reference_is_cached_and_changed_data_invalidates_it(tiny_model_dir, pairs, tmp_path):
    cache = tmp_path / "cache"
    main(config(tiny_model_dir, pairs, tmp_path / "a", cache))
    assert "reference log-probs: computed" in run_log(tmp_path / "a")
    first = metrics(tmp_path / "a")
    main(config(tiny_model_dir, pairs, tmp_path / "b", cache))
    assert "reusing the cache" in run_log(tmp_path / "b") and "log-probs: computed" not in run_log(tmp_path / "b")
    assert metrics(tmp_path / "b")[-1]["loss"] == pytest.approx(first[-1]["loss"], rel=1e-5)
    changed = write_pairs(tmp_path / "changed.jsonl", seed=1)
    main(config(tiny_model_dir, changed, tmp_path / "c", cache))
    assert "reference log-probs: computed" in run_log(tmp_path / "c")
    main(config(tiny_model_dir, pairs, tmp_path / "d", cache, data__max_length=30))
    assert "reference log-probs: computed" in run_log(tmp_path / "d")


def test_lora_base_reference_starts_at_zero_reward(tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "run"
    main(config(tiny_model_dir, pairs, out, tmp_path / "cache", model__lora_r=4, pref__reference="lora_base"))
    assert "reference: lora_base" in run_log(out)
    first = metrics(out)[1]  # step 1: computed before the first update, when the policy is still its base
    assert first["step"] == 1 and abs(first["rewards/chosen"]) < 1e-6 and abs(first["kl"]) < 1e-5


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_tr_dpo_updates_the_reference_every_tau_steps(mode, tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "run"
    main(config(tiny_model_dir, pairs, out, tmp_path / "cache", pref__tr_dpo=mode, pref__tr_tau=2,
                pref__tr_alpha=0.5, log__save_every=2))
    assert "reference: copy" in run_log(out)
    ref = load_file(out / "reference" / "step-2.safetensors")
    policy, start = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    for name, value in ref.items():
        want = policy[name] if mode == "hard" else 0.5 * policy[name] + 0.5 * start[name]
        torch.testing.assert_close(value, want, msg=name)
    assert not torch.equal(policy["lm_head.weight"], start["lm_head.weight"])


def test_sdpo_stage_two_reference_is_the_stage_one_policy(tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "run"
    main(config(tiny_model_dir, pairs, out, tmp_path / "cache", pref__sdpo_stages=2, pref__reference="copy",
                optim__max_steps=4, log__save_every=2, log__keep_checkpoints=0))
    stage_one_end = load_file(out / "checkpoints" / "step-2" / "model.safetensors")
    ref = load_file(out / "reference" / "step-4.safetensors")
    assert ref.keys() == stage_one_end.keys()
    for name, value in ref.items():
        torch.testing.assert_close(value, stage_one_end[name], msg=name)
    assert [m.get("stage") for m in metrics(out) if "loss" in m] == [0, 0, 1, 1]
    assert "sDPO stage 2/2" in run_log(out)


def test_sdpo_with_precomputed_reference_recomputes_per_stage(tiny_model_dir, pairs, tmp_path):
    out = tmp_path / "run"
    main(config(tiny_model_dir, pairs, out, tmp_path / "cache", pref__sdpo_stages=2, optim__max_steps=4))
    assert run_log(out).count("reference log-probs: computed") == 4  # (train part + eval) x 2 stages


def test_exact_resume_with_precomputed_reference(tiny_model_dir, pairs, tmp_path):
    full = tmp_path / "full"
    over = dict(optim__max_steps=8, log__save_every=4, log__keep_checkpoints=0, log__eval_every=4)
    main(config(tiny_model_dir, pairs, full, tmp_path / "cache", **over))
    killed = tmp_path / "killed"  # what a run killed after step 5 leaves: checkpoint 4, metrics up to 5
    shutil.copytree(full, killed)
    shutil.rmtree(killed / "checkpoints" / "step-8")
    (killed / "model.safetensors").unlink()
    kept = [line for line in (killed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 5]
    (killed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    main(config(tiny_model_dir, pairs, killed, tmp_path / "cache", resume=True, **over))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert strip(metrics(killed)) == strip(metrics(full))
    assert torch.equal(load_file(killed / "model.safetensors")["lm_head.weight"],
                       load_file(full / "model.safetensors")["lm_head.weight"])


def test_empty_rejected_names_file_row_and_field_before_training(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b", "rejected": ""}\n')
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"bad\.jsonl, row 2, field 'rejected'"):
        main(config(tiny_model_dir, data, out, tmp_path / "cache"))
    assert sorted(p.name for p in out.iterdir()) == ["run.log"]


def test_odpo_needs_a_positive_score_gap(tiny_model_dir, tmp_path):
    data = tmp_path / "gap.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c", "score_chosen": 1, "score_rejected": 2}\n')
    with pytest.raises(DataError, match="row 1.*score_chosen"):
        main(config(tiny_model_dir, data, tmp_path / "run", tmp_path / "cache", pref__loss="odpo"))


def test_cli_loss_alias_and_config_errors():
    cfg = parse(PreferenceConfig, ["--loss", "ipo", "--pref.beta", "0.5"])
    assert (cfg.pref.loss, cfg.pref.beta, cfg.reference_mode) == ("ipo", 0.5, "precomputed")
    assert parse(PreferenceConfig, ["--loss", "tdpo"]).reference_mode == "copy"
    assert parse(PreferenceConfig, ["--loss", "simpo"]).reference_mode == "none"
    assert parse(PreferenceConfig, ["--loss", "dpo", "--model.lora-r", "8"]).reference_mode == "precomputed"
    with pytest.raises(ConfigError, match="live reference"):
        PreferenceOptions(loss="tdpo", reference="precomputed")
    with pytest.raises(ConfigError, match="label-smoothing"):
        PreferenceOptions(loss="cdpo")
    with pytest.raises(ConfigError, match="lora"):
        PreferenceConfig(pref=PreferenceOptions(reference="lora_base"))


@pytest.mark.parametrize("loss", ["dpo", "tdpo", "cpo", "simpo"])
def test_shared_prompt_rows_give_the_metrics_of_separate_rows(loss, tiny_model_dir, pairs, tmp_path):
    """One batch holds every training pair, so both layouts see the same examples: every logged number (loss,
    rewards, log-probs, KL, NLL terms, eval after one update) agrees; only the layout (B vs 2B rows) differs."""
    runs = {}
    for shared in (True, False):
        out = tmp_path / f"run-{shared}"
        runs[shared] = main(config(tiny_model_dir, pairs, out, tmp_path / f"cache-{shared}", pref__loss=loss,
                                   pref__share_prompt=shared, optim__batch_size=64, optim__max_steps=1))
        assert ("prompt shared by chosen and rejected" in run_log(out)) == shared
    keys = set(runs[True]) - {"tokens_per_s"}
    assert keys == set(runs[False]) - {"tokens_per_s"} and {"loss", "eval/loss", "logps/chosen"} <= keys
    for key in keys:
        assert runs[True][key] == pytest.approx(runs[False][key], rel=1e-4, abs=1e-5), key


def test_cli_share_prompt_flag_end_to_end(tiny_model_dir, pairs, tmp_path):
    """`alignlab dpo` from the command line with the default (prompt shared) and with `--pref.share-prompt False`."""
    import subprocess
    import sys

    for flag, shared in (([], True), (["--pref.share-prompt", "False"], False)):
        out = tmp_path / f"cli-{shared}"
        proc = subprocess.run(
            [sys.executable, "-m", "alignlab.cli", "dpo", "--model", str(tiny_model_dir), "--dataset", str(pairs),
             "--output-dir", str(out), "--optim.max-steps", "1", "--optim.batch-size", "4", "--data.max-length", "32",
             "--log.progress", "False", "--log.tensorboard", "False", "--pref.ref-cache-dir", str(tmp_path / "c"),
             *flag], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("prompt shared by chosen and rejected" in run_log(out)) == shared
        assert metrics(out)[-1]["step"] == 1
