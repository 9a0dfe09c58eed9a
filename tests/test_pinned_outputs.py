"""The pin of issue 20: a refactor changes no byte of a cache and no bit of training on CPU.

For the tiny Llama of conftest with SmolLM2's tokenizer and a small fixed input (text rows,
chat rows, a prompt/chosen/rejected pair, and one row too long for --max-length), kto-precompute
must write shards and a manifest whose sha256 are those recorded below, and kto-train's losses
at steps 1..3 must equal the recorded floats exactly.

The values were taken on main's tip before issue 20's moves. They hold where the same kernels
see the same shapes with as many threads (tests/numerics_bounds.py): both phases run here with
one torch thread, as the byte-identity test of tests/test_multinode.py does, so that
the count of cores does not decide how MKL splits a matmul's sum. On another CPU kind (AVX2
against AVX-512, or another vendor: MKL and oneDNN pick their kernels by both) the kernels
differ and so may the last bits: the test then skips rather than fail, since it pins code, not
hardware (PIN_ENV and PINS name the machines the values were taken on: an Intel Xeon and an AMD
EPYC, both AVX-512, whose bytes differ and whose losses do not).

If a change is meant to alter the cache (a new FORMAT_VERSION, a new fingerprint field), retake
these values on main's tip alone and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import chat_rows, metrics, precompute_args, run_train, text_rows, write_rows

from kto.precompute.cli import main as precompute

# A prompt/chosen/rejected pair (TRL's paired shape) becomes one desirable and one undesirable row.
PAIR = {"prompt": "Question: Is ice cold?\nAnswer:", "chosen": " Yes, ice is cold.", "rejected": " No, ice is hot."}
# Longer than --max-length 64 with its prompt: its completion is cut (counts.truncated == 1).
LONG = {"prompt": "Question: Count to forty.\nAnswer:", "completion": " " + " ".join(str(i) for i in range(1, 41)), "label": True}


def inputs(root: Path) -> list[Path]:
    return [
        write_rows(root / "text.jsonl", [*text_rows()[:6], LONG]),
        write_rows(root / "chat.jsonl", chat_rows()[:6]),
        write_rows(root / "pair.jsonl", [PAIR]),
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


# Taken on main's tip (ea6c417) before issue 20's moves, on an Intel Xeon with transformers
# 5.24.0. Retaken on 9144a74, unchanged, on the AMD EPYC (Zen 4, AVX-512) of 2026-12-04 with
# transformers 5.25.0 (CI installs the newest in range): other bytes, from the CPU or from
# transformers (not told apart). Retaken again there for issue 21's cycle (a block sorted by
# prompt group: PAIRING_RULE changed, and a pair's rows sit side by side), on that change alone,
# and once more when `_spread` learnt to swap an earlier row in where no later one fits (on
# this input's few rows that changes the pairs, so steps 2-3 train other KL sequences). Shards and
# manifest retaken when TRUNCATION_RULE's text named the system-message cut (the rule is in the
# fingerprint, which the shards carry); the rows, ids and losses are unchanged. Retaken the same
# way when it named the cut inside a later turn and the trimmed-text match (2026-12-05).
# Retaken on 1955606, unchanged, on a 2-core Intel Xeon (AVX-512) on 2026-12-06, before a change
# of the fingerprint that could not be retaken on the AMD EPYC: the shards' and manifest's bytes
# differ from the EPYC's (its pins: shards 91e0decf…, 20f79…, 6d185…; manifest a8c2197d…), the
# losses are bit-identical on both. Shards and manifest retaken for READING_RULE (content.reading,
# in every cache's fingerprint), and again when it named the BOS/EOS a text carries; every column of
# every shard and the losses are unchanged. Retaken when TRUNCATION_RULE named the template's own
# system message (2026-12-06, f714857 + that change alone): every column of every shard unchanged.
# Retaken when the model identity gained small_tensors_sha256 (it is in the cache's content,
# hence its fingerprint, which every shard carries); the token ids and log-probs are unchanged.
# Retaken when it gained the whole file's sha256 (2026-12-06, Intel Xeon): every column of every
# shard unchanged against the code before. Retaken when TRUNCATION_RULE said a system header is
# kept even with none of its text: every column unchanged. Retaken when READING_RULE parsed tool
# calls' JSON-text arguments in every shape and TRUNCATION_RULE found a tojson'd text escaped:
# every column unchanged. Retaken when READING_RULE parsed only an object with distinct keys:
# every column unchanged. Retaken when PAIRING_RULE said a prompt group and the same completion
# are equal text or equal token ids (precompute/plan.py same_groups): every column of every shard
# unchanged against the same code under the old rule text (only content.kl_pairing, the
# fingerprint and the checksums differ). Retaken when those rules compared the ids of prompts not
# cut at tokenization only: with the old rule text the pins held unchanged. Retaken when
# TRUNCATION_RULE named the cut of both texts and kept a token straddling a header with it: with
# the old rule text the pins held unchanged. Retaken when TRUNCATION_RULE named the cut inside a
# tool call's arguments, the largest texts tried and the last resort (2026-12-07): with the old
# rule text the pins held unchanged.
# The last pins above, on the Intel Xeon. Those of the AMD EPYC (Zen 4, AVX-512) were taken on
# 7e4c9af (2026-12-07), where CI ran with the pins skipped since 2026-12-04; 659cf30, the Intel
# pin's commit, gives the same bytes there, so no commit between changed what the pin holds.
# The AMD pins retaken when PAIRING_RULE shuffled a group of more than 16 rows row by row (this
# input has none: with only the rule's text changed, on 5e86297, the same values came).
# The manifest is pinned with the paths of this run and the library versions replaced by
# placeholders: `info` is information only, and the rest (content, fingerprint, layout, counts,
# shard list, with the shards' sha256) is what the code decides.
PIN_ENV = {"cpu": "AVX512", "torch": "2.13.0+cpu", "transformers": "5.25.0"}


@dataclass(frozen=True)
class Pin:
    shards: dict[str, str]
    manifest: str


PINS = {
    # The Intel Xeon's bytes (7227fc73… the manifest) were taken before PAIRING_RULE shuffled a
    # group of more than 16 rows row by row (2026-12-07): that text is in every cache's
    # fingerprint, and no Intel machine was at hand to retake them. Its losses are still checked
    # (the same on both machines); retake its bytes on an Intel machine.
    "GenuineIntel": None,
    "AuthenticAMD": Pin(
        shards={
            "shard-00000.arrow": "b5977d9b273e93c4595f989e1d3700d4931e8d103c63fd4f0968ef4f3fe3913c",
            "shard-00001.arrow": "d13f561323bc997c3b314a0acedb7126f95bac862c2f4d48fdd904d1498fff07",
            "shard-00002.arrow": "ab46036d822fdedf3331e526c9d53cdb99810364429c53cf98c8c62b5ff98b79",
        },
        manifest="46cf9cbae4dfe5922678d0642fa237f8975d0db23b51111ee751871b3fb272e2",
    ),
}
# Steps 2-3 retaken for issue 21's plan (prompt groups in one micro-batch: other rows train at
# step 1); main's tip with only its epoch_plan replaced by the grouped one gives these exactly.
# The same on both machines: the log-probs differ in their last bits, these losses do not.
LOSSES = [0.5, 0.485733121872689, 0.5001436696595634]


def environment() -> dict:
    import transformers

    # MKL and oneDNN pick their vector width apart from ATen: held to AVX2 by these variables
    # while ATen is not, the shards differed from the pin (a loss by 1 ulp).
    forced = {k: os.environ[k] for k in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    return {
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "vendor": cpu_vendor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **({"forced": forced} if forced else {}),
    }


def cpu_vendor() -> str:
    """GenuineIntel, AuthenticAMD, … (Linux), or '' where /proc/cpuinfo does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("vendor_id")), "")


