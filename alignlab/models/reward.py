"""Reward models: a causal LM with a linear score head, read at the last non-pad token; K heads; whitening;
an ArmoRM gating network; a process reward model (one logit per token, read at step separators).

    rm = load_reward_model("runs/sft/final", num_labels=1)       # new `score` head on a causal-LM checkpoint
    scores = reward_scores(rm, batch)                            # (2B, K) float32, chosen rows then rejected
    gain, bias = compute_normalization(reference_scores)         # (N, K) scores under the initial policy
    save_reward_model(rm, tok, "runs/rm/final", gain=gain, bias=bias)
    plain = AutoModelForSequenceClassification.from_pretrained("runs/rm/final")   # same raw scores
    whitened = normalize_scores(plain(**enc).logits, plain)      # (s - bias) * gain

Conventions:
- Raw scores are the head's logits: plain `transformers` reproduces them exactly. Whitening is NOT part of
  the forward; it is stored in `config.json` (`alignlab_reward_bias` = mean, `alignlab_reward_gain` = 1/std,
  one per output) and applied by `normalize_scores`.
- The score of a row is read by transformers' own pooling: the rightmost token that is not
  `config.pad_token_id` (set from the tokenizer at load). With right padding that is the last real token;
  when the pad token IS the EOS token, a trailing EOS counts as padding and the score is read just before it.
- K outputs mean K attributes (multi-objective) or, with `config.alignlab_ensemble = K`, K ensemble members
  sharing one backbone (Christiano 2017; combine them with `alignlab.rewards.combine`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from alignlab.errors import ConfigError
from alignlab.models.load import (
    DTYPES,
    _resolve,
    enable_gradient_checkpointing,
    is_lora,
    load_tokenizer,
    merge_lora,
)
from alignlab.models.shared_prompt import inner_model

logger = logging.getLogger(__name__)

GATING_FILE = "gating.safetensors"
GAIN_KEY, BIAS_KEY, GATING_KEY, ENSEMBLE_KEY = ("alignlab_reward_gain", "alignlab_reward_bias", "alignlab_gating",
                                               "alignlab_ensemble")


def _load_head_model(auto_name: str, path, *, num_labels: int | None, dtype: str, trust_remote_code: bool,
                     tokenizer, seed: int, attn_implementation: str, gradient_checkpointing: bool,
                     config_overrides: dict):
    """Shared loader of sequence- and token-classification heads on a causal-LM or saved head checkpoint."""
    import transformers

    if dtype not in DTYPES:
        raise ConfigError(f"reward model dtype must be one of {sorted(DTYPES)}, got '{dtype}'")
    name, local = _resolve(path, "reward model")
    auto_cls = getattr(transformers, auto_name)
    suffix = auto_name.removeprefix("AutoModel")  # "ForSequenceClassification" / "ForTokenClassification"
    try:
        config = transformers.AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ConfigError(f"could not load reward model config '{name}': {e}") from None
    saved_head = any(a.endswith(suffix) for a in (config.architectures or []))
    if saved_head and num_labels is not None and num_labels != config.num_labels:
        raise ConfigError(f"'{name}' is a saved model with {config.num_labels} outputs but num_labels={num_labels}; "
                          "drop num_labels, or start from the causal-LM checkpoint to train a new head")
    num_labels = config.num_labels if saved_head else (num_labels or 1)
    config = transformers.AutoConfig.from_pretrained(name, num_labels=num_labels,
                                                     trust_remote_code=trust_remote_code)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    tok = tokenizer if tokenizer is not None else load_tokenizer(name, trust_remote_code=trust_remote_code)
    use_safetensors = True if local and any(Path(name).glob("*.safetensors")) else None
    try:
        model, info = auto_cls.from_pretrained(
            name, config=config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, use_safetensors=use_safetensors, output_loading_info=True)
    except OSError as e:
        raise ConfigError(f"could not load reward model '{name}': {e}") from None
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.pad_token_id = tok.pad_token_id
    if tok.pad_token_id is not None and tok.pad_token_id == tok.eos_token_id:
        logger.warning("reward model %s: the pad token is the EOS token, so a trailing EOS counts as padding "
                       "and the score is read at the token before it", name)
    _init_new_head(model, sorted(info["missing_keys"]), seed=seed)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def _init_new_head(model, missing: list[str], *, seed: int) -> None:
    """Seeded init of the freshly created head: weights ~ N(0, 1/(fan_in + 1)), biases 0.

    The std 1/sqrt(d_model + 1) is the reward-head init of Ziegler et al. 2019 (lm-human-preferences): the
    initial scores are O(1) and centered, whatever the seed.
    """
    backbone = model.base_model_prefix + "."
    if [k for k in missing if k.startswith(backbone)]:
        logger.warning("backbone weights missing from the checkpoint (randomly initialized): %s",
                       [k for k in missing if k.startswith(backbone)])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in (k for k in missing if not k.startswith(backbone)):
            p = model.get_parameter(key)
            if p.ndim >= 2:
                std = 1.0 / math.sqrt(p.shape[-1] + 1)
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p.dtype))
            else:
                p.zero_()


def load_reward_model(path: str | Path, *, num_labels: int | None = None, dtype: str = "float32",
                      trust_remote_code: bool = False, ensemble: bool = False, tokenizer=None, seed: int = 0,
                      attn_implementation: str = "sdpa", gradient_checkpointing: bool = False):
    """Load a sequence-classification reward model from a causal-LM checkpoint (new head) or a saved one.

    Args:
        path: a causal-LM directory / hub name (a `score` head with `num_labels` outputs is created and
            initialized by `seed`), or a saved reward model (its head and output count are kept).
        num_labels: outputs K (attributes, or ensemble members with `ensemble=True`); None = the saved
            model's count, or 1 for a causal LM. A saved model with another count is an error.
        dtype: "float32" | "bfloat16" | "float16".
        ensemble: the K outputs are K ensemble members on one backbone: sets `config.alignlab_ensemble = K`.
        tokenizer: its pad token id becomes `config.pad_token_id` (default: the tokenizer saved in `path`).
        seed: seed of the new head's initialization.
        gradient_checkpointing: recompute activations in backward (non-reentrant).
    Returns:
        A transformers `*ForSequenceClassification` model.
    """
    model = _load_head_model("AutoModelForSequenceClassification", path, num_labels=num_labels, dtype=dtype,
                             trust_remote_code=trust_remote_code, tokenizer=tokenizer, seed=seed,
                             attn_implementation=attn_implementation,
                             gradient_checkpointing=gradient_checkpointing, config_overrides={})
    if ensemble:
        setattr(model.config, ENSEMBLE_KEY, model.config.num_labels)
    return model


def ensemble_size(model_or_config) -> int | None:
    """N when the outputs are N ensemble members (`config.alignlab_ensemble`), else None."""
    return getattr(getattr(model_or_config, "config", model_or_config), ENSEMBLE_KEY, None)


def apply_reward_lora(model, *, r: int, alpha: float, dropout: float = 0.0,
                      target_modules: str | list[str] = "all-linear"):
    """LoRA on the backbone of a reward (or process reward) model; the score head stays fully trainable.

    peft's SEQ_CLS / TOKEN_CLS task types keep a trainable copy of the head (`modules_to_save`), which
    `save_reward_model` merges back. (`alignlab.models.apply_lora` is for causal LMs and would freeze it.)
    """
    from peft import LoraConfig, get_peft_model

    if r <= 0:
        raise ConfigError(f"LoRA rank must be > 0, got {r}")
    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [m.strip() for m in target_modules.split(",") if m.strip()]
    task = "TOKEN_CLS" if type(model).__name__.endswith("ForTokenClassification") else "SEQ_CLS"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task)
    return get_peft_model(model, config)


def _forward(model, batch: dict, **kwargs):
    if batch.get("attention_mask") is None and batch.get("position_ids") is not None:
        raise ValueError("reward models score padded rows (right padding), not packed rows: collate without packing")
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False,
                 **kwargs)


def reward_scores(model, batch: dict) -> torch.Tensor:
    """Raw scores (B, K) float32 of each row, read at its last non-pad token, in one forward.

    Args:
        model: a reward model (`load_reward_model`), optionally LoRA-wrapped.
        batch: `input_ids (B, T)` right-padded, `attention_mask (B, T)`; other keys (response_mask, row_ids)
            are ignored. A `collate_preference` batch gives chosen rows [0, B/2) and rejected rows [B/2, B).
    Returns:
        (B, K) float32, differentiable when grad is enabled.
    """
    return _forward(model, batch).logits.float()


def reward_scores_and_hidden(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`reward_scores` (B, K) float32 and the last hidden states (B, T, H) the score head read, from one forward.

    The hidden states are the `score` head's input (after the backbone's final norm), caught by a forward hook so
    that wrappers (peft, DDP) run their own forward; `alignlab.models.logprobs.hidden_logprobs` turns them into the
    causal LM's log-probs (the GRM regularizer, `load_lm_head`).
    """
    head = getattr(inner_model(model), "score", None)
    if head is None:
        raise ConfigError(f"{type(inner_model(model)).__name__} has no `score` head: its hidden states cannot be read")
    caught = []
    handle = head.register_forward_hook(lambda _m, args, _out: caught.append(args[0]))
    try:
        scores = reward_scores(model, batch)
    finally:
        handle.remove()
    return scores, caught[0]


