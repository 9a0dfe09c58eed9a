"""kto-inspect verify: a good cache passes; each kind of damage is named precisely, exit 1."""

import dataclasses
import json
import os
import shutil
import struct

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from click.testing import CliRunner
from conftest import patch_shard_table

from kto.formats import schema as S
from kto.formats.manifest import ShardEntry, read_manifest
from kto.formats.shards import ShardVerifier, shard_metadata, write_shard
from kto.inspection.cli import main


@pytest.fixture
def cache(tiny_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    return out


def verify(path):
    return CliRunner().invoke(main, ["verify", str(path)])


def rewrite_shard(cache, index: int, edit) -> None:
    """Apply `edit(pydict)` to one shard, rewrite it, and record its new sha256 in the manifest,
    so only the damage under test remains."""
    manifest = read_manifest(cache)
    entry = manifest.shards[index]
    path = cache / entry.name
    table = ipc.open_file(pa.memory_map(str(path))).read_all()
    data = table.to_pydict()
    edit(data)
    sha = write_shard(path, pa.table(data, schema=S.SHARD_SCHEMA), shard_metadata(path))
    shards = list(manifest.shards)
    shards[index] = ShardEntry(entry.name, len(data[S.ID]), sha)
    dataclasses.replace(manifest, shards=shards).write(cache)


def test_good_cache_passes_and_is_left_untouched(cache):
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    result = verify(cache)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {cache}: 16 rows in 4 shards")
    assert result.stderr == ""
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before  # read-only: no stamp written


def test_tampered_shard_is_caught_even_with_a_fresh_stamp(cache):
    manifest = read_manifest(cache)
    name = manifest.shards[1].name
    path = cache / name
    stamp = ShardVerifier(cache, manifest.shard_sha256)
    stamp.verify(name)  # kto-train would now trust this shard while its stamp holds
    # Change one cached ref_logp in place, keeping size and mtime.
    table = ipc.open_file(pa.memory_map(str(path))).read_all()
    old = struct.pack("<d", table.column(S.REF_LOGP)[0].as_py())
    data = path.read_bytes()
    assert data.count(old) == 1
    st = path.stat()
    path.write_bytes(data.replace(old, struct.pack("<d", -1.0)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match="sha256"):  # the stamp's ctime moved: kto-train hashes it again
        ShardVerifier(cache, manifest.shard_sha256).verify(name)
    result = verify(cache)  # and verify never trusts a stamp
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"kto-inspect: verify: {path}: sha256 ") and "does not match the manifest" in line for line in lines)
    # The changed value no longer equals the sum of its per-token terms: named by shard, row and id.
    row_id = table.column(S.ID)[0].as_py()
    assert any(f"{path} row 1 (id {row_id!r}): ref_token_logps sum to" in line for line in lines)
    assert lines[-1] == f"kto-inspect: verify: 2 problem(s) found in {cache}"
    # stdout says it too: `verify CACHE > verify.log` held only the ok lines of the other splits
    assert f"FAILED: {cache}: 2 problem(s), listed on stderr" in result.stdout.splitlines()


def test_missing_kl_source_id(cache):
    table = ipc.open_file(pa.memory_map(str(cache / "shard-00000.arrow"))).read_all()
    gone = table.column(S.ID)[0].as_py()
    rewrite_shard(cache, 0, lambda d: d[S.ID].__setitem__(0, "renamed"))
    result = verify(cache)
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if "is not an id" in line]
    assert len(problems) == 1
    assert f"kl_source_id {gone!r} is not an id in this cache" in problems[0]


def test_duplicate_id(cache):
    first = ipc.open_file(pa.memory_map(str(cache / "shard-00000.arrow"))).read_all().column(S.ID)[0].as_py()
    rewrite_shard(cache, 2, lambda d: d[S.ID].__setitem__(1, first))
    result = verify(cache)
    assert result.exit_code == 1
    assert f"{cache / 'shard-00002.arrow'} row 2: id {first!r} appears again (first at {cache / 'shard-00000.arrow'} row 1)" in result.stderr


