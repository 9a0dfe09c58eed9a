"""Prefix sharing in kto-train's step (train/packing.py): the same losses and gradients as the
plain step, to fp32 rounding, with fewer tokens computed."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUESTIONS, OneProcess, make_cache, make_tiny_llama, metrics, run_train
from numerics_bounds import assert_tokens_agree, token_bound

from kto.formats import schema as S
from kto.formats.cache import open_cache
from kto.formats.compute.loading import load_causal_lm
from kto.formats.compute.logprob import CompletionLogps, split_rows
from kto.formats.compute.sources import resolve_source
from kto.train.data import MicroBatchShape, collate_micro_batch, epoch_plan
from kto.train.loss import LossType
from kto.train.packing import shared_layout
from kto.train.step import LossSettings, forward_backward, kl_local_sums

# Gradients of the shared step against the plain one: relative to the norm of the whole
# gradient and of each parameter's (the bar; fp32 rounding of these sums is ~1e-7).
GRAD_RELATIVE = 1e-5

EXTRA_ANSWERS = ["I am not sure, let me think.", "That depends on whom you ask.", "Nobody knows."]


def several_completions_rows() -> list[dict]:
    """Chat rows (SmolLM2's template: a shared system prompt), 3 to 5 completions per question,
    both labels: a paired set as LLaMA-Factory users bring it, unpaired into rows."""
    rows = []
    for k, (q, good, bad) in enumerate(QUESTIONS[:4]):
        answers = [(good, True), (bad, False)] + [(a, k % 2 == 0) for a in EXTRA_ANSWERS[: 1 + k % 3]]
        for answer, label in answers:
            rows.append({"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": answer}], "label": label})
    return rows


@pytest.fixture(scope="module")
def paired_cache(tmp_path_factory, tiny_model_dir):
    return make_cache(tmp_path_factory.mktemp("paired-cache"), several_completions_rows(), tiny_model_dir, "paired.jsonl")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer_dir):
    """A policy unlike the reference: rewards and the KL estimate are not 0 at the probed step."""
    return make_tiny_llama(tmp_path_factory.mktemp("policy"), tokenizer_dir, seed=1)


def prompt_groups(cache) -> list[list[int]]:
    """Row indices grouped by identical prompt ids, in cache order."""
    prompts = cache.rows(np.arange(cache.num_rows), (S.PROMPT_IDS,))[S.PROMPT_IDS].to_list()
    groups: dict[bytes, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(np.asarray(p).tobytes(), []).append(i)
    return list(groups.values())


def interleaved(a: list[int], b: list[int]) -> list[int]:
    """a0 b0 a1 b1 …, then the longer one's rest: rows of one prompt are not neighbours, so the
    packed order (pack by pack) differs from the row order."""
    out = [x for pair in zip(a, b) for x in pair]
    return out + a[len(b) :] + b[len(a) :]


def step_batches(cache) -> list:
    """Two micro-batches, each of two whole prompt groups interleaved; the second ends in a
    filler slot."""
    g = prompt_groups(cache)
    assert len(g) == 4 and all(len(x) >= 3 for x in g)
    return [collate_micro_batch(cache, np.array(interleaved(g[0], g[1])), 0), collate_micro_batch(cache, np.array([*interleaved(g[2], g[3]), -1]), 0)]


def step_gradients(model: CompletionLogps, batches, share: bool):
    model.zero_grad(set_to_none=True)
    settings = LossSettings(0.1, 1.3, 1.0, LossType.KTO, 0.5, "step", kl_prefix_sharing=share, policy_prefix_sharing=share)
    stats = forward_backward(model, batches, settings, OneProcess())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return stats, grads


def assert_gradients_agree(plain: dict, shared: dict) -> None:
    assert plain.keys() == shared.keys() and len(plain) > 5
    norm = lambda g: torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x.double()) for x in g.values()]))
    total = float(norm(plain))
    assert total > 0
    assert abs(float(norm(shared)) - total) <= GRAD_RELATIVE * total
    worst = 0.0
    for name, g in plain.items():
        ref = float(torch.linalg.vector_norm(g.double()))
        diff = float(torch.linalg.vector_norm(shared[name].double() - g.double()))
        assert ref > 0, name
        assert diff <= GRAD_RELATIVE * ref, f"{name}: |Δg| / |g| = {diff / ref:.2e}"
        worst = max(worst, diff / ref)
    print(f"gradients: worst per-parameter |Δg| / |g| = {worst:.2e} (bar {GRAD_RELATIVE:g})")


def test_layout_maps_packed_log_probs_back_to_row_order():
    """Rows 1 and 2 share the prompt [1, 2]; row 0 ([3]) runs alone. Units: the pack (1, 2) then
    row 0, so the packed flat order is c1 = [5, 6] (0, 1), c2 = [7] (2), c0 = [8] (3); the rows'
    order c0, c1, c2 reads it at [3, 0, 1, 2]. Represented 2 + 4 + 3 = 9 tokens, computed
    (2 + 2 + 1) + 2 = 7: 2 saved (the second copy of the prompt)."""
    layout = shared_layout([[3], [1, 2], [1, 2]], [[8], [5, 6], [7]], [True, True, True])
    assert layout is not None and layout.to_rows.tolist() == [3, 0, 1, 2]
    assert (layout.tokens.real, layout.tokens.saved) == (7, 2)
    # formats/compute/shared_prefix.py lays the packs back to back in one unpadded row.
    assert layout.batch.input_ids.tolist() == [[1, 2, 5, 6, 7, 3, 8]] and layout.tokens.slots == 7
    # A filler row (not shareable) never joins a pack and counts as padding, not as real tokens.
    alone = shared_layout([[1, 2], [1, 2]], [[5], [6]], [True, False])
    assert alone is None


def test_shared_step_has_the_plain_losses_and_gradients(paired_cache, policy_dir):
    """The policy pass packs each micro-batch's prompt groups, the KL pass the step's; the loss
    sums and every parameter's gradient are the plain step's within 1e-5 relative."""
    cache = open_cache(paired_cache)
    batches = step_batches(cache)
    model = CompletionLogps(load_causal_lm(resolve_source(str(policy_dir)), dtype=torch.float32)).train()
    plain_stats, plain = step_gradients(model, batches, share=False)
    shared_stats, shared = step_gradients(model, batches, share=True)
    assert float(plain_stats.saved_tokens) == 0 and float(shared_stats.saved_tokens) > 0
    # Both passes shared: the policy pass's real tokens dropped by its share of the savings.
    policy_saved = float(plain_stats.policy_real_tokens - shared_stats.policy_real_tokens)
    assert 0 < policy_saved < float(shared_stats.saved_tokens)
    for field in ("loss_sum", "kl_raw_sum", "logp_d_sum", "logp_u_sum", "sft_nll_sum"):
        a, b = float(getattr(plain_stats, field)), float(getattr(shared_stats, field))
        assert abs(a - b) <= GRAD_RELATIVE * max(abs(a), 1e-3), (field, a, b)
    assert float(plain_stats.kl_raw_sum) != 0
    assert_gradients_agree(plain, shared)


def test_shared_step_with_lora_has_the_plain_gradients(paired_cache, policy_dir, tmp_path):
    """The same through peft's LoRA layers (r = 4, B drawn at random so that A gets a gradient)."""
    from kto.train import adapters
    from kto.train.config import TrainConfig

    lm = load_causal_lm(resolve_source(str(policy_dir)), dtype=torch.float32)
    lm = adapters.add_adapters(TrainConfig(cache=paired_cache, model=str(policy_dir), out=tmp_path, lora_r=4), lm)
    g = torch.Generator().manual_seed(7)
    for name, p in lm.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    model = CompletionLogps(lm.train())
    batches = step_batches(open_cache(paired_cache))
    _, plain = step_gradients(model, batches, share=False)
    _, shared = step_gradients(model, batches, share=True)
    assert all("lora_" in n for n in plain)
    assert_gradients_agree(plain, shared)


def test_kl_pass_shares_prompts_and_keeps_the_sum(paired_cache, policy_dir):
    """z's sum over the step's KL sequences, shared against plain, within the sum of the tokens'
    fp32 bounds; the tokens not computed are exactly the plain pass's real tokens less the shared
    pass's."""
    cache = open_cache(paired_cache)
    batches = step_batches(cache)
    model = CompletionLogps(load_causal_lm(resolve_source(str(policy_dir)), dtype=torch.float32)).eval()
    plain, shared = kl_local_sums(model, batches), kl_local_sums(model, batches, share=True)
    assert shared.saved_tokens > 0 and plain.saved_tokens == 0
    assert shared.real_tokens + shared.saved_tokens == plain.real_tokens
    assert float(shared.count) == float(plain.count) == 15  # 3 + 4 + 5 + 3 rows (the filler slot is not run)
    tokens = sum(int((b.kl.score_mask.sum(1) * b.valid).sum()) for b in batches)
    assert abs(float(shared.total) - float(plain.total)) <= tokens * token_bound(12.0)


def test_policy_log_probs_per_token_agree(paired_cache, policy_dir):
    """Per token, the shared policy pass gives the plain values within tests/numerics_bounds.py."""
    from kto.train.packing import completion_logps

    cache = open_cache(paired_cache)
    model = CompletionLogps(load_causal_lm(resolve_source(str(policy_dir)), dtype=torch.float32)).eval()
    with torch.no_grad():
        for b in step_batches(cache):
            plain, _ = completion_logps(model, b.policy, b.valid, share=False)
            shared, tokens = completion_logps(model, b.policy, b.valid, share=True)
            assert tokens.saved > 0
            assert_tokens_agree(split_rows(plain, b.policy.score_mask), split_rows(shared, b.policy.score_mask))


class OnDevice(torch.Tensor):
    """A CPU tensor that stands for one on an accelerator: ops on it give OnDevice results, and
    every read of one back into Python (or an op whose output size depends on its values, as
    boolean indexing) is recorded with the function that made it. On CUDA each such read waits
    for every kernel queued before it."""

    waits: list[tuple[str, str]] = []
    READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__, torch.Tensor.__int__}
    READS |= {torch.Tensor.__float__, torch.Tensor.__index__, torch.nonzero, torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        index = args[1] if func is torch.Tensor.__getitem__ else ()
        by_mask = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (index if isinstance(index, tuple) else (index,)))
        sized_by_values = func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and "output_size" not in kwargs
        if func in cls.READS or by_mask or sized_by_values:
            cls.waits.append((func.__name__, caller()))
        return super().__torch_function__(func, types, args, kwargs)