def load_lm_head(path: str | Path, model, *, trust_remote_code: bool = False) -> nn.Linear:
    """The causal LM's output head over a reward model's backbone: training only, never saved with the RM.

    Used by the text-generation regularizer of Yang et al. 2024 (GRM, arXiv:2406.10216), which keeps the
    base model's LM head on the reward model's hidden states. Tied embeddings (`tie_word_embeddings`): a Linear
    whose weight IS the reward model's input-embedding parameter (it trains with the backbone, as in a tied causal
    LM). Untied: the head weight read from `path`'s safetensors, frozen (only its gradient w.r.t. the hidden states
    flows; a trained copy would be thrown away at save). Rows for tokens the tokenizer added are zero.
    Args:
        path: the causal-LM checkpoint the reward model was built from (`load_reward_model(path)`).
        model: that reward model (optionally LoRA-wrapped); its input embeddings give H and V.
    """
    import transformers
    from safetensors import safe_open

    name, _ = _resolve(path, "causal LM")
    config = transformers.AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    if not any(a.endswith("ForCausalLM") for a in (config.architectures or [])):
        raise ConfigError(f"'{name}' is not a causal-LM checkpoint ({config.architectures}); the LM-head "
                          "regularizer (rm.lm_coef > 0) needs the causal LM the reward model starts from")
    embed = inner_model(model).get_input_embeddings().weight  # (V', H), V' >= V after tokenizer additions
    head = nn.Linear(embed.shape[1], embed.shape[0], bias=False, device=embed.device, dtype=embed.dtype)
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        head.weight = embed
        return head
    with torch.device("meta"):
        lm = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    out = lm.get_output_embeddings()
    key = next(n for n, p in lm.named_parameters() if p is out.weight)
    index = Path(name) / "model.safetensors.index.json"
    file = Path(name) / (json.loads(index.read_text())["weight_map"].get(key, "") if index.exists()
                         else "model.safetensors")
    if not file.is_file():
        raise ConfigError(f"'{name}': no safetensors file holds the LM head weight '{key}'")
    with safe_open(str(file), framework="pt") as f:
        weight = f.get_tensor(key)  # (V, H)
    with torch.no_grad():
        head.weight.zero_()[: weight.shape[0]].copy_(weight)
    return head.requires_grad_(False)