def test_manifest_counts_must_match_the_rows(cache):
    obj = json.loads((cache / S.MANIFEST_NAME).read_text())
    obj["counts"]["desirable"] += 1  # counts are not part of the fingerprinted content
    obj["counts"]["undesirable"] -= 1  # still adding up to counts.rows: only the shards tell
    (cache / S.MANIFEST_NAME).write_text(json.dumps(obj))
    result = verify(cache)
    assert result.exit_code == 1
    assert f"{cache / S.MANIFEST_NAME}: counts.desirable is 9, the shards hold 8" in result.stderr


def _reverse_shards(obj: dict) -> None:
    obj["shards"].reverse()


@pytest.mark.parametrize(
    "edit, message",
    [
        (_reverse_shards, "shards[0].name 'shard-00003.arrow' is not 'shard-00000.arrow'"),
        (lambda o: o["layout"].update(batch_tokens=-5), "layout.batch_tokens -5 is not a positive integer"),
        (lambda o: o["layout"].update(num_processes=0), "layout.num_processes 0 is not a positive integer"),
        (lambda o: o["layout"].update(rows_per_shard=2), "shards[0].rows 5 (shard-00000.arrow) does not fit layout.rows_per_shard 2"),
        (lambda o: o["counts"].update(scored_tokens=1), "counts.scored_tokens + counts.prefix_tokens_saved is"),
        (lambda o: o["counts"].update(represented_tokens=5), "2 × counts.prompt_tokens + counts.completion_tokens + counts.kl_completion_tokens is"),
    ],
)
def test_a_manifest_whose_layout_or_counts_do_not_add_up_is_refused(cache, edit, message):
    """Seen in an attack: shard entries listed in reverse order passed verify and trained on
    another order (rows are stored in KL-cycle order); a batch_tokens of -5, 0 processes, a
    rows_per_shard the shards do not hold and token counts that do not add up passed too."""
    obj = json.loads((cache / S.MANIFEST_NAME).read_text())
    edit(obj)
    (cache / S.MANIFEST_NAME).write_text(json.dumps(obj))
    result = verify(cache)
    assert result.exit_code == 1 and message in result.stderr, result.stderr


def test_edited_manifest_content(cache):
    obj = json.loads((cache / S.MANIFEST_NAME).read_text())
    obj["content"]["seed"] = 99
    (cache / S.MANIFEST_NAME).write_text(json.dumps(obj))
    result = verify(cache)
    assert result.exit_code == 1 and "fingerprint does not match its content" in result.stderr


def test_missing_and_stray_shards(cache):
    (cache / "shard-00003.arrow").rename(cache / "shard-00007.arrow")
    result = verify(cache)
    assert result.exit_code == 1
    assert f"{cache / 'shard-00003.arrow'}: listed in the manifest but missing" in result.stderr
    assert f"{cache / 'shard-00007.arrow'}: shard file not listed in the manifest" in result.stderr


def test_wrong_schema_and_row_count(cache):
    path = cache / "shard-00001.arrow"
    table = ipc.open_file(pa.memory_map(str(path))).read_all()
    with ipc.new_file(str(path), table.drop_columns([S.TRUNCATED]).schema) as w:
        w.write_table(table.drop_columns([S.TRUNCATED]))
    result = verify(cache)
    assert result.exit_code == 1
    assert f"{path}: missing column 'truncated'" in result.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.append_column("note", pa.array(["x"] * t.num_rows)), "extra column(s) 'note'"),
        (lambda t: t.select(list(reversed(t.column_names))), "columns in the order truncated, ref_kl_token_logps"),
    ],
    ids=["extra-column", "column-order"],
)
def test_shard_with_an_extra_column_or_another_order_fails_verify(cache, change, message):
    """A shard with an extra column, its sha256 patched into the manifest, passed verify as
    "schema agrees": the check only looked for the declared columns."""
    path = cache / "shard-00001.arrow"
    table = ipc.open_file(pa.memory_map(str(path))).read_all()
    patch_shard_table(cache, 1, change(table))
    result = verify(cache)
    assert result.exit_code == 1, result.output
    assert any(line.startswith(f"kto-inspect: verify: {path}: {message}") for line in result.stderr.splitlines()), result.stderr


