"""Where a step's KL partners come from, and what that does to z over one epoch.

    python tools/kl_pairing_study.py --out /tmp/study [--model HF_DIR] [--variants 12] [--seeds 3]

Pairings, each trained for one epoch from the same start with kto-train's own step code
(`forward_backward`: KL pass, KTO loss, one reduction):

- `whole-dataset`: the pairing before FORMAT_VERSION 2: a seeded derangement over the whole
  dataset (rows in input order), steps from the old plan (shuffle, length-sort mega-batches of
  16 steps, shuffle the steps). A partner is in the same step with probability ≈ rows/step ÷ rows.
- `cycle-B`: kto-precompute's pairing now (precompute/plan.py, blocks of B rows, `--blocks`)
  and kto-train's plan now (train/data.py epoch_plan): steps are contiguous cycle segments.
- `in-batch`: the paper's estimator: the same old plan, each row takes the completion of the
  next row of its own step (a rotation), with reference log-probs computed for those pairs.
  It cannot live in a cache (its pairs depend on the batch size and the shuffle); it is here as
  the target.

`--pairing-only` skips training and prints, per block size, how often a partner answers the same
shipped question (a near-matched pair) and the padding of both passes.

Data: examples/feedback.jsonl repeated with variations (system prompts, opening and closing
phrases of the answers): 50 × `--variants` rows. Model: `--model` (an HF dir, e.g. SmolLM2-135M
from examples/smollm2_to_hf.py), or by default a tiny random Llama with SmolLM2's tokenizer,
first fine-tuned on the data for a few steps so the reference knows the chat template.
Writes z per step (CSV), a table (Markdown) and a plot (PNG) to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from _pairing_before import legacy_plan  # noqa: E402

from kto.formats.compute.logprob import CompletionLogps, make_token_batch  # noqa: E402
from kto.formats.compute.scoring import padding_fraction, score_sequences  # noqa: E402
from kto.precompute.inputs.examples import Example  # noqa: E402
from kto.precompute.plan import (  # noqa: E402
    BLOCK_ROWS,
    Truncation,
    kl_partners,
)
from kto.precompute.tokenize import TokenizedRow, tokenize_example  # noqa: E402
from kto.train.config import TrainConfig  # noqa: E402
from kto.train.data import KTOMicroBatch, MicroBatchShape, epoch_plan, row_columns  # noqa: E402
from kto.train.loss import LossType  # noqa: E402
from kto.train.model import disable_dropout  # noqa: E402
from kto.train.setup import make_accelerator  # noqa: E402
from kto.train.step import STAT_FIELDS, LossSettings, forward_backward, summarize  # noqa: E402

SYSTEMS = [
    None,
    "You are a helpful assistant.",
    "You are a concise expert. Answer in one or two sentences.",
    "You are a friendly tutor who explains things to curious students.",
]
OPENERS = ["", "Sure. ", "Good question! ", "Here is the answer: "]
CLOSERS = ["", " I hope this helps.", " Let me know if you want more detail.", " That is the short version."]
MAX_LENGTH = 512


def variant_examples(path: Path, variants: int) -> list[Example]:
    """50 rated answers × `variants`: each variant adds a system prompt and varies the answer."""
    base = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for v in range(variants):
        system, opener, closer = SYSTEMS[v % 4], OPENERS[(v // 4) % 4], CLOSERS[(v + v // 4) % 4]
        for r in base:
            prompt = ([{"role": "system", "content": system}] if system else []) + r["prompt"]
            answer = opener + r["completion"][0]["content"] + closer
            out.append(Example(f"{r['id']}-v{v}", tuple(prompt), ({"role": "assistant", "content": answer},), bool(r["label"]), f"variant {v}"))
    return out


@dataclass
class Setup:
    """One variant: rows in storage order, the epoch plan over them, and each step's partners."""

    name: str
    rows: list[TokenizedRow]
    plan: np.ndarray
    partner: np.ndarray | None  # fixed partners (storage indices), or None for the rotation

    def step_partners(self, step: int) -> dict[int, int]:
        slots = self.plan[step].reshape(-1)
        real = [int(i) for i in slots if i >= 0]
        if self.partner is not None:
            return {i: int(self.partner[i]) for i in real}
        return {i: real[(k + 1) % len(real)] for k, i in enumerate(real)}