def compute_normalization(scores: torch.Tensor) -> tuple[list[float], list[float]]:
    """Whitening constants of each output over a reference set: bias = mean, gain = 1 / std.

    Whitened scores (s - bias) * gain have mean 0 and (unbiased) std 1 on the reference set. Ziegler et al.
    2019 (arXiv:1909.08593) normalize under the initial policy's samples; Touvron et al. 2023 (Llama 2,
    arXiv:2307.09288) whiten the reward-model score for PPO.
    Args:
        scores: (N, K) or (N,) raw scores of N reference completions, N >= 2.
    Returns:
        (gain, bias): two lists of K floats.
    """
    s = scores.detach().float().reshape(scores.shape[0], -1)  # (N, K)
    if s.shape[0] < 2:
        raise ValueError(f"normalization needs at least 2 reference scores, got {s.shape[0]}")
    mean, std = s.mean(0), s.std(0)
    if not (torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"reference scores must be finite with a non-zero spread per output; std = {std.tolist()}")
    return (1.0 / std).tolist(), mean.tolist()


def normalize_scores(scores: torch.Tensor, model_or_config) -> torch.Tensor:
    """Whitened scores (s - bias) * gain with the constants stored in the model's config.

    Args:
        scores: (B, K) raw scores (or (B,) when K = 1).
        model_or_config: the reward model (plain transformers or alignlab) or its config.
    Returns:
        Same shape as `scores`; unchanged when the config stores no normalization.
    """
    config = getattr(model_or_config, "config", model_or_config)
    gain, bias = getattr(config, GAIN_KEY, None), getattr(config, BIAS_KEY, None)
    if gain is None and bias is None:
        return scores
    bias = torch.as_tensor(0.0 if bias is None else bias, dtype=scores.dtype, device=scores.device)
    gain = torch.as_tensor(1.0 if gain is None else gain, dtype=scores.dtype, device=scores.device)
    return (scores - bias) * gain


