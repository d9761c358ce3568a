"""`alignlab eval rm` on ranked lists: acc@k (best of k of N) from the CLI, checked against brute force."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from transformers import AutoTokenizer

from alignlab.data import collate, normalize, read_rows
from alignlab.lab.tasks import sentiment
from alignlab.models.reward import load_reward_model, reward_scores, save_reward_model
from alignlab.recipes.reward_data import ranked_features

from .test_reward import cli, write_jsonl


def test_eval_rm_on_ranked_lists_reports_acc_at_k(tiny_model_dir, tmp_path):
    rng = random.Random(3)
    rows = []
    for i in range(6):
        texts = [f" it was {w}" for w in rng.sample(["great", "wonderful", "terrible", "boring", "fine", "bad"], 4)]
        rows.append({"prompt": f"review {i}:", "completions": texts, "scores": sentiment.gold_reward(texts)})
    data = write_jsonl(tmp_path / "ranked.jsonl", rows)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm_dir = save_reward_model(load_reward_model(tiny_model_dir, seed=1), tok, tmp_path / "rm")
    out = tmp_path / "eval"
    proc = cli("eval", "rm", "--model", rm_dir, "--dataset", data, "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    assert "acc@2" in proc.stdout and "ranked pairs accuracy" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs"] == 6  # each list's best vs worst completion
    curve = metrics["ranked"]["best_of_n"]
    assert metrics["ranked"]["lists"] == 6 and curve["k"] == [1, 2, 3, 4]

    # brute force: the mean gold of the RM's pick over every k-subset of each list's 4 completions
    feats, _ = ranked_features(normalize(read_rows(str(data)), "ranked"), tok, {"max_length": 64})
    model = load_reward_model(rm_dir).eval()
    for k in (1, 2, 3, 4):
        picks = []
        for f in feats:
            with torch.no_grad():
                scores = reward_scores(model, collate(f["items"], tok.pad_token_id))[:, 0].tolist()
            for subset in itertools.combinations(range(4), k):
                picks.append(f["gold"][max(subset, key=lambda i: scores[i])])
        assert curve["rm"][k - 1] == pytest.approx(sum(picks) / len(picks), abs=1e-9), k
    assert curve["rm"][0] == pytest.approx(curve["random"]) and curve["oracle"] == sorted(curve["oracle"])