def build_setups(rows: list[TokenizedRow], shape: MicroBatchShape, seed: int, blocks: list[int], only: set[str]) -> list[Setup]:
    keys = lambda r: (repr(r.example.prompt), repr(r.example.completion))
    prompts, completions = [keys(r)[0] for r in rows], [keys(r)[1] for r in rows]
    ids = [r.example.id for r in rows]
    lengths = [len(r.prompt_ids) + len(r.completion_ids) for r in rows]
    out = []
    # Before: a derangement over the whole dataset in a plain seeded shuffle, rows in input order.
    old = kl_partners(prompts, completions, ids, seed, lengths=None, block_rows=len(rows))
    out.append(Setup("whole-dataset", rows, legacy_plan(np.array(lengths), shape, seed, 0), np.array(old.partner)))
    # Now: the cycle; rows stored in cycle order, partners mapped to storage indices.
    for block in blocks:
        new = kl_partners(prompts, completions, ids, seed, lengths=lengths, block_rows=block)
        where = np.empty(len(rows), np.int64)
        where[new.order] = np.arange(len(rows))
        stored = [rows[i] for i in new.order]
        partner = np.array([where[new.partner[i]] for i in new.order])
        plan = epoch_plan(np.array([lengths[i] for i in new.order]), shape, seed, 0)
        out.append(Setup(f"cycle-{block}", stored, plan, partner))
    out.append(Setup("in-batch", rows, legacy_plan(np.array(lengths), shape, seed, 0), None))
    return [s for s in out if not only or s.name in only]


def sequences(s: Setup) -> set[tuple[int, int]]:
    """Every (row, completion source) pair the epoch scores: main (i, i) and KL (i, j)."""
    pairs = {(i, i) for i in range(len(s.rows))}
    for step in range(s.plan.shape[0]):
        pairs |= set(s.step_partners(step).items())
    return pairs