def caller() -> str:
    frame = next(f for f in reversed(traceback.extract_stack()[:-2]) if "/torch/" not in f.filename)
    return f"{Path(frame.filename).name}:{frame.name}"


def on_device(t):
    return t.as_subclass(OnDevice) if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice) else t


def stand_in_device(monkeypatch) -> None:
    """Copies to "the device" give OnDevice tensors. A copy the package makes without
    non_blocking is recorded as a wait too: torch synchronizes the stream after it."""
    import kto.formats
    import kto.train

    ours = tuple(str(Path(m.__file__).parent) for m in (kto.train, kto.formats))
    from_ours = lambda: any(f.filename.startswith(ours) for f in traceback.extract_stack()[-4:-2])
    real_to, real_tensor, real_as_tensor = torch.Tensor.to, torch.tensor, torch.as_tensor

    def to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        moves = "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args)
        if not moves or isinstance(self, (OnDevice, torch.nn.Parameter)):
            return out
        if not kwargs.get("non_blocking") and from_ours():
            OnDevice.waits.append(("to", caller()))
        return on_device(out)

    def made_on_device(real):
        def make(data, *args, **kwargs):
            out = real(data, *args, **kwargs)
            if "device" not in kwargs or isinstance(data, torch.Tensor):
                return out
            if from_ours():
                OnDevice.waits.append((real.__name__, caller()))
            return on_device(out)

        return make

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch, "tensor", made_on_device(real_tensor))
    monkeypatch.setattr(torch, "as_tensor", made_on_device(real_as_tensor))


