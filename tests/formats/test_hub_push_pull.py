"""The Hub, against a local stand-in (tests/hub_server.py) at HF_ENDPOINT: kto-precompute
--push-to-hub publishes a cache as a dataset repo, kto-train --cache hf:ORG/NAME reads it back
(verified against its manifest like a local cache), and --push-to-hub uploads final/."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import chat_rows, run_train, train_error_line, write_rows
from hub_server import FakeHub, point_at

import kto.precompute
from kto.formats.errors import InputError
from kto.formats.hub import CARD_MARKER, CARD_NAME, push_folder
from kto.formats.manifest import read_manifest
from kto.precompute.config import PrecomputeConfig
from kto.train.config import TrainConfig

TRAIN = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "2"]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake hub, and huggingface_hub pointed at it as HF_ENDPOINT would (both constants are
    computed from HF_ENDPOINT when huggingface_hub is imported), with an empty local HF cache."""
    with FakeHub() as server:
        point_at(monkeypatch, server.url, tmp_path)
        yield server


def visible_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` whose path has no hidden part (what a push uploads)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


@pytest.fixture
def pushed_cache(hub, tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    config = PrecomputeConfig(
        data=(data,),
        model=str(tiny_model_dir),
        out=tmp_path / "cache",
        max_length=64,
        rows_per_shard=5,
        batch_tokens=256,
        eval_fraction=0.25,
        push_to_hub="me/kto-cache",
        hub_private=True,
    )
    return kto.precompute.run(config)


def test_cache_round_trip_and_final_pushed(hub, pushed_cache, tiny_model_dir, tmp_path):
    repo = hub.repos[("dataset", "me/kto-cache")]
    local = visible_files(pushed_cache.cache)
    assert repo.private and repo.files == local  # shards, manifests, tokenizer/ and eval/, byte for byte
    assert {"manifest.json", "eval/manifest.json", "shard-00000.arrow", CARD_NAME} <= set(repo.files)
    card = repo.files[CARD_NAME].decode()  # the repo had no card: the cache's is uploaded
    assert "path: shard-*.arrow" in card and "path: eval/shard-*.arrow" in card and pushed_cache.fingerprint in card
    assert (pushed_cache.cache / ".journal").is_dir() and not any(name.startswith(".") for name in repo.files)

    out = tmp_path / "run"
    result = run_train("hf:me/kto-cache", tiny_model_dir, out, *TRAIN, "--eval-cache", "hf:me/kto-cache/eval", "--push-to-hub", "me/kto-policy")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "kto_run.json").read_text())
    assert record["derived"]["cache_fingerprint"] == pushed_cache.fingerprint
    assert record["derived"]["eval_cache_fingerprint"] == pushed_cache.eval_fingerprint
    from kto.inspection.cli import main as inspect

    verified = CliRunner().invoke(inspect, ["verify", "hf:me/kto-cache"])
    assert verified.exit_code == 0 and "ok: " in verified.output, verified.output
    model_repo = hub.repos[("model", "me/kto-policy")]
    assert not model_repo.private and model_repo.files == visible_files(out / "final")
    assert {"model.safetensors", "config.json", "README.md"} <= set(model_repo.files)


def test_a_shard_changed_on_the_hub_is_refused(hub, pushed_cache, tiny_model_dir, tmp_path):
    # Every training shard is changed on the hub: shards are hashed on first use, and which shard
    # the first steps read depends on the epoch plan, not on what this test is about.
    repo = hub.repos[("dataset", "me/kto-cache")]
    shards = [s.name for s in read_manifest(pushed_cache.cache).shards]
    for shard in shards:
        data = bytearray(repo.files[shard])
        data[len(data) // 2] ^= 0xFF
        repo.files[shard] = bytes(data)
    repo.commits.append("b" * 40)  # a new revision, as a push makes
    result = run_train("hf:me/kto-cache", tiny_model_dir, tmp_path / "run", *TRAIN)
    assert result.exit_code == 2
    line = train_error_line(result.output)
    assert "sha256" in line and any(shard in line for shard in shards), line


def test_a_second_push_replaces_the_earlier_cache(hub, pushed_cache, tiny_model_dir, tmp_path, capsys):
    """A smaller cache (one shard, no eval/) pushed to the repo that holds a 3-shard cache with
    eval/: after its one commit the repo holds this cache's files and the user's card, nothing of
    the earlier cache (a stale shard-00002.arrow would be read by `scan_ipc("shard-*.arrow")`,
    and a stale eval/ would pass for this cache's eval split). The user's card is kept, and one
    line on stderr gives the `configs:` that `datasets.load_dataset` needs."""
    repo = hub.repos[("dataset", "me/kto-cache")]
    card = b"---\nlicense: mit\n---\n# Feedback cache\n"
    repo.files["README.md"] = card  # the user's dataset card, put there between the pushes
    repo.commits.append("c" * 40)
    assert len(read_manifest(pushed_cache.cache).shards) == 3 and "eval/manifest.json" in repo.files
    data = write_rows(tmp_path / "chat2.jsonl", chat_rows())
    config = PrecomputeConfig(data=(data,), model=str(tiny_model_dir), out=tmp_path / "cache2", max_length=64, batch_tokens=256, push_to_hub="me/kto-cache")
    commits = len(repo.commits)
    second = kto.precompute.run(config)
    assert len(read_manifest(second.cache).shards) == 1 and not (second.cache / "eval").exists()
    assert repo.files == {**visible_files(second.cache), "README.md": card} and len(repo.commits) == commits + 1
    assert CARD_NAME in visible_files(second.cache)  # left out of the upload, not missing
    kept = [line for line in capsys.readouterr().err.splitlines() if "README.md" in line]
    assert len(kept) == 1 and "kept" in kept[0] and "{split: train, path: shard-*.arrow}" in kept[0], kept
    from kto.inspection.cli import main as inspect

    verified = CliRunner().invoke(inspect, ["verify", "hf:me/kto-cache"])
    assert verified.exit_code == 0 and "ok: " in verified.output, verified.output


def test_a_card_of_an_earlier_push_is_replaced(hub, tmp_path):
    """The card an earlier push uploaded (its marker line still there) is the cache's, replaced
    like its shards: a stale card would declare an eval split the new cache lacks. One the user
    edited and took the marker out of is theirs, and kept."""

    def cache(name: str, card: str) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "shard-00000.arrow").write_bytes(name.encode())
        (tmp_path / name / "manifest.json").write_text("{}")
        (tmp_path / name / CARD_NAME).write_text(card)
        return tmp_path / name

    first = f"---\nconfigs: []\n---\nfirst\n{CARD_MARKER}\n"
    push_folder(cache("a", first), "me/c", dataset=True, private=False, message="first")
    repo = hub.repos[("dataset", "me/c")]
    assert repo.files[CARD_NAME] == first.encode()
    second = first.replace("first", "second")
    push_folder(cache("b", second), "me/c", dataset=True, private=False, message="second")
    assert repo.files[CARD_NAME] == second.encode() and repo.files["shard-00000.arrow"] == b"b"
    theirs = second.replace(CARD_MARKER, "my notes").encode()
    repo.files[CARD_NAME] = theirs
    push_folder(cache("c", first), "me/c", dataset=True, private=False, message="third")
    assert repo.files[CARD_NAME] == theirs and repo.files["shard-00000.arrow"] == b"c"


def test_a_second_model_push_replaces_the_model_files(hub, tmp_path):
    """A sharded full model pushed over an adapter, then a one-file model over the sharded one:
    each time the repo ends with this final/'s files; a user's files that a final/ never writes
    (notes, a subfolder's weights, .gitattributes) stay."""

    def final(name: str, files: dict[str, str]) -> Path:
        for rel, text in files.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_text(text)
        return tmp_path / name

    common = {"README.md": "---\nlibrary_name: peft\n---\n", "tokenizer.json": "{}", "tokenizer_config.json": "{}", "chat_template.jinja": "x"}
    adapter = final("a", {**common, "adapter_model.safetensors": "a", "adapter_config.json": "{}", "special_tokens_map.json": "{}"})
    shards = {"model-00001-of-00002.safetensors": "1", "model-00002-of-00002.safetensors": "2", "model.safetensors.index.json": "{}"}
    full = final("b", {**common, **shards, "config.json": "{}", "generation_config.json": "{}", ".lock": ""})
    push_folder(adapter, "me/policy", dataset=False, private=False, message="first")
    repo = hub.repos[("model", "me/policy")]
    user = {"notes.md": b"mine", "onnx/model.safetensors": b"onnx", ".gitattributes": b"*.safetensors filter=lfs"}
    repo.files.update(user)
    push_folder(full, "me/policy", dataset=False, private=False, message="second")
    assert repo.files == {**visible_files(full), **user}
    smaller = final("c", {**common, "model.safetensors": "m", "config.json": "{}"})
    push_folder(smaller, "me/policy", dataset=False, private=False, message="third")
    assert repo.files == {**visible_files(smaller), **user}


def test_bad_hub_names_are_refused_before_any_work(hub, tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match="--push-to-hub not/a/repo"):
        TrainConfig(cache=tmp_path, model=str(tiny_model_dir), out=tmp_path / "run", push_to_hub="not/a/repo")
    with pytest.raises(InputError, match="--hub-private: needs --push-to-hub"):
        PrecomputeConfig(data=(tmp_path / "x.jsonl",), model=str(tiny_model_dir), out=tmp_path / "c", hub_private=True)
    result = run_train("hf:me/nothing-here", tiny_model_dir, tmp_path / "run", *TRAIN)
    assert "--cache hf:me/nothing-here: cannot fetch from the hub" in train_error_line(result.output)
    assert not (tmp_path / "run").exists()


def test_a_hub_error_of_several_lines_is_one_line_that_closes_its_parenthesis(monkeypatch):
    """huggingface_hub's errors span lines; cutting the line after formatting left
    `cannot fetch from the hub (LocalEntryNotFoundError: Got: ...` without its `)`."""
    import huggingface_hub

    from kto.formats.compute.sources import resolve_source
    from kto.formats.errors import InputError

    def offline(*args, **kwargs):
        raise OSError("Got: ConnectError: Name or service not known\nCheck your connection.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(InputError) as err:
        resolve_source("someone/some-model")
    assert str(err.value) == "--model someone/some-model: cannot fetch from the hub (OSError: Got: ConnectError: Name or service not known)"
