"""kto-precompute, end to end: read → tokenize → stage → split → pair → score → write.

Tokenized rows are spilled to a staging file in --out (staging.py) and read back one shard at a
time, so memory does not grow with the number of rows.

The stages live in their own modules: inputs/, tokenize.py and staging.py (read → tokenize → stage),
plan.py (drop → split → pair on the KL cycle → count; then each shard's rows cut behind
their prompts), output.py (what --out may hold, claimed under its lock); this module runs
them in order, scores and writes each shard (below: a split's pending shards scored with the
reference model and written one at a time, journal first, then the atomic rename, and the
manifest's scoring counts, planned per shard so they do not depend on which shards a resumed
run scored) and writes the manifests.

Each arrow is a function testable alone. Processes (accelerate) only matter at the edges: every
process reads the whole dataset, tokenizes every N-th example and gathers the rest, pairs
identically (deterministic under the seed), then scores only the shards whose index ≡ its rank
(mod world size). Shard contents are therefore a pure function of the data and the content configuration, whatever the number
of processes, and the main process writes one manifest over all of them once everyone is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kto.formats import schema as S
from kto.formats.atomic import atomic_dir
from kto.formats.cache import ArrowFile
from kto.formats.compute.identity import model_identity, tokenizer_identity
from kto.formats.compute.load_options import check_attention_implementation, check_device_map
from kto.formats.compute.loading import load_completion_logps, load_tokenizer
from kto.formats.compute.logprob import input_device
from kto.formats.compute.numerics import Numerics, parse_numerics
from kto.formats.compute.scoring import default_batch_tokens, plan_scoring, score_sequences
from kto.formats.compute.shared_prefix import sharing_refusal
from kto.formats.compute.sources import resolve_source
from kto.formats.compute.weights_check import checked_source
from kto.formats.errors import InputError, log, on_main
from kto.formats.hub import create_push_repo
from kto.formats.launch_agreement import check_launch_agreement, launch_settings, versions
from kto.formats.manifest import CacheContent, Counts, Manifest, ShardEntry, fingerprint_of
from kto.formats.memory import MemoryMeter, peak_words
from kto.formats.shards import Journal, sha256_file, shard_table, shard_tags
from kto.precompute.inputs.examples import READING_RULE
from kto.precompute.inputs.hub import one_run
from kto.precompute.inputs.records import RowSample, input_identity, input_names, iter_examples, same_rows_key

from .config import PrecomputeConfig
from .output import NEXT, aside_outs, begin_aside, claim_out, finished_as_before, recorded_batch_tokens, remove_staging, shard_layout, swap_in, write_card
from .plan import EVAL_SPLIT_RULE, PAIRING_RULE, TRUNCATION_RULE, Split, Truncation, build_splits, check_positions, check_vocabulary, shard_values
from .progress import Progress
from .staging import completions_without_eos, stage, staging_files, staging_path, staging_schema
from .templates import ChatTemplate, load_chat_template
from .templates import install as install_template
from .tokenize import leading_bos_id, stop_ids, tokenize_example


def content_of(cfg: PrecomputeConfig, source, tokenizer_id: dict, numerics: Numerics, split: str, template: ChatTemplate = ChatTemplate()) -> CacheContent:
    """Everything that decides the numbers. Paths are left out on purpose (see manifest.py).

    Options added later (chat template, ShareGPT names) enter only when set, so a cache made
    without them keeps its fingerprint."""
    content = {
        "format_version": S.FORMAT_VERSION,
        "split": split,
        "model": model_identity(source),
        "tokenizer": tokenizer_id,
        # File names too: rows without an `id` column are named `file:row`.
        "inputs": [input_identity(p) for p in cfg.data],
        "columns": cfg.columns.as_dict(),
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.prompt_cap,
        "truncation": TRUNCATION_RULE,
        "kl_pairing": PAIRING_RULE,
        "reading": READING_RULE,
        "seed": cfg.seed,
        "eval_fraction": cfg.eval_fraction,
        "dtype": numerics.name,
        "attn_implementation": cfg.attn_implementation,
        "store_token_logps": cfg.store_token_logps,
        **template.content(),
    }
    if not cfg.sharegpt.is_default():
        content["sharegpt"] = cfg.sharegpt.as_dict()
    if cfg.alpaca is not None:  # alpaca rows (a --dataset entry); absent otherwise, as before
        content["alpaca"] = cfg.alpaca.as_dict()
    if cfg.eval_fraction > 0:  # the split rule decides which rows each cache holds
        content["eval_split"] = EVAL_SPLIT_RULE
    if cfg.eval_data:  # both caches name the held-out inputs: they are one pair
        content["eval_split"] = EVAL_DATA_RULE
        content["eval_inputs"] = [input_identity(p) for p in cfg.eval_data]
        _refuse_held_out_in_data(content["inputs"], content["eval_inputs"])
    if cfg.max_samples is not None:
        content["max_samples"] = {"rows_per_input": cfg.max_samples, "rule": SAMPLE_RULE}
        if any(n > 1 for n in cfg.sample_spans):  # a folder entry is one dataset: other rows drawn
            content["max_samples"].update(rule=SPAN_SAMPLE_RULE, spans=list(cfg.sample_spans))
        if cfg.eval_data:  # drawn from a stream of their own since 2026-12-06: other rows than before
            content["max_samples"]["rule"] += HELD_OUT_SAMPLE_RULE
    return CacheContent(**content)  # every key a field of formats/manifest.py CacheContent


def _refuse_held_out_in_data(inputs: list[dict], eval_inputs: list[dict]) -> None:
    """An --eval-data input with the bytes (or the dataset split) of a --data one would evaluate
    on the rows trained on; a link or another spelling of its path is refused earlier (api.py)."""
    for held in eval_inputs:
        for train in inputs:
            if same_rows_key(held) == same_rows_key(train):
                raise InputError(f"--eval-data {held['name']}: the same rows as --data {train['name']} (same bytes); evaluation would score rows trained on")


SAMPLE_RULE = "per input: reservoir sample (numpy default_rng([seed, input index])), file order kept"
SPAN_SAMPLE_RULE = (
    "per dataset (spans: consecutive inputs, a folder entry's files): reservoir sample over its inputs' rows in order"
    " (numpy default_rng([seed, its first input's index])), that order kept"
)
HELD_OUT_SAMPLE_RULE = "; --eval-data inputs: default_rng([seed, input index, 1])"
EVAL_DATA_RULE = "every row of eval_inputs, KL-paired among themselves; every row of inputs is train"

# Content that does not change a staged token id: a run differing only in these reuses staging.
# Prompts are staged already cut (tokenize.py), so the limits and the rule are part of the key:
# a resumed run with other limits must never reuse another run's staged prompts.
_NOT_STAGED = (
    "split",
    "model",
    "seed",
    "eval_fraction",
    "eval_split",
    "eval_inputs",
    "dtype",
    "attn_implementation",
    "store_token_logps",
    "kl_pairing",
)


def stage_rows(cfg: PrecomputeConfig, tokenizer, template: ChatTemplate, content: CacheContent, state=None, held_out: Path | None = None) -> Path:
    """Read and tokenize every input row into OUT/.staging-KEY.arrow (or reuse it); `held_out`
    (the train rows' staging file): the rows of --eval-data, into a staging file of their own."""
    # The staged columns are part of the key: a file staged by a kto that staged other columns
    # (another row declaration) is never reused.
    staged = {k: v for k, v in content.to_json().items() if k not in _NOT_STAGED}
    data, expected, flag = (cfg.eval_data, content.eval_inputs, "--eval-data") if held_out else (cfg.data, content.inputs, "--data")
    if held_out:
        staged.update(inputs=[dict(i) for i in expected], held_out=True)
    keep = (held_out,) if held_out else ()
    if cfg.max_samples is not None:
        staged["seed"] = cfg.seed  # the seed picks the sampled rows, hence the staged ones
    key = fingerprint_of({**staged, "staging_schema": staging_schema().to_string(show_schema_metadata=False)})

    truncation = Truncation(cfg.max_length, cfg.prompt_cap, leading_bos_id(tokenizer))

    def tokenize_one(ex):
        return tokenize_example(ex, tokenizer, template, truncation)

    path = staging_path(cfg.out, key)
    # Every rank takes the main process's answer, given before any rank stages: a rank that
    # looked itself could find the file the main process had just made of an empty input (no
    # block to gather), skip stage()'s closing barrier, and leave the ranks at different
    # barriers (gloo's "Connection closed by peer" traceback on the main process).
    staged_before = path.is_file() if state is None else on_main(path.is_file, state)
    if staged_before:
        return path  # a resumed run: staged by a run of the same inputs and configuration
    parsed: list[dict] = []
    spans = () if held_out else cfg.sample_spans  # --dataset's entries are --data's
    sample = RowSample(cfg.max_samples, cfg.seed, spans, held_out=bool(held_out)) if cfg.max_samples is not None else None
    # Names over both flags' files, so that a held-out file named as a train file (eval/data.json
    # beside train/data.json) gives its rows other ids.
    names = input_names((*cfg.data, *cfg.eval_data))
    names = names[len(cfg.data) :] if held_out else names[: len(cfg.data)]
    rows = iter_examples(data, cfg.columns, cfg.sharegpt, parsed, cfg.alpaca, sample, names)
    stage(rows, tokenize_one, path, state, keep, what="--eval-data" if held_out else "--data")
    # The fingerprint hashed each file before reading; its rows were parsed from bytes hashed
    # again in the same read (records.read_file). Equal, or the file changed in between.
    for before, read in zip(expected, parsed):
        if before != read:
            if state is None or state.is_main_process:
                path.unlink(missing_ok=True)
            raise InputError(
                f"{flag} {read['name']}: changed while it was being read (sha256 {before.get('sha256', '?')[:16]}… "
                f"before, {read.get('sha256', '?')[:16]}… as parsed); run again"
            )
    return path


def run_precompute(cfg: PrecomputeConfig, on_scored: Callable[[ScoredShard], None] | None = None) -> list[Manifest]:
    from accelerate import PartialState

    # accelerate only starts a gloo process group for several CPU processes when told cpu=True.
    state = PartialState(cpu=not torch.cuda.is_available())
    with contextlib.ExitStack() as held:  # the --out lock, released however the run ends
        held.enter_context(one_run())  # one hub commit per run: identity, staging key and read agree
        return _run(cfg, state, held, on_scored)


def _launch_settings(cfg: PrecomputeConfig, tokenizer_id: dict[str, str], template: ChatTemplate) -> dict[str, str]:
    """What each process of a launch compares with the others' (formats/launch_agreement.py):
    the flags (paths left out: each machine may keep its files elsewhere), the versions, and
    what the paths hold that decides the token ids: --model's tokenizer and --chat-template's text."""
    chat = hashlib.sha256(template.text.encode()).hexdigest() if template.text is not None else "the tokenizer's"
    tokenizer = {f"tokenizer {part}": digest for part, digest in tokenizer_id.items()}
    return launch_settings(cfg, text_paths=("model",), extra={**versions(), **tokenizer, "chat template": chat})


def _with_batch_budget(cfg: PrecomputeConfig, device: torch.device) -> PrecomputeConfig:
    """--batch-tokens left out: the budget of the cache being resumed in --out (under --overwrite,
    of the build it left unfinished in .next/), else the device's."""
    if cfg.batch_tokens is not None:
        return cfg
    resumed = recorded_batch_tokens(cfg.out / NEXT if cfg.overwrite else cfg.out)  # --overwrite: its unfinished build in .next/
    return replace(cfg, batch_tokens=resumed or default_batch_tokens(device))


def _with_sharing_the_model_allows(cfg: PrecomputeConfig, skeleton: Callable[[], torch.nn.Module], state) -> PrecomputeConfig:
    """Prefix sharing off, said in one line, for a model whose layers would mix a pack's
    completions (shared_prefix.py sharing_refusal): decided from its config before the layout is
    recorded, so the manifest says what ran and a rerun decides the same."""
    if not cfg.prefix_sharing:
        return cfg
    reason = sharing_refusal(skeleton)
    if reason is None:
        return cfg
    if state.is_main_process:
        log(f"note: prefix sharing off: {reason}; each sequence is scored whole (the same numbers, no tokens saved)")
    return replace(cfg, prefix_sharing=False)


def _run(cfg: PrecomputeConfig, state, held: contextlib.ExitStack, on_scored=None) -> list[Manifest]:
    started, begun = time.perf_counter(), time.time()
    source = resolve_source(cfg.model)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    template = load_chat_template(cfg.chat_template, cfg.chat_template_kwargs)
    tokenizer_id = tokenizer_identity(tokenizer)  # --model's own: what kto-train checks against
    check_launch_agreement(lambda: _launch_settings(cfg, tokenizer_id, template), state)  # before a rank stages rows cut by its own flags
    install_template(tokenizer, template)
    numerics = parse_numerics(cfg.dtype, state.device)
    cfg = _with_batch_budget(cfg, state.device)
    # Before --out is claimed: the weight files against config.json (its layer count from the
    # headers, then the names on the meta-device skeleton `source` now carries: the one skeleton
    # of this run, which the checks below and the model's load share).
    source = checked_source(source, trust_remote_code=cfg.trust_remote_code)
    check_attention_implementation(source, cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code)
    check_device_map(cfg.device_map)
    skeleton = source.skeleton
    cfg = _with_sharing_the_model_allows(cfg, skeleton, state)
    layout = shard_layout(cfg.rows_per_shard, cfg.batch_tokens, cfg.prefix_sharing)
    outs = {"train": cfg.out, **({"eval": cfg.out / S.EVAL_DIR} if cfg.eval_fraction > 0 or cfg.eval_data else {})}
    contents = {name: content_of(cfg, source, tokenizer_id, numerics, name, template) for name in outs}
    fingerprints = {name: content.fingerprint for name, content in contents.items()}
    if (finished := _finished_before(cfg, outs, contents, layout, state, started)) is not None:
        return finished
    created = not cfg.out.exists()
    stale = claim_out(cfg, outs, contents, layout, state, held)
    build = cfg.out / NEXT if stale else cfg.out  # --overwrite builds aside; the old cache stays whole until swap_in
    staged, splits = _stage_and_split(cfg, tokenizer, template, contents["train"], state, created, skeleton, build)
    if stale:  # the rows read and checked: the new cache's journal in .next/
        begin_aside(cfg.out, aside_outs(cfg.out, outs), contents, layout, state)
    if state.is_main_process:
        warn_without_stop(staged, tokenizer, source, template)  # the train rows say it for the data
    warn_one_class(splits)
    todo = {s.name: pending_shards(s, fingerprints[s.name], layout, cfg.rows_per_shard, state) for s in splits}
    complete = say_resumed(splits, todo, cfg.rows_per_shard, state)
    meter = MemoryMeter()
    meter.sample()  # the rows read, checked and staged
    scorer = _load_scorer(source, numerics, state, cfg, splits, tokenizer) if any(todo.values()) else None
    for s in splits:
        score_and_write(s, todo[s.name], scorer, tokenizer, cfg, fingerprints[s.name], layout, state, numerics, s.staged, on_scored, meter)
        state.wait_for_everyone()
    ordered = _write_manifests(splits, contents, layout, cfg, state, tokenizer)
    if state.is_main_process:
        if stale:
            swap_in(cfg.out)  # the new cache is complete: the old one goes, the new one's entries are renamed in
        write_card(cfg.out, ordered)  # last, after the manifests: a finished cache has its card
        for path in {s.staged for s in splits}:
            path.unlink()  # the cache is complete; a rerun re-stages (and skips every shard)
        _summary(ordered, time.perf_counter() - started, meter, _unless_rewritten(complete, splits, begun))
    return ordered


def _load_scorer(source, numerics: Numerics, state, cfg: PrecomputeConfig, splits: list[Split], tokenizer):
    """The reference model, loaded once some shard is left to score."""
    scorer = load_completion_logps(
        source,
        dtype=numerics.weights,
        device=state.device,
        device_map=cfg.device_map,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        chunk_size=cfg.chunk_size,
    )
    _check_rows_fit(scorer.lm, splits, tokenizer, cfg)  # again on the loaded model, for one its skeleton could not show
    return scorer


def _finished_before(cfg: PrecomputeConfig, outs: dict[str, Path], contents: dict, layout: dict, state, started: float) -> list[Manifest] | None:
    """A rerun on a cache this run would leave as it is (output.finished_as_before): said
    complete, with its summary, writing nothing (no lock, no staging), so that it also works
    where --out is read-only or its disk full. --overwrite always rebuilds."""
    if cfg.overwrite:
        return None
    finished = on_main(lambda: finished_as_before(outs, contents, layout, state.num_processes, _info(cfg, state)), state)
    if finished is not None and cfg.push_to_hub:  # the repo met as the locked path meets it: a refusal in one line, before the summary
        on_main(lambda: create_push_repo(cfg.push_to_hub, dataset=True, private=cfg.hub_private), state)
    if finished is not None and state.is_main_process:
        meter = MemoryMeter()
        meter.sample()
        _summary(finished, time.perf_counter() - started, meter, complete_line([(m.content.split, len(m.shards), m.counts.rows) for m in finished]))
    return finished


def _unless_rewritten(complete: str | None, splits: list[Split], begun: float) -> str | None:
    """say_resumed's "already complete" line, unless a shard was written since the run began:
    another process checks the bytes of its own shards and rebuilds a damaged one, which the main
    process, counting them as kept from the journal, did not see."""
    shards = [p for s in splits for p in s.out.glob(S.SHARD_GLOB)]
    return None if complete is None or any(p.stat().st_mtime >= begun for p in shards) else complete


def _write_manifests(splits: list[Split], contents: dict, layout: dict, cfg: PrecomputeConfig, state, tokenizer) -> list[Manifest]:
    """Each split's manifest (the main process writes them, _finish), in `splits`' order. Every
    split is scored before this, and --out's own manifest is written last: a run stopped while
    scoring CACHE/eval must not leave CACHE looking finished."""
    manifests = {}
    for s in sorted(splits, key=lambda s: s.name == "train"):  # train's folder holds eval/
        manifest = Manifest(
            content=contents[s.name],
            layout={**layout, "num_processes": state.num_processes},
            counts=with_scoring_counts(s, cfg, s.staged),
            shards=[],
            info=_info(cfg, state),
        )
        if state.is_main_process:
            manifest = _finish(s, manifest, tokenizer, cfg.rows_per_shard)
        manifests[s.name] = manifest
    state.wait_for_everyone()
    return [manifests[s.name] for s in splits]


def _stage_and_split(
    cfg: PrecomputeConfig,
    tokenizer,
    template: ChatTemplate,
    content: CacheContent,
    state,
    created: bool,
    skeleton: Callable[[], torch.nn.Module],
    build: Path,
) -> tuple[Path, list[Split]]:
    """Stage the rows (and --eval-data's), build the splits and check them against --model's
    `skeleton` (_check_rows_fit), each split's folder under `build` (--out, or --overwrite's
    `.next/` in it); then the --push-to-hub repo created or checked writable (before the model
    loads, after the rows: a refused row leaves no empty repo); on bad input, remove an --out
    this run created (nothing half-written is left behind), or the staging files this run added
    beside the cache already there (the old one an --overwrite replaces, or a finished or
    unfinished one rerun: left as it was, an unfinished run's staging file included), and re-raise."""
    staging_before = staging_files(cfg.out)
    try:
        staged = stage_rows(cfg, tokenizer, template, content, state)
        held_out = stage_rows(cfg, tokenizer, template, content, state, held_out=staged) if cfg.eval_data else None
        splits = build_splits(cfg, staged, leading_bos_id(tokenizer), main=state.is_main_process, held_out=held_out, out=build)
        lm = _built(skeleton)
        if lm is not None:  # a model that cannot be built here is checked once loaded
            _check_rows_fit(lm, splits, tokenizer, cfg)
        if cfg.push_to_hub:  # the rows passed, the model not loaded: a refusal here removes --out as a bad row's does
            on_main(lambda: create_push_repo(cfg.push_to_hub, dataset=True, private=cfg.hub_private), state)
        return staged, splits
    except InputError:
        # Every rank reads the staging file in --out (the id check, the index): the main process
        # removing --out while another rank still read it killed that rank with a
        # FileNotFoundError traceback. So all ranks meet here first. This cannot hang: every
        # InputError of this phase is raised on every rank alike, since each rank reads the same
        # rows and staging file and makes the same checks, and a row refused at tokenization
        # stops all ranks with one message (staging.py `_tokenize_block`). (An input file that
        # changes between two ranks' reads of it is the one check a rank can fail alone.)
        state.wait_for_everyone()
        if created and state.is_main_process:
            shutil.rmtree(cfg.out, ignore_errors=True)  # bad input: leave nothing behind
        elif state.is_main_process:  # an --overwrite, or a rerun into a cache: the folder as it was found
            remove_staging(cfg.out, keep=staging_before)
        raise


def _built(skeleton: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """The model `skeleton` builds on the meta device, or None when its config cannot build one."""
    try:
        return skeleton()
    except InputError:
        return None


def _check_rows_fit(lm: torch.nn.Module, splits: list[Split], tokenizer, cfg: PrecomputeConfig) -> None:
    """Every token id of the rows has an embedding row in `lm` and every sequence, as cut, a
    position it scores as one function of its tokens (a learned table, or a rotary range: position_limit) (plan.py check_vocabulary, check_positions). Shapes only:
    `lm` may be the meta-device skeleton, so the refusal comes while this run's --out can still be
    removed, and the rerun the message advises needs no --overwrite."""
    for s in splits:
        check_vocabulary(s.staged, [s], lm, tokenizer, cfg.model)
        check_positions(s, lm, cfg.max_length)


def warn_one_class(splits: list[Split]) -> None:
    for s in splits:
        if s.counts.desirable == 0 or s.counts.undesirable == 0:
            log(
                f"warning: the {s.name} split is all {'desirable' if s.counts.undesirable == 0 else 'undesirable'} ({s.counts.rows} rows); KTO learns from both classes"
            )


def warn_without_stop(staged: Path, tokenizer, source, template: ChatTemplate) -> None:
    """One line when completions never reach a stop token (staging.completions_without_eos)."""
    stops = stop_ids(tokenizer, None if source.gguf_file else source.directory)
    missing, kept = completions_without_eos(staged, stops, tokenizer.decode) if stops else (0, 0)
    if missing:
        log(
            f"warning: {missing} of {kept} completions never reach the EOS token {tokenizer.eos_token!r}, so the policy is not taught to stop; "
            f"{template.name} closes the assistant's turn without it (end the turn with {{{{ eos_token }}}})"
        )


def _finish(s: Split, manifest: Manifest, tokenizer, rows_per_shard: int) -> Manifest:
    """Main process: check every shard against the journal, copy the tokenizer, write the manifest last.

    The manifest's sha256s are the ones recorded when the shards were written; a shard whose
    bytes no longer match them stops the run instead of being hashed into the manifest.
    """
    journal, fingerprint = Journal(s.out), manifest.fingerprint
    layout = {k: manifest.layout[k] for k in shard_layout(1, 1, False)}
    entries = []
    for k, (a, b) in enumerate(shard_slices(len(s.rows), rows_per_shard)):
        path = s.out / S.shard_name(k)
        recorded = journal.recorded_sha(path.name, fingerprint, layout)
        if not path.is_file() or recorded is None:
            raise RuntimeError(f"{path}: missing, or not in the journal, after every process finished")
        if (actual := sha256_file(path)) != recorded:
            raise InputError(
                f"{path}: sha256 {actual[:16]}… is not the {recorded[:16]}… recorded when it was written; "
                "it changed during the run: run the same command again to rebuild it"
            )
        entries.append(ShardEntry(path.name, b - a, recorded))
    tok_dir = s.out / S.TOKENIZER_DIR
    if not journal.owns_tokenizer(tok_dir):  # prepare_out_dir refused a tokenizer/ not ours
        with atomic_dir(tok_dir) as tmp:
            tokenizer.save_pretrained(tmp)
            journal.record_tokenizer(tmp)  # before the rename: what appears was recorded first
    manifest = replace(manifest, shards=entries)
    manifest.write(s.out)
    return manifest


def _info(cfg: PrecomputeConfig, state) -> dict:
    import transformers

    try:
        version = importlib.metadata.version("kto-offline")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    # --eval-data's paths only when given: a manifest without them keeps its (pinned) bytes.
    eval_paths = {"eval_data_paths": [str(p) for p in cfg.eval_data]} if cfg.eval_data else {}
    return {
        "model_path": str(cfg.model),
        "data_paths": [str(p) for p in cfg.data],
        **eval_paths,
        "kto_version": version,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(state.device.type),
    }


def _summary(manifests: list[Manifest], seconds: float, meter: MemoryMeter, complete: str | None = None) -> None:
    """The run's closing lines: `complete` (say_resumed's line for a rerun on a finished cache)
    first, then each split's counts and the time and peak memory."""
    if complete:
        log(complete)
    for m in manifests:
        c = m.counts
        saved = f" ({c.prefix_tokens_saved} saved by prefix sharing, of {c.represented_tokens})" if m.layout.get("prefix_sharing") else ""
        log(
            f"{m.content.split}: {c.rows} rows ({c.desirable} desirable, {c.undesirable} undesirable), "
            f"{c.dropped} dropped, {c.truncated} truncated ({c.prompt_truncated} prompts: {c.prompt_cut_by_turns} by turns, "
            f"{c.prompt_cut_mid_text} mid-text; {c.completion_truncated} completions), "
            f"{c.same_prompt_kl_pairs} same-prompt KL pairs, {c.scored_tokens} tokens scored{saved}, {len(m.shards)} shards"
        )
    log(f"done in {seconds:.1f} s, peak memory {peak_words(meter, 'anonymous memory, sampled after every batch')}")


# ---- each shard: filled from staging, scored, written (journal first) ------------------------


@dataclass(frozen=True)
class ScoredShard:
    """What scoring one shard did, for tools that time it (`run_precompute(on_scored=...)`)."""

    scorer: object
    """The CompletionLogps used (its `.lm` for FLOP counts)."""
    lengths: list[int]
    """prompt + completion length of every sequence scored (main and KL)."""
    keys: list
    completion_tokens: int
    seconds: float
    """Wall time of the scoring, the CUDA queue drained at both ends."""


def shard_slices(n_rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows_per_shard, n_rows)) for a in range(0, n_rows, rows_per_shard)]