class GatingNetwork(nn.Module):
    """ArmoRM's gate: an MLP from the prompt's hidden state to softmax weights over K objectives.

    Paper: Wang et al. 2024 (ArmoRM, arXiv:2406.12845), stage 2: the weights w = softmax(g(h_prompt) / T)
    combine the attribute scores, R = sum_k w_k r_k (`alignlab.losses.reward.gated_scores`).
    Args:
        hidden_size: H of the backbone. num_objectives: K.
        hidden: width of each hidden layer. num_layers: hidden ReLU layers. temperature: softmax temperature.
    """

    def __init__(self, hidden_size: int, num_objectives: int, hidden: int = 256, *, num_layers: int = 2,
                 temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        dims = [hidden_size] + [hidden] * num_layers
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_objectives))
        self.net = nn.Sequential(*layers)
        self.spec = dict(hidden_size=hidden_size, num_objectives=num_objectives, hidden=hidden,
                         num_layers=num_layers, temperature=temperature)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, H) prompt hidden states -> (B, K) float32 weights, each row summing to 1."""
        logits = self.net(hidden_states.to(self.net[0].weight.dtype))  # (B, K)
        return torch.softmax(logits.float() / self.spec["temperature"], dim=-1)


def prompt_hidden_states(model, batch_prompt: dict) -> torch.Tensor:
    """Final-layer hidden state (B, H) at each prompt's last non-pad token: the gating network's input.

    Args:
        model: the reward model (sequence classification), optionally LoRA-wrapped.
        batch_prompt: `input_ids (B, T)` of the prompts alone, right-padded, and `attention_mask (B, T)`.
    """
    hidden = _forward(model, batch_prompt, output_hidden_states=True).hidden_states[-1]  # (B, T, H)
    ids = batch_prompt["input_ids"]
    mask = batch_prompt.get("attention_mask")
    mask = (ids != model.config.pad_token_id) if mask is None else mask.bool()
    positions = torch.arange(ids.shape[1], device=ids.device)
    last = (positions * mask).argmax(-1)  # (B,) rightmost counted token
    return hidden[torch.arange(ids.shape[0], device=ids.device), last]


def load_gating(path: str | Path) -> GatingNetwork | None:
    """The gating network saved beside a reward model by `save_reward_model`, or None if it has none."""
    from safetensors.torch import load_file

    path = Path(path)
    spec = json.loads((path / "config.json").read_text()).get(GATING_KEY)
    if spec is None:
        return None
    if not (path / GATING_FILE).exists():
        raise ConfigError(f"{path / 'config.json'} declares a gating network but {GATING_FILE} is missing")
    spec = dict(spec)
    gating = GatingNetwork(spec.pop("hidden_size"), spec.pop("num_objectives"), spec.pop("hidden"), **spec)
    gating.load_state_dict(load_file(str(path / GATING_FILE)))
    return gating


def _as_list(values, n: int, what: str) -> list[float] | None:
    if values is None:
        return None
    out = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} values; the model has {n} outputs")
    return out


def save_reward_model(model, tokenizer, path: str | Path, *, gain: Sequence[float] | None = None,
                      bias: Sequence[float] | None = None, gating: GatingNetwork | None = None) -> Path:
    """Write a reward model (safetensors + config + tokenizer) that plain transformers loads and scores alike.

    LoRA adapters are merged in a copy (the trained model keeps them). `gain`/`bias` (K floats each, from
    `compute_normalization`) are stored in config.json, and also set on `model.config`, so that
    `normalize_scores` works on the live and the reloaded model; None keeps what the config already holds.
    `gating` is written to `gating.safetensors` with its shape in config.json (`alignlab_gating`); without
    it the saved config declares no gating network. Works for process reward models too.
    """
    from safetensors.torch import save_file

    path = Path(path)
    n_out = model.config.num_labels
    for key, values in ((GAIN_KEY, _as_list(gain, n_out, "gain")), (BIAS_KEY, _as_list(bias, n_out, "bias"))):
        if values is not None:
            setattr(model.config, key, values)
    if gating is not None and gating.spec["num_objectives"] != n_out:
        raise ValueError(f"the gating network weighs {gating.spec['num_objectives']} objectives; "
                         f"the model has {n_out} outputs")
    plain = merge_lora(copy.deepcopy(model)) if is_lora(model) else model
    before = getattr(plain.config, GATING_KEY, None)
    if gating is not None:
        setattr(plain.config, GATING_KEY, dict(gating.spec))
    elif hasattr(plain.config, GATING_KEY):
        delattr(plain.config, GATING_KEY)
    path.mkdir(parents=True, exist_ok=True)
    try:
        plain.save_pretrained(path)
    finally:
        if before is None and hasattr(plain.config, GATING_KEY):
            delattr(plain.config, GATING_KEY)
        elif before is not None:
            setattr(plain.config, GATING_KEY, before)
    if gating is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in gating.state_dict().items()}, str(path / GATING_FILE))
    elif (path / GATING_FILE).exists():
        (path / GATING_FILE).unlink()
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def load_process_reward_model(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False,
                              tokenizer=None, seed: int = 0, attn_implementation: str = "sdpa",
                              gradient_checkpointing: bool = False):
    """Load a process reward model: a token-classification head with ONE logit per token.

    sigmoid(logit at a step's last token) = P(step correct), trained with
    `alignlab.losses.reward.process_reward_loss` (Lightman et al. 2023, arXiv:2305.20050). One logit (not
    two softmax classes) keeps the label binary and the loss a BCE; the head's dropout is set to 0 so
    training and scoring see the same features. Other arguments as `load_reward_model`.
    """
    return _load_head_model("AutoModelForTokenClassification", path, num_labels=1, dtype=dtype,
                            trust_remote_code=trust_remote_code, tokenizer=tokenizer, seed=seed,
                            attn_implementation=attn_implementation,
                            gradient_checkpointing=gradient_checkpointing,
                            config_overrides={"classifier_dropout": 0.0})


def step_separator_mask(input_ids: torch.Tensor, separator_id: int, *,
                        response_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool, True at each step separator token (inside the response when `response_mask` is given)."""
    mask = input_ids == separator_id
    return mask if response_mask is None else mask & response_mask.bool()


def step_scores(model, batch: dict, step_positions: torch.Tensor) -> torch.Tensor:
    """Step logits (N,) float32 of a process reward model at the marked positions, in row-major order.

    Args:
        model: `load_process_reward_model` output, optionally LoRA-wrapped.
        batch: `input_ids (B, T)`, `attention_mask (B, T)`.
        step_positions: (B, T) bool, True at the last token of each step (e.g. `step_separator_mask`);
            the order of the N outputs is that of `step_positions.nonzero()`, the order of the labels.
    """
    logits = _forward(model, batch).logits  # (B, T, 1)
    return logits[..., 0].float()[step_positions.bool()]
