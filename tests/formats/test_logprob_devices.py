"""CompletionLogps on accelerators, simulated on CPU: what would move between devices and what
would make the host wait for the device.

- `--device-map auto` puts the LM head on one GPU and the decoder's last layers on another: the
  few completion positions go to the head, never the V × H head to them (2.1 GB for 128k × 4096
  fp32, every batch).
- A boolean-mask gather (`hidden[mask]`) calls nonzero, which on CUDA reads the count back and
  waits for the device. Given the count (`scored`), the positions are found by tensor ops alone.
Either way the log-probs are the boolean-mask gather's, bit for bit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_llama

from kto.formats.compute.logprob import CompletionLogps, make_token_batch, token_logps


@pytest.fixture
def scorer() -> CompletionLogps:
    return CompletionLogps(tiny_llama(97).eval(), chunk_size=5)


def batch():
    """Three rows of other lengths (right-padded), one whose completion is a single token."""
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    completions = [[20, 21, 22, 23], [30, 31, 32, 33, 34, 35, 36], [40]]
    return make_token_batch(prompts, completions, pad_id=0)


def by_mask(scorer: CompletionLogps, input_ids: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """The definition as the boolean-mask gather wrote it, on the same padded shapes."""
    from kto.formats.compute.logprob import pad_width

    input_ids, score_mask = pad_width(input_ids, scorer.positions), pad_width(score_mask, scorer.positions)
    hidden = scorer.lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    predict_at = score_mask[:, 1:]
    head = scorer.lm.get_output_embeddings()
    return token_logps(hidden[:, :-1][predict_at], head.weight, input_ids[:, 1:][predict_at], compute_dtype=head.weight.dtype, chunk_size=5)


def spy_on(monkeypatch, name: str, record: list) -> None:
    real = getattr(torch.Tensor, name)

    def spy(self, *args, **kwargs):
        record.append((name, self, args + tuple(kwargs.values())))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, name, spy)


def test_the_head_weight_stays_where_it_is(scorer, monkeypatch):
    """No `.to` of the head's weight (nor of its bias): the selected hidden states and targets
    go to the head's device, and the [N] result comes back."""
    head = scorer.lm.get_output_embeddings()
    gen = torch.Generator().manual_seed(0)
    selected, targets = torch.randn(11, head.weight.shape[1], generator=gen), torch.randint(0, 97, (11,), generator=gen)
    moved: list = []
    spy_on(monkeypatch, "to", moved)
    got = scorer._token_logps(selected, targets)
    # A dtype cast (token_logps' compute dtype) is not a move; a device argument is.
    to_device = [t for _, t, args in moved if any(isinstance(a, (torch.device, str)) for a in args)]
    assert not [t for t in to_device if t is head.weight or t is head.bias], "the V × H head weight was moved to the hidden states' device"
    monkeypatch.undo()
    assert torch.equal(got, token_logps(selected, head.weight, targets, compute_dtype=head.weight.dtype, chunk_size=5))


@pytest.mark.parametrize("with_count", [False, True])
def test_forward_is_the_boolean_mask_gather_bit_for_bit(scorer, with_count):
    b = batch()
    scored = int(b.score_mask[:, 1:].sum()) if with_count else None
    with torch.no_grad():
        got = scorer(b.input_ids, b.score_mask, scored=scored)
        assert torch.equal(got, by_mask(scorer, b.input_ids, b.score_mask))
    assert got.shape == (int(b.score_mask.sum()),)


def test_gradients_are_the_boolean_mask_gathers(scorer):
    b = batch()
    params = [p for p in scorer.parameters() if p.requires_grad]
    by_mask(scorer, b.input_ids, b.score_mask).sum().backward()
    expected = [p.grad.clone() for p in params]
    scorer.zero_grad()
    scorer(b.input_ids, b.score_mask, scored=int(b.score_mask[:, 1:].sum())).sum().backward()
    assert all(torch.equal(p.grad, e) for p, e in zip(params, expected, strict=True))


def test_with_the_count_nothing_is_read_back_from_the_device(scorer, monkeypatch):
    """With `scored` (the caller counts it on its CPU copy), the positions are found without
    nonzero, a boolean-mask index, .item() or .tolist(): on CUDA each reads back and waits."""
    b = batch()
    hidden = scorer.lm.get_decoder()(input_ids=torch.nn.functional.pad(b.input_ids, (0, 16 - b.input_ids.shape[1])), use_cache=False).last_hidden_state
    # The decoder's own code is not under test here: it returns fixed hidden states.
    monkeypatch.setattr(scorer.lm.get_decoder(), "forward", lambda **kw: SimpleNamespace(last_hidden_state=hidden))
    calls: list = []
    for name in ("nonzero", "item", "tolist", "__getitem__"):
        spy_on(monkeypatch, name, calls)
    real_nonzero = torch.nonzero
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: calls.append(("torch.nonzero", None, a)) or real_nonzero(*a, **k))
    with torch.no_grad():
        scorer(b.input_ids, b.score_mask, scored=int(b.score_mask[:, 1:].sum()))
    waits = [c for c in calls if _reads_back(*c)]
    assert not waits, f"{len(waits)} calls would wait for the device"


def _reads_back(name: str, tensor: torch.Tensor | None, args: tuple) -> bool:
    if name != "__getitem__":
        return True  # nonzero, item, tolist
    parts = args[0] if isinstance(args[0], tuple) else (args[0],)
    # Indexing with a bool tensor is a nonzero; with integer tensors or slices it is a gather.
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def test_a_count_too_high_fails_at_the_gather_instead_of_reading_garbage():
    """Slots no scored position fills hold an index past the end: the gather refuses them (on
    CUDA a device-side assert), where torch.empty left whatever memory held."""
    from kto.formats.compute.logprob import scored_positions

    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert [t.tolist() for t in scored_positions(mask, 4)] == [[0, 0, 1, 1], [1, 2, 2, 3]]
    rows, at = scored_positions(mask, 6)
    with pytest.raises(IndexError):
        torch.zeros(2, 4, 3)[rows, at - 1]