def pending_shards(s: Split, fingerprint: str, layout: dict, rows_per_shard: int, state) -> list[int]:
    """This process's shards (index ≡ rank mod world) that are not already finished on disk.

    Finished means: byte for byte what this configuration recorded in the journal when it wrote
    the shard. A shard that changed since (a flipped byte, a copy from elsewhere) is scored
    again; trusting its footer tags and re-hashing it would launder it into the manifest.
    """
    mine = range(state.process_index, len(shard_slices(len(s.rows), rows_per_shard)), state.num_processes)
    journal, todo = Journal(s.out), []
    for k in mine:
        name = S.shard_name(k)
        if journal.is_done(name, fingerprint, layout):
            continue
        if (s.out / name).exists():
            log(f"{s.out / name}: not the shard this configuration recorded when it wrote it (sha256 differs, or no record); rebuilding it")
        todo.append(k)
    return todo


def say_resumed(splits: list[Split], todo: dict[str, list[int]], rows_per_shard: int, state) -> str | None:
    """Main process: one line per split that an earlier run left partly scored, saying what is
    kept (a rerun otherwise showed only a bar starting at 0 of fewer rows). Returns the line to
    print before the summary of a rerun on a finished cache (every split's manifest there and all
    its shards kept), whose summary counts nothing this run scored; else None. Another process's
    shards count as kept when the journal records them and they exist: their owner checks their
    bytes (`pending_shards`) and says it when it rebuilds one."""
    if not state.is_main_process:
        return None
    complete = []
    for s in splits:
        slices = shard_slices(len(s.rows), rows_per_shard)
        journal, mine = Journal(s.out), todo[s.name]
        kept = [k for k in range(len(slices)) if k not in mine and (k % state.num_processes == state.process_index or _recorded(journal, S.shard_name(k)))]
        rows = sum(slices[k][1] - slices[k][0] for k in kept)
        if 0 < len(kept) < len(slices):
            log(f"resuming: {len(kept)} of {len(slices)} {s.name} shards ({rows:,} rows) kept from an earlier run")
        elif kept and (s.out / S.MANIFEST_NAME).is_file():  # finished before: not a run killed before its manifest
            complete.append((s.name, len(kept), rows))
    return complete_line(complete) if len(complete) == len(splits) else None