def reference_scores(scorer, s: Setup, pad_id: int) -> dict[tuple[int, int], float]:
    pairs = sorted(sequences(s))
    cut = [Truncation(MAX_LENGTH, MAX_LENGTH // 2).apply(s.rows[i].prompt_ids, s.rows[i].completion_ids, s.rows[j].completion_ids) for i, j in pairs]
    prompts = [c.prompt_ids for c in cut]
    completions = [c.completion_ids if i == j else c.kl_completion_ids for c, (i, j) in zip(cut, pairs)]
    scored = score_sequences(scorer, prompts, completions, pairs, batch_tokens=8192, pad_id=pad_id, device=torch.device("cpu"))
    return dict(zip(pairs, scored.sums.tolist()))


def step_micro_batches(s: Setup, step: int, ref: dict, pad_id: int) -> list[KTOMicroBatch]:
    partners = s.step_partners(step)
    out = []
    for slots in s.plan[step, 0]:  # one rank
        valid = slots >= 0
        idx = [int(i) if i >= 0 else int(slots[valid][0]) for i in slots]
        rows = [s.rows[i] for i in idx]
        kl_rows = [s.rows[partners[i]] for i in idx]
        out.append(
            KTOMicroBatch(
                policy=make_token_batch([r.prompt_ids for r in rows], [r.completion_ids for r in rows], pad_id),
                kl=make_token_batch([r.prompt_ids for r in rows], [k.completion_ids for k in kl_rows], pad_id),
                columns=row_columns(
                    ref_logp=torch.tensor([ref[(i, i)] for i in idx], dtype=torch.float64),
                    ref_kl_logp=torch.tensor([ref[(i, partners[i])] for i in idx], dtype=torch.float64),
                    desirable=torch.tensor([r.example.label for r in rows]),
                ),
                valid=torch.as_tensor(valid),
            )
        )
    return out


def run_epoch(s: Setup, start_lm, ref: dict, settings: LossSettings, lr: float, pad_id: int, accelerator) -> list[dict]:
    lm = copy.deepcopy(start_lm).train()
    model = CompletionLogps(lm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    trained: set[int] = set()
    log = []
    for step in range(s.plan.shape[0]):
        batches = step_micro_batches(s, step, ref, pad_id)
        partners = s.step_partners(step)
        step_stats = forward_backward(model, batches, settings, accelerator)
        stats = dict(zip(STAT_FIELDS, step_stats.stacked().tolist()))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        line = summarize(step_stats)
        in_step = set(partners)
        log.append(
            {
                "step": step,
                "z": stats["kl_raw_sum"],
                "margin": line["rewards/margins"],
                "partners_in_step": sum(j in in_step for j in partners.values()) / len(partners),
                "partners_trained_before": sum(j in trained for j in partners.values()) / len(partners),
                # Variants of one shipped question share its id's first part (q07-good-v3 → q07).
                "partners_same_question": sum(_question(s.rows[i]) == _question(s.rows[j]) for i, j in partners.items()) / len(partners),
                "padding_policy": line.get("padding/policy", float("nan")),
                "padding_kl": line.get("padding/kl", float("nan")),
                "padding_kl_per_microbatch": padding_fraction(*_kl_lengths_per_microbatch(batches)),
            }
        )
        trained |= in_step
    return log


def _question(row: TokenizedRow) -> str:
    return row.example.id.split("-")[0]


def _kl_lengths_per_microbatch(batches: list[KTOMicroBatch]):
    """Lengths and batches of the KL pass as the micro-batches collate it (before: one forward each)."""
    lengths, groups = [], []
    for b in batches:
        start = len(lengths)
        lengths += b.kl.attention_mask.sum(1).tolist()
        groups.append(list(range(start, len(lengths))))
    return lengths, groups


def sft_warm_start(lm, rows: list[TokenizedRow], pad_id: int, steps: int, lr: float):
    """A few steps of plain NLL on desirable rows, so a random tiny model knows the template."""
    model = CompletionLogps(lm.train())
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    good = [r for r in rows if r.example.label]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        pick = [good[i] for i in rng.choice(len(good), 16, replace=False)]
        b = make_token_batch([r.prompt_ids for r in pick], [r.completion_ids for r in pick], pad_id)
        loss = -model(b.input_ids, b.score_mask).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return lm.eval()


def pairing_table(rows: list[TokenizedRow], shape: MicroBatchShape, seeds: int, blocks: list[int]) -> list[str]:
    """No training: for each cycle block size, how often a partner answers the same question
    (a near-matched pair: the shipped rows' variants), and the padding of both passes."""
    from kto.formats.compute.scoring import token_budget_batches

    lines = ["| pairing | partners answering the same question | policy padding | KL padding, by own length |", "|---|---|---|---|"]
    for block in [None, *blocks]:
        same, pol, kl = [], [], []
        for seed in range(seeds):
            setups = build_setups(rows, shape, seed, [block] if block else [], set())
            s = setups[0] if block is None else setups[1]
            for step in range(s.plan.shape[0]):
                partners = s.step_partners(step)
                same.append(np.mean([_question(s.rows[i]) == _question(s.rows[j]) for i, j in partners.items()]))
                slots = [m[m >= 0] for m in s.plan[step, 0]]
                pl = [len(s.rows[i].prompt_ids) + len(s.rows[i].completion_ids) for m in slots for i in m]
                pol.append(
                    (sum(pl), sum(len(m) * max(pl[k] for k in range(a, a + len(m))) for a, m in zip(np.cumsum([0] + [len(m) for m in slots]), slots) if len(m)))
                )
                kll = [len(s.rows[i].prompt_ids) + len(s.rows[j].completion_ids) for i, j in partners.items()]
                budget = max(len(m) * max(len(s.rows[i].prompt_ids) + len(s.rows[i].completion_ids) for i in m) for m in slots if len(m))
                groups = token_budget_batches(kll, list(range(len(kll))), budget)
                kl.append((sum(kll), sum(len(g) * max(kll[i] for i in g) for g in groups)))
        name = "whole-dataset" if block is None else f"cycle-{block}"
        lines.append(
            f"| {name} | {np.mean(same):.1%} | {1 - sum(a for a, _ in pol) / sum(b for _, b in pol):.1%} | "
            f"{1 - sum(a for a, _ in kl) / sum(b for _, b in kl):.1%} |"
        )
    return lines


def summary_table(logs: dict[str, list[list[dict]]]) -> list[str]:
    lines = [
        "| pairing | partners in the same step | partners trained before their step | partners answering the same question | mean z | mean z, 2nd half | max z | step-to-step spread of z (std of Δz) | policy padding | KL padding, per micro-batch | KL padding, by own length |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in logs.items():
        lines.append(_summary_line(name, runs))
    return lines


def _z(run: list[dict]) -> np.ndarray:
    return np.array([x["z"] for x in run])


def _summary_line(name: str, runs: list[list[dict]]) -> str:
    def agg(f):
        return float(np.mean([f(r) for r in runs]))

    def col(key):
        return agg(lambda r: np.nanmean([x[key] for x in r]))

    return (
        f"| {name} | {col('partners_in_step'):.0%} | {col('partners_trained_before'):.0%} | {col('partners_same_question'):.0%} | "
        f"{agg(lambda r: _z(r).mean()):+.3f} | {agg(lambda r: _z(r)[len(r) // 2 :].mean()):+.3f} | {agg(lambda r: _z(r).max()):+.3f} | "
        f"{agg(lambda r: np.diff(_z(r)).std()):.3f} | "
        f"{col('padding_policy'):.1%} | {col('padding_kl_per_microbatch'):.1%} | {col('padding_kl'):.1%} |"
    )


def plot(logs: dict[str, list[list[dict]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    palette = iter(["tab:blue", "tab:purple", "tab:orange", "tab:cyan"])
    colours = {name: "tab:red" if name == "whole-dataset" else "tab:green" if name == "in-batch" else next(palette) for name in logs}
    for name, runs in logs.items():
        for k, r in enumerate(runs):
            ax.plot(
                [x["step"] for x in r],
                [x["z"] for x in r],
                color=colours[name],
                alpha=0.9 if k == 0 else 0.35,
                lw=1.4 if k == 0 else 0.8,
                label=name if k == 0 else None,
            )
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("optimizer step (one epoch)")
    ax.set_ylabel("raw z (nats, before clamping at 0)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="HF model dir; default: a tiny random Llama")
    ap.add_argument("--variants", type=int, default=12, help="copies of the 50 shipped rows, each varied")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None, help="default 2e-3 (tiny) or 5e-6 (--model)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--blocks", type=int, nargs="+", default=[BLOCK_ROWS], help="cycle block sizes to compare")
    ap.add_argument("--pairing-only", action="store_true", help="no training: partner and padding statistics per block size")
    ap.add_argument("--only", nargs="*", default=[], help="run only these pairings (names as in the table)")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_tiny_llama, smollm2_gguf

        gguf = smollm2_gguf()
        tok_dir = args.out / "tokenizer"
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tok_dir)
        model_dir = make_tiny_llama(args.out / "tiny-llama", tok_dir)
    else:
        model_dir = args.model
    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    disable_dropout(lm)
    examples = variant_examples(ROOT / "examples" / "feedback.jsonl", args.variants)
    rows = [r for r in (tokenize_example(e, tok, truncation=Truncation(MAX_LENGTH, MAX_LENGTH // 2)) for e in examples) if r is not None]
    lr = args.lr or (5e-6 if args.model else 2e-3)
    shape = MicroBatchShape(args.batch_size, 1, 1)
    if args.pairing_only:
        print("\n".join(pairing_table(rows, shape, args.seeds, args.blocks)))
        return
    if args.model is None:
        lm = sft_warm_start(lm, rows, tok.pad_token_id, steps=60, lr=3e-3)
    accelerator = make_accelerator(TrainConfig(cache=args.out, model=str(model_dir), out=args.out))
    settings = LossSettings(args.beta, 1.0, 1.0, LossType.KTO, 0.0, "step")
    scorer = CompletionLogps(lm.eval())
    logs: dict[str, list[list[dict]]] = {}
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for s in build_setups(rows, shape, seed, args.blocks, set(args.only)):
            torch.manual_seed(seed)
            ref = reference_scores(scorer, s, tok.pad_token_id)
            logs.setdefault(s.name, []).append(run_epoch(s, lm, ref, settings, lr, tok.pad_token_id, accelerator))
            print(f"seed {seed} {s.name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    with open(args.out / "z_per_step.csv", "w") as f:
        f.write(
            "pairing,seed,step,z,margin,partners_in_step,partners_trained_before,partners_same_question,padding_policy,padding_kl,padding_kl_per_microbatch\n"
        )
        for name, runs in logs.items():
            for seed, r in enumerate(runs, start=args.first_seed):
                for x in r:
                    f.write(
                        f"{name},{seed},{x['step']},{x['z']:.6f},{x['margin']:.6f},{x['partners_in_step']:.4f},"
                        f"{x['partners_trained_before']:.4f},{x['partners_same_question']:.4f},{x['padding_policy']:.4f},{x['padding_kl']:.4f},{x['padding_kl_per_microbatch']:.4f}\n"
                    )
    what = f"{len(rows)} rows, batch {args.batch_size}, lr {lr:g}, β {args.beta}, seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, model {'tiny Llama' if args.model is None else args.model.name}"
    table = [f"{what}", ""] + summary_table(logs)
    (args.out / "table.md").write_text("\n".join(table) + "\n")
    plot(logs, args.out / "z_per_step.png", f"z per step over one epoch ({what})")
    print("\n".join(table))


if __name__ == "__main__":
    main()