def test_eval_split_is_verified_too(cache):
    shutil.copytree(cache, cache / S.EVAL_DIR, ignore=shutil.ignore_patterns(S.EVAL_DIR))
    result = verify(cache)
    assert result.exit_code == 1  # same ids in both splits
    assert f"{cache / S.EVAL_DIR}: id " in result.stderr and "is also in the train split" in result.stderr


def test_a_deleted_eval_split_is_caught(tiny_model_dir, tmp_path):
    """Seen in an attack: `rm -r CACHE/eval` of a cache made with --eval-fraction 0.25, and
    verify said ok: a quarter of the rows gone without a word."""
    from conftest import precompute_args, text_rows, write_rows

    from kto.precompute.cli import main as precompute

    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    out = tmp_path / "cache"
    result = CliRunner().invoke(precompute, precompute_args(data, tiny_model_dir, out, "--eval-fraction", "0.25"))
    assert result.exit_code == 0, result.output
    assert verify(out).exit_code == 0
    shutil.rmtree(out / S.EVAL_DIR)
    result = verify(out)
    assert result.exit_code == 1
    assert f"{out / S.EVAL_DIR}: missing, though the manifest records --eval-fraction 0.25" in result.stderr


def test_not_a_directory_is_a_usage_error(tmp_path):
    result = verify(tmp_path / "nope")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"kto-inspect: error: {tmp_path / 'nope'}: no such cache directory"


def test_swapped_tokenizer_files(cache):
    template = cache / S.TOKENIZER_DIR / "chat_template.jinja"
    template.write_text(template.read_text() + "{# edited #}")
    result = verify(cache)
    assert result.exit_code == 1
    assert f"{cache / S.TOKENIZER_DIR}: differs from the tokenizer the manifest records (chat_template)" in result.stderr


def test_non_finite_token_logps_and_token_ids_outside_the_vocabulary(cache):
    """A NaN per-token term (its sum is NaN, so the sum check cannot see it), a token id equal to
    the vocabulary size and a negative one: each one line naming the shard, row and id."""
    path = cache / "shard-00001.arrow"
    ids = ipc.open_file(pa.memory_map(str(path))).read_all().column(S.ID).to_pylist()

    def edit(d):
        d[S.REF_TOKEN_LOGPS][0][1] = float("nan")
        d[S.COMPLETION_IDS][1][0] = 49152  # SmolLM2's vocabulary is ids 0 … 49151
        d[S.PROMPT_IDS][2][3] = -3

    rewrite_shard(cache, 1, edit)
    result = verify(cache)
    assert result.exit_code == 1
    err = result.stderr
    assert f"{path} row 1 (id {ids[0]!r}): ref_token_logps has nan at token 2\n" in err
    assert (
        f"{path} row 2 (id {ids[1]!r}): completion_ids holds token id 49152 at position 1; ids must lie in [0, 49152), the cache tokenizer's vocabulary\n"
    ) in err
    assert f"{path} row 3 (id {ids[2]!r}): prompt_ids holds token id -3 at position 4; ids must lie in [0, 49152)" in err


def test_non_finite_ref_logp(cache):
    path = cache / "shard-00002.arrow"
    ids = ipc.open_file(pa.memory_map(str(path))).read_all().column(S.ID).to_pylist()
    rewrite_shard(cache, 2, lambda d: (d[S.REF_LOGP].__setitem__(4, float("-inf")), d[S.REF_KL_LOGP].__setitem__(0, float("nan"))))
    result = verify(cache)
    assert result.exit_code == 1
    assert f"{path} row 5 (id {ids[4]!r}): ref_logp is -inf\n" in result.stderr
    assert f"{path} row 1 (id {ids[0]!r}): ref_kl_logp is nan\n" in result.stderr