def complete_line(splits: list[tuple[str, int, int]]) -> str:
    """The line before the summary of a rerun that scored nothing: (split, shards, rows) each."""
    parts = [f"the {n} {name} shard{'s' if n > 1 else ''} ({rows:,} rows)" for name, n, rows in splits]
    return f"already complete, nothing scored: {' and '.join(parts)} were finished by an earlier run; the summary below is the cache's"


def _recorded(journal: Journal, name: str) -> bool:
    return (journal.out / name).is_file() and journal.shard(name) is not None


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _shard_sequences(values: dict) -> tuple[list, list, list]:
    """A shard's work: two sequences per row (main, KL), keyed (id, 0) and (id, 1).

    Main and KL sequences share the batches, and with prefix sharing every sequence of the
    shard with the same prompt ids (a row's own two, the pairs of a paired dataset, a repeated
    system prompt) is scored after one pass over that prompt. Grouping stays inside the shard,
    so each shard remains a pure function of its rows and the configuration.
    """
    prompts = values[S.PROMPT_IDS].to_list() * 2
    completions = values[S.COMPLETION_IDS].to_list() + values[S.KL_COMPLETION_IDS].to_list()
    keys = [(i, 0) for i in values[S.ID]] + [(i, 1) for i in values[S.ID]]
    return prompts, completions, keys


