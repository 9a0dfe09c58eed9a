"""Shared helpers of the benchmark scripts in tools/ (not part of the package, not imported by it).

- random-init Llama models by shape name (`SHAPES`, `build_llama`), and a from-scratch tokenizer
  of any vocabulary size (`build_tokenizer`), so that nothing needs the network;
- the matmul ceiling (`matmul_ceiling`): a large square matmul timed in the same process, bf16 on
  CUDA and fp32 on CPU, the denominator of every MFU printed here;
- FLOP counting (`scoring_flops`) with only the FLOPs a log-prob pass *needs* (see its docstring);
- a realistic length mix (`length_mix`, `mix_sequences`), and main + KL sequences as
  kto-precompute forms them from a file (`pipeline_sequences`), e.g. a paired mix with long
  shared prompts (`paired_sequences`; tools/bench_prefix_sharing.py, bench_train_sharing.py);
- peak memory that can be reset on CUDA and on Linux CPUs (`PeakMemory`);
- timing with CUDA synchronisation (`sync`, `Timer`) and table printing (`print_table`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Shapes of public checkpoints (config.json), random-initialised here. `tiny` is for CPU tests;
# `micro` for benchmarks of the data path, where the model must cost next to nothing.
SHAPES: dict[str, dict] = {
    "micro": dict(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, intermediate_size=16, vocab_size=64, tie_word_embeddings=False
    ),
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, vocab_size=4096, tie_word_embeddings=False
    ),
    "smollm2-135m": dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
    ),
}
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # ids of build_tokenizer's special tokens
FIRST_WORD_ID = 7  # 0-3 specials, 4-6 role names; random token ids are drawn from [7, V)
GB = 1e9


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def llama_config(shape: str, vocab_size: int | None = None):
    from transformers import LlamaConfig

    kw = dict(SHAPES[shape])
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    return LlamaConfig(**kw, max_position_embeddings=4096, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, attn_implementation="sdpa")


def build_llama(shape: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Random-init LlamaForCausalLM of `shape`, created directly on `device` (an 8B init on the
    CPU would take minutes; on the GPU it takes seconds)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(llama_config(shape), dtype=dtype)
    return lm


def build_tokenizer(vocab_size: int):
    """A word-level fast tokenizer with exactly `vocab_size` ids: specials, role names, then the
    words `w7`, `w8`, … Text made of those words maps one word to one token, so generated data
    has exactly the lengths asked for. Plain text gets BOS in front (as Llama-3's does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    names = ["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", "system"]
    vocab = {w: i for i, w in enumerate(names)}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD_ID, vocab_size)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant{% endif %}"
    return tok


def save_model_dir(out: Path, shape: str, dtype: torch.dtype, device: torch.device) -> Path:
    """A random-init model of `shape` plus its tokenizer, saved as a Hugging Face directory."""
    lm = build_llama(shape, dtype, device)
    lm.save_pretrained(out)
    build_tokenizer(lm.config.vocab_size).save_pretrained(out)
    del lm
    free_memory()
    return out


def param_counts(lm) -> dict[str, int]:
    """total, embedding (input embedding + LM head, counted once if tied) and non-embedding."""
    total = sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
    emb_params = {id(m.weight): m.weight for m in (lm.get_input_embeddings(), lm.get_output_embeddings())}
    emb = sum(p.numel() for p in emb_params.values())
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


def scoring_flops(cfg, non_embedding_params: int, lengths, scored_positions: int) -> float:
    """FLOPs a forward log-prob pass needs; padding and unneeded logits are not counted.

        2 · P_non_embedding · Σ L                   (every matmul weight, once per real token)
      + Σ_layers Σ_seq 2 · d_attn · L · (L + 1)     (causal QKᵀ and AV: query i sees i + 1 keys)
      + 2 · H · V · scored_positions              (the LM head, only where a log-prob is read)

    d_attn = heads · head_dim. The same count is the numerator of MFU for every method, so a
    method that computes logits at prompt or pad positions gets a lower MFU, as it should.
    """
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d_attn = cfg.num_attention_heads * head_dim
    dense = 2.0 * non_embedding_params * sum(lengths)
    attention = cfg.num_hidden_layers * sum(2.0 * d_attn * L * (L + 1) for L in lengths)
    head = 2.0 * cfg.hidden_size * cfg.vocab_size * scored_positions
    return dense + attention + head


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall time of a block, with the CUDA queue drained at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self):
        sync(self.device)
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self._t


