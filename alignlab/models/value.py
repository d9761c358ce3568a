"""The PPO critic: a scalar value per response token, from a separate value model or a head on the policy.

    critic = load_value_model("runs/rm")                        # backbone + head of the reward model
    critic = load_value_model("runs/sft")                       # the policy's backbone, a new zero head
    values = token_values(critic, batch)                        # (B, T) float32, 0 off the response
    save_value_model(critic, tok, "runs/ppo/critic")            # AutoModelForTokenClassification loads it

    head = ValueHead.for_policy(policy)                         # a value head sharing the policy's backbone
    lp, values = logprobs_and_values(policy, batch, head=head)  # one forward: log-probs (+ entropy), values
    lp, values = logprobs_and_values(policy, batch, critic=critic)          # the same with a value model
    values, old = rollout_values(rollouts.batch(), policy=policy, head=head)   # no grad, chunked, on the CPU

Alignment: like log-probs, `values[b, t]` belongs to response token t and is the value of the state that
generates it, the prefix `input_ids[b, :t]`; it is read from the hidden state at position t - 1
(lm-human-preferences reads `values[:, context_length-1:-1]`, Ziegler et al. 2019). Positions where
`response_mask` is False are 0.

A separate value model is a transformers `*ForTokenClassification` with one output (dropout 0, as every
PPO forward must be deterministic: Huang et al. 2024, arXiv:2403.17031, "disable dropout"). Initialized from
a reward model (`alignlab rm` output, a `*ForSequenceClassification` with one output) it keeps the reward
model's backbone and head weights, and the reward model's stored whitening (s - bias) * gain is folded into
the head, so the critic starts out predicting the whitened score the policy is trained on at every token
(Ouyang et al. 2022, arXiv:2203.02155, §3.5: "value function initialized from the RM"). Initialized from a
causal LM (the policy) its head is new and zero: every initial value is 0.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from alignlab.errors import ConfigError
from alignlab.models.load import _resolve
from alignlab.models.logprobs import LogProbs, compute_logprobs
from alignlab.models.reward import BIAS_KEY, GAIN_KEY, _load_head_model

HEAD_FILE = "value_head.safetensors"


def _shift(per_position: Tensor, response_mask: Tensor) -> Tensor:
    """(B, T) outputs at positions t -> values of tokens t + 1: out[:, t] = per_position[:, t - 1], masked."""
    out = torch.zeros_like(per_position, dtype=torch.float32)
    out[:, 1:] = per_position[:, :-1].float()
    return out * response_mask.bool()


# ---------------------------------------------------------------- a separate value model


def _head_params(model: nn.Module) -> dict[str, nn.Parameter]:
    prefix = model.base_model_prefix + "."
    return {k: p for k, p in model.named_parameters() if not k.startswith(prefix)}


def _reward_head(path: Path, prefix: str) -> dict[str, Tensor] | None:
    """The head tensors of the saved reward model at `path` (keys outside the backbone), or None."""
    from safetensors import safe_open

    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys() if not k.startswith(prefix)})
    return out or None


@torch.no_grad()
def _adopt_reward_head(model: nn.Module, path: Path, config) -> None:
    """Copy the reward model's head into the critic's (by shape, so differently named heads work too), then
    fold the stored whitening into it: v = gain * (w.h + b - bias)."""
    heads = _head_params(model)
    weight = next(p for k, p in heads.items() if k.endswith("weight"))
    bias = next((p for k, p in heads.items() if k.endswith("bias")), None)
    saved = _reward_head(path, model.base_model_prefix + ".") or {}
    w_rm = next((t for k, t in saved.items() if k.endswith("weight") and t.shape == weight.shape), None)
    if w_rm is None:
        raise ConfigError(f"{path}: no reward head of shape {tuple(weight.shape)} found to initialize the critic")
    b_rm = next((t for k, t in saved.items() if k.endswith("bias") and t.numel() == 1), None)
    gain = float((getattr(config, GAIN_KEY, None) or [1.0])[0])
    shift = float((getattr(config, BIAS_KEY, None) or [0.0])[0])
    weight.copy_(w_rm.to(weight.dtype) * gain)
    if bias is not None:
        b0 = 0.0 if b_rm is None else float(b_rm.reshape(()))
        bias.fill_((b0 - shift) * gain)
    elif shift != 0.0:
        raise ConfigError(f"{path}: the critic's head has no bias to fold the reward whitening into")
    for key in (GAIN_KEY, BIAS_KEY):  # the critic's outputs are already whitened: no second whitening
        if hasattr(model.config, key):
            delattr(model.config, key)


def load_value_model(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False,
                     tokenizer=None, seed: int = 0, attn_implementation: str = "sdpa",
                     gradient_checkpointing: bool = False):
    """A value model (`*ForTokenClassification`, one output, dropout 0) from a reward model, a causal LM, or a
    saved value model.

    Args:
        path: an `alignlab rm` output (backbone and head kept, its whitening folded into the head), a causal-LM
            directory or hub name (backbone kept, new head initialized to zero), or a value model saved by
            `save_value_model` (loaded as is).
        tokenizer: its pad token id becomes `config.pad_token_id` (default: the tokenizer saved in `path`).
        seed: unused by the zero head; kept for the loader's seeded initialization of other new tensors.
    Returns:
        A transformers `*ForTokenClassification` model with `config.num_labels == 1`.
    """
    from transformers import AutoConfig

    path, _ = _resolve(path, "critic")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load critic config '{path}': {e}") from None
    arch = " ".join(config.architectures or [])
    if "ForSequenceClassification" in arch and config.num_labels != 1:
        raise ConfigError(f"{path}: the critic needs a reward model with one output; this one has "
                          f"{config.num_labels}")
    model = _load_head_model("AutoModelForTokenClassification", path, num_labels=1, dtype=dtype,
                             trust_remote_code=trust_remote_code, tokenizer=tokenizer, seed=seed,
                             attn_implementation=attn_implementation,
                             gradient_checkpointing=gradient_checkpointing,
                             config_overrides={"classifier_dropout": 0.0})
    if "ForSequenceClassification" in arch:
        if not Path(str(path)).is_dir():
            raise ConfigError(f"critic from a reward model needs a local directory, got '{path}'")
        _adopt_reward_head(model, Path(str(path)), config)
    elif "ForTokenClassification" not in arch:
        with torch.no_grad():
            for p in _head_params(model).values():
                p.zero_()
    return model


def save_value_model(model, tokenizer, path: str | Path) -> Path:
    """Write the value model (safetensors + config + tokenizer); plain transformers loads it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def token_values(model: nn.Module, batch: dict) -> Tensor:
    """Values (B, T) float32 of the response tokens under a value model, 0 off `response_mask`.

    Args:
        model: a value model (`load_value_model`), optionally wrapped (DDP, peft).
        batch: `input_ids (B, T)`, `attention_mask (B, T)`, `response_mask (B, T) bool`.
    Returns:
        (B, T) float32; `values[:, t]` is read at position t - 1. Differentiable when grad is enabled.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
    return _shift(out.logits[..., 0], batch["response_mask"])


# ---------------------------------------------------------------- a value head on the policy


@contextlib.contextmanager
def capture_hidden(policy: nn.Module):
    """Collect the input of the policy's LM head (its last hidden states (B, T, H)) during the forwards run
    inside the block; yields the list they are appended to.

    The hook is registered before `compute_logprobs` adds its own, so it sees every position.
    """
    inner = policy
    while hasattr(inner, "module"):  # DDP
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings: a value head needs its hidden states")
    captured: list[Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


class ValueHead(nn.Module):
    """A linear value head on a policy's last hidden states (the policy's backbone is shared).

    Saved as `value_head.safetensors` (+ `value_head.json` with its width); `save_pretrained` lets the
    runtime's checkpoints hold it like a model.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.score = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    @classmethod
    def for_policy(cls, policy: nn.Module) -> ValueHead:
        """A zero-initialized head matching the policy's width, dtype and device."""
        emb = policy.get_input_embeddings().weight
        return cls(emb.shape[1]).to(device=emb.device, dtype=emb.dtype)

    def forward(self, hidden: Tensor, response_mask: Tensor | None = None) -> Tensor:
        """(B, T, H) hidden states -> (B, T) outputs per position; with `response_mask`, the values of the
        response tokens (read at t - 1, float32, 0 off the mask). Call the module (also when DDP-wrapped)."""
        out = self.score(hidden.to(self.score.weight.dtype)).squeeze(-1)
        return out if response_mask is None else _shift(out, response_mask)

    def token_values(self, hidden: Tensor, response_mask: Tensor) -> Tensor:
        """(B, T) float32 values of the response tokens (read at t - 1), 0 off `response_mask`."""
        return self(hidden, response_mask)

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path / HEAD_FILE))
        (path / "value_head.json").write_text(json.dumps({"hidden_size": self.hidden_size}))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ValueHead:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise ConfigError(f"{path}: no {HEAD_FILE} (not a saved value head)")
        head = cls(json.loads((path / "value_head.json").read_text())["hidden_size"])
        head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return head