def score_values(scored, n: int, store_token_logps: bool) -> dict:
    """The SCORE columns of a shard's n rows from its 2n scored sequences (main, then KL)."""
    return {
        S.REF_LOGP: scored.sums[:n],
        S.REF_TOKEN_LOGPS: scored.token_logps[:n] if store_token_logps else None,
        S.REF_KL_LOGP: scored.sums[n:],
        S.REF_KL_TOKEN_LOGPS: scored.token_logps[n:] if store_token_logps else None,
    }


def with_scoring_counts(s: Split, cfg: PrecomputeConfig, staged: Path) -> Counts:
    """Tokens represented, scored and saved: planned per shard, the same whichever shards this
    run scored (a resumed run skips some), so the manifest stays byte-identical."""
    represented = scored = 0
    for a, b in shard_slices(len(s.rows), cfg.rows_per_shard):
        with ArrowFile(staged) as reader:
            values = shard_values(reader, s.rows[a:b], s.partners[a:b], s.truncation)
        plan = plan_scoring(*_shard_sequences(values), share_prefixes=cfg.prefix_sharing)
        represented, scored = represented + plan.represented_tokens, scored + plan.computed_tokens
    return replace(s.counts, represented_tokens=represented, scored_tokens=scored, prefix_tokens_saved=represented - scored)


