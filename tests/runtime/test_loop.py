"""Loop helpers: micro-batches, token counts, cadence, interval meter."""

from __future__ import annotations

import pytest
import torch

from alignlab.runtime import Meter, batch_rows, batch_tokens, due, micro_batches, to_device


def test_micro_batches_split_rows_and_keep_all():
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "row_ids": torch.arange(5)}
    parts = micro_batches(batch, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [3, 2]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert micro_batches(batch, 1) == [batch]


def test_rows_and_tokens_of_padded_and_packed_batches():
    padded = {"attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]), "row_ids": torch.tensor([4, 9])}
    packed = {"seq_lens": [[2, 3], [4]], "packed_row_ids": [[1, 2], [3]]}
    assert batch_tokens(padded) == 5 and batch_rows(padded) == [4, 9]
    assert batch_tokens(packed) == 9 and batch_rows(packed) == [1, 2, 3]
    assert set(to_device({**padded, "seq_lens": [[1]]}, "cpu")) == {"attention_mask", "row_ids"}


def test_due():
    assert [s for s in range(1, 8) if due(s, 3)] == [3, 6]
    assert not due(5, 0) and due(5, 0, done=True)


def test_meter_means_and_resume_state():
    meter = Meter("cpu")
    meter.add({"loss": torch.tensor(1.0), "acc": torch.tensor(0.5)}, tokens=10)
    meter.add({"loss": torch.tensor(3.0), "acc": torch.tensor(1.0)}, tokens=10)
    saved = meter.state_dict()
    out = meter.flush()
    assert out["loss"] == pytest.approx(2.0) and out["acc"] == pytest.approx(0.75) and out["tokens_per_s"] > 0
    assert meter.flush()["tokens_per_s"] == 0  # reset
    resumed = Meter("cpu", saved)
    resumed.add({"loss": torch.tensor(5.0), "acc": torch.tensor(0.0)})
    assert resumed.flush()["loss"] == pytest.approx(3.0)  # (1 + 3 + 5) / 3


def test_fp16_on_cpu_is_rejected():
    from alignlab.errors import ConfigError
    from alignlab.runtime import make_accelerator

    if torch.cuda.is_available():
        pytest.skip("fp16 is valid on a GPU")
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        make_accelerator("fp16")