@pytest.fixture(scope="module")
def eager_cache(tmp_path_factory, tiny_model_dir):
    """The same rows as tiny_cache, scored with another attention implementation: same ids, same
    pairing, nearly the same numbers, but another configuration (fingerprint)."""
    from conftest import chat_rows, precompute_args, write_rows

    from kto.precompute.cli import main as precompute

    root = tmp_path_factory.mktemp("eager-cache")
    data = write_rows(root / "chat.jsonl", chat_rows())
    out = root / "cache"
    result = CliRunner().invoke(precompute, precompute_args(data, tiny_model_dir, out, "--attn-implementation", "eager"))
    assert result.exit_code == 0, result.output
    return out


def test_shard_copied_from_another_cache_with_its_sha_patched_in(cache, eager_cache):
    foreign = read_manifest(eager_cache)
    assert foreign.fingerprint != read_manifest(cache).fingerprint
    shutil.copyfile(eager_cache / "shard-00001.arrow", cache / "shard-00001.arrow")
    obj = json.loads((cache / S.MANIFEST_NAME).read_text())
    obj["shards"][1]["sha256"] = foreign.shards[1].sha256  # the sha is not fingerprinted content
    (cache / S.MANIFEST_NAME).write_text(json.dumps(obj))
    result = verify(cache)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"kto-inspect: verify: {cache / 'shard-00001.arrow'}: was made for fingerprint {foreign.fingerprint[:16]}…, "
        f"the manifest's is {read_manifest(cache).fingerprint[:16]}…; the shard is not from this cache"
    )
    assert lines[-1] == f"kto-inspect: verify: 1 problem(s) found in {cache}"  # nothing else gives it away


def test_kl_completion_must_start_its_source_completion_in_another_shard(cache):
    """Verify streams shard by shard; the KL prefix check still sees across shards."""
    table = ipc.open_file(pa.memory_map(str(cache / "shard-00003.arrow"))).read_all()
    row_id, source = table.column(S.ID)[0].as_py(), table.column(S.KL_SOURCE_ID)[0].as_py()
    source_shard = [k for k in range(3) if source in ipc.open_file(pa.memory_map(str(cache / f"shard-0000{k}.arrow"))).read_all().column(S.ID).to_pylist()]
    assert source_shard, "the row's KL source is in another shard"

    def edit(d):
        kl = d[S.KL_COMPLETION_IDS][0]
        kl[-1] = (kl[-1] + 1) % 49152  # same length, same counts, last token changed

    rewrite_shard(cache, 3, edit)
    result = verify(cache)
    assert result.exit_code == 1
    assert f"{cache / 'shard-00003.arrow'} row 1 (id {row_id!r}): kl_completion_ids are not the start of {source!r}'s completion_ids" in result.stderr


def test_an_eval_split_scored_by_another_reference_model_is_caught(tiny_model_dir, tokenizer_dir, tmp_path):
    """Seen in an attack: CACHE/eval replaced by the eval split of the same rows scored by
    another model (seed 1). verify said ok for both, and `kto-train --eval-cache CACHE/eval`
    refused it ("made with another model than --cache"): its rewards use another reference."""
    from conftest import make_tiny_llama, precompute_args, text_rows, write_rows

    from kto.precompute.cli import main as precompute

    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    caches = []
    for seed in (0, 1):
        model = tiny_model_dir if seed == 0 else make_tiny_llama(tmp_path / "other-model", tokenizer_dir, seed=1)
        out = tmp_path / f"cache-{seed}"
        result = CliRunner().invoke(precompute, precompute_args(data, model, out, "--eval-fraction", "0.25"))
        assert result.exit_code == 0, result.output
        caches.append(out)
    mine, other = caches
    assert verify(mine).exit_code == 0 and verify(other).exit_code == 0
    shutil.rmtree(mine / S.EVAL_DIR)
    shutil.copytree(other / S.EVAL_DIR, mine / S.EVAL_DIR)
    result = verify(mine)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert (
        f"kto-inspect: verify: {mine / S.EVAL_DIR}: made with another reference model than {mine} (model identity differs in: weights); kto-train --eval-cache refuses it"
        in lines
    ), result.stderr
    assert lines[-1] == f"kto-inspect: verify: 1 problem(s) found in {mine}"