def score_and_write(
    s: Split, shard_ids, scorer, tokenizer, cfg, fingerprint, layout, state, numerics: Numerics, staged: Path, on_scored=None, meter: MemoryMeter | None = None
) -> None:
    """Score and write this process's pending shards of `s`; `meter` sampled after every batch
    and shard (the run's peak memory, `_summary`)."""
    meter = meter or MemoryMeter()

    def on_batch(n: int, tokens: int) -> None:
        progress.update(n / 2, tokens)  # n sequences: a row's main and KL are two
        meter.sample()

    if not shard_ids:
        return
    s.out.mkdir(parents=True, exist_ok=True)
    slices = shard_slices(len(s.rows), cfg.rows_per_shard)
    total_rows = sum(slices[k][1] - slices[k][0] for k in shard_ids)
    with Progress(total_rows, "row", desc=f"kto-precompute {s.name}", enabled=state.is_main_process) as progress:
        for k in shard_ids:
            a, b = slices[k]
            with ArrowFile(staged) as reader:  # mapped for one shard at a time: see staging.py
                values = shard_values(reader, s.rows[a:b], s.partners[a:b], s.truncation)
            prompts, completions, keys = _shard_sequences(values)
            # Under --device-map: where the embedding runs (not `lm.device`, which is `meta` when it is offloaded).
            device = state.device if cfg.device_map is None else input_device(scorer.lm)
            _sync(device)
            started = time.perf_counter()
            with numerics.context(device.type):
                scored = score_sequences(
                    scorer,
                    prompts,
                    completions,
                    keys,
                    batch_tokens=cfg.batch_tokens,
                    pad_id=tokenizer.pad_token_id,
                    device=device,
                    on_batch=on_batch,
                    share_prefixes=cfg.prefix_sharing,
                )
            if on_scored is not None:
                _sync(device)
                on_scored(
                    ScoredShard(
                        scorer, [len(p) + len(c) for p, c in zip(prompts, completions)], keys, sum(len(c) for c in completions), time.perf_counter() - started
                    )
                )
            table = shard_table({**values, **score_values(scored, len(values[S.ID]), cfg.store_token_logps)})
            Journal(s.out).write_shard(S.shard_name(k), table, shard_tags(fingerprint, layout), fingerprint, layout)
            meter.sample()