def test_the_step_waits_for_the_device_only_after_the_decoder(paired_cache, policy_dir, monkeypatch):
    """On an accelerator, reading a tensor back (to plan a layout, to count) or a blocking copy
    onto it waits for every queued kernel (the previous micro-batch's backward, the KL pass),
    and the device idles while the CPU catches up. The step plans from the micro-batches' CPU
    copies and copies without blocking: on a stand-in device, neither the shared step nor the
    plain one waits once (the plain forward finds its scored positions from a count taken on the
    CPU copy: formats/compute/logprob.py scored_positions; it waited there after each decoder).
    The stand-in changes no value: the step's statistics are those of the same step on the CPU."""
    host = step_batches(open_cache(paired_cache))
    model = CompletionLogps(load_causal_lm(resolve_source(str(policy_dir)), dtype=torch.float32)).train()
    expected = {share: step_gradients(model, host, share)[0] for share in (True, False)}
    stand_in_device(monkeypatch)
    batches = [b.to("cpu") for b in host]
    assert isinstance(batches[0].policy.input_ids, OnDevice) and batches[0].host is host[0]
    for share in (True, False):
        OnDevice.waits.clear()
        stats, _ = step_gradients(model, batches, share)
        waits = set(OnDevice.waits)
        assert waits == set(), (share, waits)
        assert isinstance(stats.loss_sum, OnDevice)
        assert all(torch.equal(a, b) for a, b in zip(stats, expected[share]))