def placeholder_manifest(cache: Path, replace: dict[str, str]) -> bytes:
    text = (cache / "manifest.json").read_text()
    for old, new in replace.items():
        text = text.replace(json.dumps(old)[1:-1], new)
    return text.encode()


@pytest.fixture(scope="module")
def pinned_run(tmp_path_factory, tiny_model_dir):
    env = environment()
    vendor = env.pop("vendor")
    if env != PIN_ENV or vendor not in PINS:
        pytest.skip(f"the pins were taken with {PIN_ENV} on {' and '.join(PINS)}, this is {environment()}: other kernels may round otherwise")
    root = tmp_path_factory.mktemp("pin")
    data = inputs(root)
    args = precompute_args(data[0], tiny_model_dir, root / "cache", *(a for p in data[1:] for a in ("--data", str(p))))
    result = one_thread(lambda: CliRunner().invoke(precompute, args, catch_exceptions=False))
    assert result.exit_code == 0, result.output
    train = ("--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "3")
    result = one_thread(lambda: run_train(root / "cache", tiny_model_dir, root / "run", *train))
    assert result.exit_code == 0, result.output
    return root, tiny_model_dir, PINS[vendor]


def test_the_cache_bytes_are_pinned(pinned_run):
    root, _, pin = pinned_run
    if pin is None:
        pytest.skip("no byte pin for this CPU vendor (PINS): retake it here")
    assert {p.name: sha256(p) for p in sorted((root / "cache").glob("shard-*.arrow"))} == pin.shards


def test_the_manifest_is_pinned(pinned_run):
    root, model, pin = pinned_run
    if pin is None:
        pytest.skip("no byte pin for this CPU vendor (PINS): retake it here")
    env = environment()
    replace = {str(root): "ROOT", str(model): "MODEL", env["torch"]: "TORCH", env["transformers"]: "TRANSFORMERS"}
    assert hashlib.sha256(placeholder_manifest(root / "cache", replace)).hexdigest() == pin.manifest


def test_the_first_three_losses_are_pinned(pinned_run):
    root, _, _ = pinned_run
    assert [m["loss"] for m in metrics(root / "run")] == LOSSES