def matmul_ceiling(device: torch.device, n: int | None = None, reps: int = 5) -> dict:
    """Achieved FLOP/s of an n × n @ n × n matmul (2n³ FLOPs): bf16 on CUDA, fp32 on CPU.

    Measured in the same process as the benchmark, so MFU is relative to what this very chip
    and library reach now (clocks, power caps), not to a datasheet peak. The best of `reps`
    timed groups is kept (CUDA: 10 matmuls per group after 3 warmups; CPU: 1), because on a
    shared CPU other processes only ever slow a group down.
    """
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = n or (8192 if cuda else 2048)
    per_rep = 10 if cuda else 1
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3 if cuda else 1):
        a @ b
    best = float("inf")
    for _ in range(reps):
        with Timer(device) as t:
            for _ in range(per_rep):
                a @ b
        best = min(best, t.seconds / per_rep)
    del a, b
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "flops_per_s": 2.0 * n**3 / best}


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory since `reset()`.

    CUDA: torch's max_memory_allocated (tensors only, weights included).
    CPU: the process's peak resident set (VmHWM), reset by writing 5 to /proc/self/clear_refs
    (Linux); it includes the Python and library footprint, and freed memory that the allocator
    keeps, so compare CPU figures with each other, not with CUDA ones.
    `added_gb` is the peak minus what was in use at reset.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start = 0.0

    def reset(self) -> PeakMemory:
        free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / GB
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass  # not Linux, or not allowed: the peak then covers the whole process life
            self.start = _proc_status_kb("VmRSS") * 1024 / GB
        return self

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GB
        return _proc_status_kb("VmHWM") * 1024 / GB

    def report(self) -> dict:
        peak = self.peak_gb()
        return {"peak_gb": peak, "added_gb": peak - self.start}


@dataclass(frozen=True)
class RowLengths:
    prompt: int
    completion: int


def synthetic_content(note: str, tokenizer_id: dict, *, max_length: int, seed: int = 0, dtype: str = "fp32", store_token_logps: bool = False):
    """A manifest `content` for a synthetic benchmark cache: no model scored it, `note` says so."""
    from kto.formats import schema as S
    from kto.formats.manifest import CacheContent

    return CacheContent(
        format_version=S.FORMAT_VERSION,
        split="train",
        model={"synthetic": note},
        tokenizer=tokenizer_id,
        inputs=({"name": note, "synthetic": True},),
        columns={},
        max_length=max_length,
        max_prompt_length=max_length // 2,
        truncation="synthetic rows, cut to fit",
        kl_pairing="synthetic partners",
        seed=seed,
        eval_fraction=0.0,
        dtype=dtype,
        attn_implementation="sdpa",
        store_token_logps=store_token_logps,
    )