def test_unpaired_rows_run_the_plain_forward(tiny_eval_cache, policy_dir):
    """No two rows of a micro-batch share a prompt: the step is the plain one, bit for bit."""
    cache = open_cache(tiny_eval_cache)
    one_per_prompt = [g[0] for g in prompt_groups(cache)]
    assert len(one_per_prompt) == 8
    batches = [collate_micro_batch(cache, np.array(one_per_prompt[:4]), 0), collate_micro_batch(cache, np.array(one_per_prompt[4:]), 0)]
    model = CompletionLogps(load_causal_lm(resolve_source(str(policy_dir)), dtype=torch.float32)).train()
    plain_stats, plain = step_gradients(model, batches, share=False)
    shared_stats, shared = step_gradients(model, batches, share=True)
    assert float(shared_stats.saved_tokens) == 0
    assert all(torch.equal(plain[n], shared[n]) for n in plain)


def test_kto_train_logs_tokens_saved_and_records_the_flag(paired_cache, tiny_model_dir, tmp_path):
    """metrics.jsonl carries tokens/saved per step (0 with --no-prefix-sharing, which the run
    record keeps). The two flags plan different steps (prompt groups or cycle segments), so the
    batch holds all 15 rows: each step trains the same rows either way, and the losses agree."""
    lines = {}
    for flag in ("--prefix-sharing", "--no-prefix-sharing"):
        out = tmp_path / flag
        result = run_train(paired_cache, tiny_model_dir, out, "--batch-size", "15", "--max-steps", "2", "--log-every", "1", flag)
        assert result.exit_code == 0, result.output
        lines[flag] = metrics(out)
        record = json.loads((out / "kto_run.json").read_text())
        assert record["config"]["prefix_sharing"] is (flag == "--prefix-sharing")
    assert all(m["tokens/saved"] > 0 for m in lines["--prefix-sharing"])
    assert all(m["tokens/saved"] == 0 for m in lines["--no-prefix-sharing"])
    for a, b in zip(lines["--prefix-sharing"], lines["--no-prefix-sharing"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)


def test_the_plan_keeps_pairs_together_so_each_prompt_runs_once_per_pass(tiny_cache, tiny_model_dir, tmp_path):
    """tiny_cache: 8 questions, each a desirable and an undesirable row under one prompt of 37,
    38, 38, 40, 38, 36, 37 and 35 tokens (Σ 299). kto-train's plan puts each pair in one
    micro-batch of 4, so the policy pass and the KL pass each run every prompt once instead of
    twice: one epoch (4 steps) saves 2 × 299 = 598 tokens. The plan without prompt groups (cycle
    segments of 4 rows) saves only what its cuts happen to leave together: kto-precompute puts a
    pair's rows side by side but swaps the next pair's first row between them (a1 b1 a2 b2), so
    at seed 0 half the pairs (298 tokens)."""
    cache = open_cache(tiny_cache)
    groups = prompt_groups(cache)
    assert len(groups) == 8 and all(len(g) == 2 for g in groups)
    prompt_lengths = cache.lengths() - np.array([len(c) for c in cache.rows(np.arange(16), (S.COMPLETION_IDS,))[S.COMPLETION_IDS].to_list()])
    assert sorted(int(prompt_lengths[g[0]]) for g in groups) == [35, 36, 37, 37, 38, 38, 38, 40]
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", "--batch-size", "4", "--max-steps", "4", "--log-every", "1", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert sum(m["tokens/saved"] for m in metrics(tmp_path / "run")) == 2 * 299
    model = CompletionLogps(load_causal_lm(resolve_source(str(tiny_model_dir)), dtype=torch.float32)).train()
    before = 0.0
    for step in epoch_plan(cache.lengths(), MicroBatchShape(4, 1, 1), seed=0, epoch=0):  # no groups: the plan before
        stats, _ = step_gradients(model, [collate_micro_batch(cache, s, 0) for s in step[0]], share=True)
        before += float(stats.saved_tokens)
    assert before == 298


def test_without_prefix_sharing_the_plan_keeps_the_cycle_segments(tiny_cache, tiny_model_dir, tmp_path):
    """Prompt groups in one micro-batch pay only when the passes share prompts: with
    --no-prefix-sharing kto-train plans the cycle's segments (fresher KL partners, less
    padding), so its run record must not let a resume change the flag (and the plan)."""
    from kto.train.config import TrainConfig
    from kto.train.setup import check_inputs

    cache = open_cache(tiny_cache)
    for share in (True, False):
        run = check_inputs(TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path / "r", prefix_sharing=share))
        expected = prompt_groups_of(cache) if share else None
        assert (run.groups is None) if expected is None else np.array_equal(run.groups, expected)
    from kto.train.resume_record import RESUMABLE

    assert "prefix_sharing" not in RESUMABLE


def prompt_groups_of(cache) -> np.ndarray:
    """[rows] each row's group as `kto.train.data.prompt_groups` numbers it (its first row)."""
    first = {}
    for members in prompt_groups(cache):
        for r in members:
            first[r] = members[0]
    return np.array([first[r] for r in range(cache.num_rows)])