# ---------------------------------------------------------------- PPO forwards


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability in `model` to 0, in place: `nn.Dropout` modules and the float
    `*dropout` attributes attention layers read in train mode (e.g. Llama's `attention_dropout`).

    PPO compares log-probs and values of the same tokens across forwards (old vs new, ratio = 1 at the first
    update); dropout would make them differ by noise (Huang et al. 2024, arXiv:2403.17031, "disable dropout").
    Train mode is kept so gradient checkpointing still applies.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if name.endswith("dropout") and isinstance(value, float):
                setattr(module, name, 0.0)
    return model


def logprobs_and_values(policy: nn.Module, batch: dict, *, critic: nn.Module | None = None,
                        head: nn.Module | None = None, temperature: float = 1.0,
                        grad: bool = True) -> tuple[LogProbs, Tensor]:
    """The policy's LogProbs (with entropy) of `batch` at `temperature`, and the values (B, T) of the critic:
    from the same forward for a value `head`, else from the separate value model `critic`.

    `grad=False` runs the policy without grad; the head or critic still gets gradients (critic warm-up).
    """
    if (critic is None) == (head is None):
        raise ValueError("pass exactly one of critic (a value model) and head (a value head on the policy)")
    with contextlib.nullcontext() if grad else torch.no_grad():
        with capture_hidden(policy) if head is not None else contextlib.nullcontext([]) as hidden:
            lp = compute_logprobs(policy, batch, temperature=temperature, with_entropy=True)
    values = head(hidden[0], batch["response_mask"]) if head is not None else token_values(critic, batch)
    return lp, values


@torch.no_grad()
def rollout_values(batch: dict, *, policy: nn.Module | None = None, critic: nn.Module | None = None,
                   head: nn.Module | None = None, temperature: float = 1.0, device="cpu",
                   autocast=contextlib.nullcontext, batch_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Rollout-time values (B, T) float32 on the CPU of a right-padded host batch (`input_ids`,
    `attention_mask`, `response_mask`), in row chunks, eval mode; with a value `head` (and its `policy`) also
    the policy's log-probs from the same forward, else None."""
    rows = batch["input_ids"].shape[0]
    values = torch.zeros(batch["input_ids"].shape)
    logprobs = torch.zeros_like(values) if head is not None else None
    models = [m for m in (policy, critic, head) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        for s in range(0, rows, batch_size):
            chunk = {k: batch[k][s:s + batch_size] for k in ("input_ids", "attention_mask", "response_mask")}
            width = int(chunk["attention_mask"].sum(-1).max())  # right-padded: trim the shared padding
            chunk = {k: v[:, :width].to(device) for k, v in chunk.items()}
            with autocast():
                if head is not None:
                    lp, v = logprobs_and_values(policy, chunk, head=head, temperature=temperature)
                    logprobs[s:s + batch_size, :width] = lp.logprobs.float().cpu()
                else:
                    v = token_values(critic, chunk)
            values[s:s + batch_size, :width] = v.float().cpu()
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return values, logprobs