def length_mix(rows: int, max_len: int, seed: int = 0, min_len: int = 32) -> list[RowLengths]:
    """A realistic mix of prompt+completion lengths in [min_len, max_len] tokens.

    Total length L is log-uniform (many short rows, a long tail: mean ≈ 485 for 32–2048), and
    the prompt takes a uniform 5–50% share of it, so prompts and completions both vary widely
    and no prompt exceeds kto-precompute's default max_prompt_length (max_length // 2).
    """
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        total = int(round(math.exp(rng.uniform(math.log(min_len), math.log(max_len)))))
        prompt = max(2, min(total // 2, int(round(rng.uniform(0.05, 0.5) * total))))
        out.append(RowLengths(prompt, max(2, total - prompt)))
    return out


def kl_partners(n: int, seed: int = 0) -> list[int]:
    """Row i's KL partner, from kto-precompute's own pairing (`kto.precompute.plan`): every
    generated row has its own prompt and completion, so this is its seeded derangement."""
    from kto.precompute.plan import kl_partners as pair

    rows = list(range(n))
    return pair(rows, rows, [str(i) for i in rows], seed).partner


def mix_sequences(mix: list[RowLengths], vocab_size: int, max_len: int, seed: int = 0):
    """Token ids for 2 sequences per row, as kto-precompute scores them: (prompt, completion) and
    (prompt, partner's completion cut to max_len − prompt). Returns prompts, completions, keys."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(FIRST_WORD_ID, vocab_size, (n,), generator=g).tolist()

    prompts = [ids(r.prompt) for r in mix]
    completions = [ids(r.completion) for r in mix]
    partner = kl_partners(len(mix), seed)
    kl = [completions[partner[i]][: max_len - len(prompts[i])] for i in range(len(mix))]
    keys = [(i, 0) for i in range(len(mix))] + [(i, 1) for i in range(len(mix))]
    return prompts * 2, completions + kl, keys


def mix_lengths(mix: list[RowLengths], max_len: int, seed: int = 0) -> tuple[list[int], list[tuple[int, int]]]:
    """Lengths and keys of the 2 sequences per row of `mix_sequences`, without making the ids."""
    partner = kl_partners(len(mix), seed)
    kl = [min(max_len, r.prompt + mix[partner[i]].completion) for i, r in enumerate(mix)]
    keys = [(i, 0) for i in range(len(mix))] + [(i, 1) for i in range(len(mix))]
    return [r.prompt + r.completion for r in mix] + kl, keys


def pipeline_sequences(data: Path, tokenizer, max_length: int, max_prompt_length: int, seed: int = 0):
    """Main and KL sequences as kto-precompute forms them for one shard: its tokenizing
    (`tokenize_example`, prompts cut there), then each row's prompt with a seeded partner's completion cut to fit
    (the same shape as its KL pairing: a derangement; the partner choice itself may differ)."""
    from kto.precompute.inputs.records import iter_examples
    from kto.precompute.plan import Truncation
    from kto.precompute.tokenize import leading_bos_id, tokenize_example

    rule = Truncation(max_length, max_prompt_length, leading_bos_id(tokenizer))
    rows = [r for r in (tokenize_example(ex, tokenizer, truncation=rule) for ex in iter_examples([data])) if r is not None]
    partner = kl_partners(len(rows), seed)
    cut = [rule.apply(r.prompt_ids, r.completion_ids, rows[partner[i]].completion_ids) for i, r in enumerate(rows)]
    prompts = [c.prompt_ids.tolist() for c in cut]
    completions = [c.completion_ids.tolist() for c in cut]
    kl = [c.kl_completion_ids.tolist() for c in cut]
    keys = [(r.example.id, 0) for r in rows] + [(r.example.id, 1) for r in rows]
    return prompts * 2, completions + kl, keys


def paired_sequences(rows: int, max_len: int, vocab_size: int, seed: int = 0):
    """rows/2 prompts, each with a chosen and a rejected answer: prompt 60-85 % of a sequence,
    read as a paired file (one desirable and one undesirable row per pair)."""
    rng = random.Random(seed)
    words = lambda n: " ".join(f"w{rng.randrange(FIRST_WORD_ID, vocab_size)}" for _ in range(max(n, 1)))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "paired.jsonl"
        with open(data, "w") as f:
            for _ in range(rows // 2):
                total = int(np.exp(rng.uniform(np.log(256), np.log(max_len))))
                prompt = int(total * rng.uniform(0.6, 0.85))
                f.write(
                    json.dumps(
                        {
                            "prompt": words(prompt - 1),
                            "chosen": " " + words(total - prompt - 1),
                            "rejected": " " + words(int((total - prompt) * rng.uniform(0.5, 1.5)) - 1),
                        }
                    )
                    + "\n"
                )
        sequences = pipeline_sequences(data, build_tokenizer(vocab_size), max_len, max_len * 7 // 8, seed)
    return sequences, PAD_ID


def versions(device: torch.device) -> dict:
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    else:
        model = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
        info["device"] = f"CPU ({model}, {torch.get_num_threads()} threads)"
    # Other processes on a shared CPU slow every figure down: record how busy it was.
    info["load_average_1m"] = os.getloadavg()[0]
    return info


def describe(info: dict) -> str:
    return (
        f"{info['device']} | torch {info['torch']} | transformers {info['transformers']} | "
        f"load average {info['load_average_1m']:.2f} | {time.strftime('%Y-%m-%d %H:%M')}"
    )


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def fmt(value) -> str:
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def print_table(title: str, rows: list[dict]) -> None:
    """Rows of dicts as an aligned text table (columns = union of keys, in first-seen order)."""
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


class OneProcess:
    """What kto.train.step asks of an accelerate.Accelerator (forward_backward, optimizer_step), for
    one process without DDP: bench_train_step and bench_train_sharing."""

    num_processes = 1

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
