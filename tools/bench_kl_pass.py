"""KL-pass padding and step time, before and after FORMAT_VERSION 2, side by side in one run.

    python tools/bench_kl_pass.py --model HF_DIR [--repeats 3]

On the shipped examples/feedback.jsonl with the quickstart's settings (max length 256, 20 %
eval split, batch 4 × accumulation 2):

- before: KL partners from a derangement over the whole dataset, rows in input order, steps
  from the old plan (length-sorted mega-batches of 16 steps), and the KL pass run as the
  micro-batches were collated (one forward each, filler rows included);
- after: the cycle pairing (precompute/plan.py), steps as contiguous cycle segments
  (train/data.py), and the KL pass over the step's sequences sorted by their own length under a
  as many batches as micro-batches (train/step.py kl_local_sums).

Step time = KL pass + the policy forward/backward of every micro-batch + the optimizer step;
the two variants alternate step by step, and each figure is the median over `--repeats`
epochs. Reference log-probs do not change the work done, so zeros stand in for them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from _pairing_before import legacy_plan  # noqa: E402

from kto.formats.compute.logprob import CompletionLogps, make_token_batch, sequence_sums  # noqa: E402
from kto.formats.compute.scoring import padding_fraction  # noqa: E402
from kto.precompute.inputs.examples import ColumnMap  # noqa: E402
from kto.precompute.inputs.records import read_examples  # noqa: E402
from kto.precompute.plan import (  # noqa: E402
    Truncation,
    kl_partners,
    split_eval,
)
from kto.precompute.tokenize import leading_bos_id, tokenize_example  # noqa: E402
from kto.train.data import KTOMicroBatch, MicroBatchShape, epoch_plan, row_columns  # noqa: E402
from kto.train.loss import LossType  # noqa: E402
from kto.train.model import disable_dropout  # noqa: E402
from kto.train.step import (  # noqa: E402
    LossSettings,
    kl_local_sums,
    policy_pass,
)
from kto.train.step import kl_groups as groups_of  # noqa: E402

MAX_LENGTH, SHAPE = 256, MicroBatchShape(4, 2, 1)


def rows_and_pairs(tok, variant: str):
    """Stored rows (prompt, completion, KL completion, label) and their lengths, per variant."""
    examples = read_examples([ROOT / "examples" / "feedback.jsonl"], ColumnMap())
    rule = Truncation(MAX_LENGTH, MAX_LENGTH // 2, leading_bos_id(tok))  # prompts are cut at tokenization
    tokenized = [r for r in (tokenize_example(e, tok, truncation=rule) for e in examples) if r is not None]
    train, _ = split_eval(tokenized, [r.example.label for r in tokenized], [repr(r.example.prompt) for r in tokenized], 0.2, 0)
    keys = [(repr(r.example.prompt), repr(r.example.completion)) for r in train]
    lengths = [min(len(r.prompt_ids) + len(r.completion_ids), MAX_LENGTH) for r in train]
    if variant == "before":
        p = kl_partners([k[0] for k in keys], [k[1] for k in keys], [r.example.id for r in train], 0, block_rows=len(train))
        order = list(range(len(train)))
    else:
        p = kl_partners([k[0] for k in keys], [k[1] for k in keys], [r.example.id for r in train], 0, lengths=lengths)
        order = p.order
    stored = []
    for i in order:
        c = rule.apply(train[i].prompt_ids, train[i].completion_ids, train[p.partner[i]].completion_ids)
        stored.append((c.prompt_ids, c.completion_ids, c.kl_completion_ids, train[i].example.label))
    lens = np.array([len(s[0]) + len(s[1]) for s in stored])
    plan = legacy_plan(lens, SHAPE, 0, 0) if variant == "before" else epoch_plan(lens, SHAPE, 0, 0)
    return stored, plan


def batches_of(stored, slots, pad_id) -> list[KTOMicroBatch]:
    out = []
    for s in slots:
        valid = s >= 0
        idx = [int(i) if i >= 0 else int(s[valid][0]) for i in s]
        rows = [stored[i] for i in idx]
        zeros = torch.zeros(len(idx), dtype=torch.float64)
        out.append(
            KTOMicroBatch(
                make_token_batch([r[0] for r in rows], [r[1] for r in rows], pad_id),
                make_token_batch([r[0] for r in rows], [r[2] for r in rows], pad_id),
                row_columns(ref_logp=zeros, ref_kl_logp=zeros, desirable=torch.tensor([r[3] for r in rows])),
                torch.as_tensor(valid),
            )
        )
    return out


def kl_per_microbatch(model, batches):
    """The KL pass before: one forward per collated micro-batch (filler rows run too)."""
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for b in batches:
            flat = model(b.kl.input_ids, b.kl.score_mask)
            total += ((sequence_sums(flat, b.kl.score_mask) - b.ref_kl_logp) * b.valid).sum()
    return total


def timed_step(model, optimizer, batches, variant, settings) -> tuple[float, float]:
    t0 = time.perf_counter()
    if variant == "before":
        kl_per_microbatch(model, batches)
    else:
        kl_local_sums(model, batches)
    t1 = time.perf_counter()
    n = sum(int(b.valid.sum()) for b in batches)
    for b in batches:
        p = policy_pass(model, b, settings, None)
        ((p.out.losses * b.valid).sum() / n).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return t1 - t0, time.perf_counter() - t0


def padding(stored, plan, pad_id, variant):
    """Policy and KL padding of one epoch, as each variant runs it."""
    pol_len, pol_groups, kl_len, kl_groups = [], [], [], []
    for step in plan:
        bs = batches_of(stored, step[0], pad_id)
        for b in bs:
            start = len(pol_len)
            pol_len += b.policy.attention_mask.sum(1).tolist()
            pol_groups.append(list(range(start, len(pol_len))))
        if variant == "before":
            for b in bs:
                start = len(kl_len)
                kl_len += (b.kl.attention_mask.sum(1)).tolist()
                kl_groups.append(list(range(start, len(kl_len))))
        else:
            lens = [int(n) for b in bs for n, v in zip(b.kl.attention_mask.sum(1).tolist(), b.valid.tolist()) if v]
            start = len(kl_len)
            kl_len += lens
            kl_groups += [[start + i for i in g] for g in groups_of(lens, len(bs)) if g]
    return padding_fraction(pol_len, pol_groups), padding_fraction(kl_len, kl_groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    lm = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    disable_dropout(lm)
    model = CompletionLogps(lm.train())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the work of a step, weights unchanged
    settings = LossSettings(0.1, 1.0, 1.0, LossType.KTO, 0.0, "step")
    data = {v: rows_and_pairs(tok, v) for v in ("before", "after")}
    result = {}
    for v, (stored, plan) in data.items():
        pol, kl = padding(stored, plan, tok.pad_token_id, v)
        result[v] = {"padding_policy": pol, "padding_kl": kl, "kl_s": [], "step_s": []}
    for _ in range(args.repeats):
        for k in range(data["after"][1].shape[0]):
            for v in ("before", "after"):  # interleaved, so load from other processes hits both
                stored, plan = data[v]
                kl_s, step_s = timed_step(model, optimizer, batches_of(stored, plan[k % plan.shape[0], 0], tok.pad_token_id), v, settings)
                result[v]["kl_s"].append(kl_s)
                result[v]["step_s"].append(step_s)
    for v in result:
        per_epoch = data[v][1].shape[0]
        reps = [result[v]["step_s"][i : i + per_epoch] for i in range(0, len(result[v]["step_s"]), per_epoch)]
        kls = [result[v]["kl_s"][i : i + per_epoch] for i in range(0, len(result[v]["kl_s"]), per_epoch)]
        result[v]["epoch_step_s_median"] = statistics.median(sum(r) / len(r) for r in reps)
        result[v]["epoch_kl_s_median"] = statistics.median(sum(r) / len(r) for r in kls)
        del result[v]["kl_s"], result[v]["step_s"]
    result["ratio_step_before_over_after"] = result["before"]["epoch_step_s_median"] / result["after"]["epoch_step_s_median"]
    result["ratio_kl_before_over_after"] = result["before"]["epoch_kl_s_median"] / result["after"]["epoch_kl_s_median"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
