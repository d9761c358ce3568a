"""Tests for alignlab/models/logprobs.py: the chunked path against the plain full log-softmax reference."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from alignlab.models import (
    apply_lora,
    compute_logprobs,
    naive_entropy,
    naive_logprobs,
    packed_seq_logprobs,
)

V = 97
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SMALL, attn_implementation="sdpa")).train()


def padded_batch(seed: int = 1, lengths=(11, 7, 9)) -> dict:
    """Right-padded batch; prompt = first 3 tokens, completion = the rest of each row."""
    g = torch.Generator().manual_seed(seed)
    n_batch, n_tok = len(lengths), max(lengths)
    ids = torch.randint(0, V, (n_batch, n_tok), generator=g)
    attn = torch.zeros(n_batch, n_tok, dtype=torch.long)
    for b, n in enumerate(lengths):
        attn[b, :n] = 1
    resp = attn.bool().clone()
    resp[:, :3] = False
    return dict(input_ids=ids, attention_mask=attn, response_mask=resp)


def reference(model, batch, temperature=1.0):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return (naive_logprobs(logits, batch["input_ids"], batch["response_mask"], temperature),
            naive_entropy(logits, batch["response_mask"], temperature))


def grads(model, loss) -> dict:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1024])
def test_chunked_matches_naive_values_and_grads(chunk_size):
    """Values and parameter gradients equal the full log-softmax reference, for chunks that don't divide N."""
    model, batch = tiny_llama(), padded_batch()
    ref, _ = reference(model, batch)
    ref_grads = grads(model, -ref.sum())
    out = compute_logprobs(model, batch, chunk_size=chunk_size)
    torch.testing.assert_close(out.logprobs, ref.detach(), atol=1e-5, rtol=0)
    new_grads = grads(model, -out.logprobs.sum())
    assert new_grads.keys() == ref_grads.keys() and "lm_head.weight" in new_grads
    for name in ref_grads:
        torch.testing.assert_close(new_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_summaries_and_first_position():
    """seq = sum over counted tokens, mean = seq / count, position 0 never counts."""
    model, batch = tiny_llama(), padded_batch()
    batch["response_mask"][:, 0] = True  # ignored: nothing predicts the first token
    out = compute_logprobs(model, batch)
    assert (out.logprobs[:, 0] == 0).all() and out.entropy is None
    assert out.num_tokens.tolist() == [8, 4, 6]
    torch.testing.assert_close(out.seq_logprobs, out.logprobs.sum(-1))
    torch.testing.assert_close(out.mean_logprobs, out.seq_logprobs / out.num_tokens)
    assert (out.logprobs[~batch["response_mask"]] == 0).all() and (out.logprobs[:, 1:] <= 0).all()


def test_temperature_and_entropy_match_naive():
    model, batch = tiny_llama(), padded_batch()
    ref_lp, ref_ent = reference(model, batch, temperature=0.7)
    ref_grads = grads(model, -(ref_lp.sum() + 0.3 * ref_ent.sum()))
    out = compute_logprobs(model, batch, temperature=0.7, with_entropy=True, chunk_size=5)
    torch.testing.assert_close(out.logprobs, ref_lp.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy, ref_ent.detach(), atol=1e-5, rtol=0)
    new_grads = grads(model, -(out.logprobs.sum() + 0.3 * out.entropy.sum()))
    for name in ref_grads:
        torch.testing.assert_close(new_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_masking_a_token_removes_exactly_its_contribution():
    model, batch = tiny_llama().eval(), padded_batch()
    with torch.no_grad():
        full = compute_logprobs(model, batch)
        batch["response_mask"][0, 5] = False
        less = compute_logprobs(model, batch)
    assert less.logprobs[0, 5] == 0
    keep = batch["response_mask"]
    torch.testing.assert_close(less.logprobs[keep], full.logprobs[keep], atol=0, rtol=0)
    torch.testing.assert_close(full.seq_logprobs[0] - less.seq_logprobs[0], full.logprobs[0, 5])
    assert less.num_tokens[0] == full.num_tokens[0] - 1


def test_packed_row_equals_unpacked():
    """Sequences concatenated in one row with position ids reset (no attention_mask) score as when padded."""
    model, batch = tiny_llama().eval(), padded_batch(lengths=(11, 7, 9))
    lengths = [11, 7, 9]
    with torch.no_grad():
        unpacked = compute_logprobs(model, batch)
        rows = [slice(0, 2), slice(2, 3)]  # row 0 packs sequences 0+1 (+ 2 pad), row 1 holds sequence 2
        n_tok = 20
        ids = torch.zeros(2, n_tok, dtype=torch.long)
        pos = torch.zeros(2, n_tok, dtype=torch.long)
        resp = torch.zeros(2, n_tok, dtype=torch.bool)
        seq_lens = []
        for r, sl in enumerate(rows):
            k = 0
            seq_lens.append([lengths[i] for i in range(sl.start, sl.stop)])
            for i in range(sl.start, sl.stop):
                n = lengths[i]
                ids[r, k:k + n] = batch["input_ids"][i, :n]
                pos[r, k:k + n] = torch.arange(n)
                resp[r, k:k + n] = batch["response_mask"][i, :n]
                k += n
        packed = compute_logprobs(model, dict(input_ids=ids, position_ids=pos, response_mask=resp))
    for i, (r, start) in enumerate([(0, 0), (0, 11), (1, 0)]):
        n = lengths[i]
        torch.testing.assert_close(packed.logprobs[r, start:start + n], unpacked.logprobs[i, :n],
                                   atol=1e-5, rtol=0)
    per_seq = packed_seq_logprobs(packed.logprobs, seq_lens)
    torch.testing.assert_close(per_seq, unpacked.seq_logprobs, atol=1e-5, rtol=0)
    counts = packed_seq_logprobs(resp.float(), seq_lens)
    assert counts.tolist() == unpacked.num_tokens.float().tolist()


def test_packed_seq_logprobs_worked_example():
    """Row 0 packs lengths [2, 3] (+1 pad), row 1 holds [4] (+2 pad): sums 1+2, 3+4+5, 7+8+9+10."""
    lp = torch.tensor([[1.0, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], requires_grad=True)
    sums = packed_seq_logprobs(lp, [[2, 3], [4]])
    assert sums.tolist() == [3.0, 12.0, 34.0]
    sums.sum().backward()
    assert lp.grad.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]


@pytest.mark.parametrize("family", ["gemma2_softcap", "cohere_scale", "granite_scaling"])
def test_scaled_and_softcapped_heads(family):
    """Heads with final_logit_softcapping / logit_scale / logits_scaling (and tied embeddings)."""
    torch.manual_seed(0)
    model = {
        "gemma2_softcap": lambda: Gemma2ForCausalLM(
            Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=2.0)),
        "cohere_scale": lambda: CohereForCausalLM(CohereConfig(**SMALL, logit_scale=0.5, eos_token_id=1)),
        "granite_scaling": lambda: GraniteForCausalLM(GraniteConfig(**SMALL, logits_scaling=3.0)),
    }[family]().train()
    batch = padded_batch()
    ref_lp, ref_ent = reference(model, batch, temperature=1.3)
    ref_grads = grads(model, -(ref_lp.sum() + ref_ent.sum()))
    out = compute_logprobs(model, batch, temperature=1.3, with_entropy=True, chunk_size=6)
    torch.testing.assert_close(out.logprobs, ref_lp.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy, ref_ent.detach(), atol=1e-5, rtol=0)
    new_grads = grads(model, -(out.logprobs.sum() + out.entropy.sum()))
    for name in ref_grads:
        torch.testing.assert_close(new_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("targets", ["all-linear", "q_proj,v_proj,lm_head"])
def test_lora_model_matches_naive(targets):
    """peft-wrapped models (and a LoRA-adapted LM head, which takes the generic head path)."""
    model = apply_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, target_modules=targets)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # B starts at 0; make the adapters matter
    batch = padded_batch()
    ref, _ = reference(model, batch)
    ref_grads = grads(model, -ref.sum())
    out = compute_logprobs(model, batch, chunk_size=5)
    torch.testing.assert_close(out.logprobs, ref.detach(), atol=1e-5, rtol=0)
    new_grads = grads(model, -out.logprobs.sum())
    assert new_grads.keys() == ref_grads.keys() and all("lora_" in n for n in new_grads)
    for name in ref_grads:
        torch.testing.assert_close(new_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_close_to_fp32():
    model, batch = tiny_llama(), padded_batch()
    fp32 = compute_logprobs(model, batch, with_entropy=True).logprobs.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compute_logprobs(model, batch, with_entropy=True, chunk_size=4)
    assert out.logprobs.dtype == torch.float32 and torch.isfinite(out.logprobs).all()
    torch.testing.assert_close(out.logprobs, fp32, atol=0.1, rtol=0.05)
    model.zero_grad()
    (-out.logprobs.sum() - out.entropy.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.lm_head.weight.grad.dtype == torch.float32


def test_no_counted_tokens_and_no_grad():
    model, batch = tiny_llama(), padded_batch()
    batch["response_mask"][1] = False
    with torch.no_grad():
        out = compute_logprobs(model, batch)
    assert out.seq_logprobs[1] == 0 and out.mean_logprobs[1] == 0 and out.num_tokens[1] == 0
    batch["response_mask"][:] = False
    out = compute_logprobs(model, batch, with_entropy=True)
    assert (out.logprobs == 0).all() and (out.entropy == 0).all()


def test_packed_rows_with_attention_mask_are_rejected():
    """A 2D attention_mask disables transformers' block-diagonal mask, so packed rows must not carry one."""
    model = tiny_llama()
    ids = torch.randint(0, V, (1, 8))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    batch = dict(input_ids=ids, position_ids=pos, attention_mask=torch.ones(1, 8, dtype=torch.long),
                 response_mask=torch.ones(1, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="attention_mask=None"):
        compute_logprobs(model, batch)


def test_bf16_weights_give_float32_logprobs_and_grads_in_weight_dtype():
    model, batch = tiny_llama().to(torch.bfloat16), padded_batch()
    out = compute_logprobs(model, batch, chunk_size=4)
    assert out.logprobs.dtype == torch.float32 and torch.isfinite(out.logprobs).all()
    out.logprobs.sum().backward()
    assert model.lm_head.weight.grad.dtype == torch.bfloat16


class _NoHeadWrapper(torch.nn.Module):
    """A model that exposes no get_output_embeddings(): compute_logprobs must take the full-logits path."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        return self.model(**kwargs)


def test_unknown_model_falls_back_to_full_logits():
    model, batch = tiny_llama(), padded_batch()
    ref_lp, ref_ent = reference(model, batch)
    out = compute_logprobs(_NoHeadWrapper(model), batch, with_entropy=True)
    torch.testing.assert_close(out.logprobs, ref_lp, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.entropy, ref_ent, atol=1e-6, rtol=0)


def test_ddp_wrapped_model(tmp_path):
    """DDP's own forward runs (the head hook sits inside it) and gradients match the reference."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model, batch = tiny_llama(), padded_batch()
        ref, _ = reference(model, batch)
        ref_grads = grads(model, -ref.sum())
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        out = compute_logprobs(ddp, batch)
        torch.testing.assert_close(out.logprobs, ref.detach(), atol=1e-5, rtol=0)
        new_grads = grads(model, -out.logprobs.sum())
        for name in ref_grads:
            torch.testing.assert_close(new_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    finally:
        dist.destroy_process_group()
