"""--push-to-hub checked before the work it follows (as transformers' Trainer creates the repo in
its __init__): offline mode and no token before anything else; a repo that cannot be created
(network, auth) or that the token cannot write to once the command's own input checks passed and
before the model loads. Each is one line naming --push-to-hub, and nothing is written to --out;
an input refused creates no repo. A push that fails after the work says how to retry, and the
retry pushes (the local Hub stand-in, tests/hub_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import chat_rows, run_train, train_error_line, write_rows
from hub_server import FakeHub, Repo, point_at

import kto.precompute
from kto.formats.errors import InputError
from kto.precompute.config import PrecomputeConfig

TRAIN = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "1"]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        point_at(monkeypatch, server.url, tmp_path)
        yield server


def fail_next_commit(server: FakeHub) -> None:
    """The stand-in answers the next commit with an error (as a dropped connection or a Hub
    outage would end an upload), then serves as before."""
    real = server.post
    failed = []

    def post(handler, path: str, body: bytes) -> None:
        if "/commit/" in path and not failed:
            failed.append(path)
            return server.send(handler, 400, {"error": "the Hub is away for a moment"})
        return real(handler, path, body)

    server.post = post


def visible_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    }


def precompute_config(tmp_path: Path, model: Path, repo: str = "me/cache") -> PrecomputeConfig:
    data = write_rows(tmp_path / "chat.jsonl", chat_rows()[:6])
    return PrecomputeConfig(data=(data,), model=str(model), out=tmp_path / "cache", max_length=64, batch_tokens=256, push_to_hub=repo)


def no_token(monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def offline(monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets on import


def unreachable(monkeypatch, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    point_at(monkeypatch, f"http://127.0.0.1:{port}", tmp_path)


# (setting, what the line says, whether it is refused before the command's own input checks).
# Offline mode and a missing token cost nothing to check and are refused first; the repo is
# created (reaching the network) only once the inputs passed, before the model loads.
REFUSALS = [
    (offline, "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)", True),
    (no_token, "no Hugging Face token to upload with; set HF_TOKEN or run `hf auth login`", True),
    (unreachable, "cannot create the {kind} repo (ConnectError", False),
]


def stop_train_at(monkeypatch, first: bool) -> None:
    """Fail the test where kto-train would go on: at its input checks (`first`), else where it
    takes the run directory (setup, after every input check; the model loads there)."""
    import kto.train.loop

    monkeypatch.setattr(kto.train.loop, "check_inputs" if first else "setup", lambda *a: pytest.fail("the run went on"))


def stop_precompute_at(monkeypatch, first: bool) -> None:
    """Fail the test where kto-precompute would go on: at reading the rows (`first`), else where
    the reference model loads."""
    import kto.precompute.pipeline

    monkeypatch.setattr(kto.precompute.pipeline, "_run" if first else "load_completion_logps", lambda *a, **k: pytest.fail("the run went on"))


@pytest.mark.parametrize(("setting", "says", "first"), REFUSALS, ids=["offline", "no-token", "no-network"])
def test_train_refuses_a_push_bound_to_fail_before_any_step(setting, says, first, monkeypatch, tmp_path, tiny_cache, tiny_model_dir):
    """`HF_HUB_OFFLINE=1 kto-train ... --push-to-hub me/x` trained every step, then failed."""
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    setting(monkeypatch, tmp_path)
    stop_train_at(monkeypatch, first)
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *TRAIN, "--push-to-hub", "me/policy")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert line.startswith("kto-train: error: --push-to-hub me/policy: ") and says.format(kind="model") in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("setting", "says", "first"), REFUSALS, ids=["offline", "no-token", "no-network"])
def test_precompute_refuses_a_push_bound_to_fail_before_scoring(setting, says, first, monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    setting(monkeypatch, tmp_path)
    stop_precompute_at(monkeypatch, first)
    config = precompute_config(tmp_path, tiny_model_dir)
    with pytest.raises(InputError) as err:
        kto.precompute.run(config)
    assert str(err.value).startswith("--push-to-hub me/cache: ") and says.format(kind="dataset") in str(err.value), err.value
    assert not config.out.exists()


def test_the_repo_is_created_before_the_run(hub, monkeypatch, tmp_path, tiny_cache, tiny_model_dir):
    """Private as asked, before the run directory is taken and the model loads (here the run is
    stopped there)."""
    import kto.train.loop

    def stop(run):
        assert hub.repos[("model", "me/policy")].private  # already there
        raise InputError("stopped here")

    monkeypatch.setattr(kto.train.loop, "setup", stop)
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *TRAIN, "--push-to-hub", "me/policy", "--hub-private")
    assert "stopped here" in train_error_line(result.output)


def test_a_refused_resume_creates_no_repo(hub, tmp_path, tiny_cache, tiny_model_dir):
    """Seen before: the repo was created once the inputs passed, before the run directory's own
    checks under its lock: a --resume refused there (another --beta than the run's; a fresh start
    into a run) had already made an empty repo on the Hub."""
    out = tmp_path / "run"
    assert run_train(tiny_cache, tiny_model_dir, out, *TRAIN, "--max-steps", "2", "--save-every", "1").exit_code == 0
    fresh = run_train(tiny_cache, tiny_model_dir, out, *TRAIN, "--max-steps", "2", "--save-every", "1", "--push-to-hub", "me/policy")
    assert fresh.exit_code == 2 and "holds an earlier run; pass --resume" in train_error_line(fresh.output)
    result = run_train(
        tiny_cache, tiny_model_dir, out, *TRAIN, "--max-steps", "2", "--save-every", "1", "--beta", "0.5", "--resume", "--push-to-hub", "me/policy"
    )
    line = train_error_line(result.output)
    assert result.exit_code == 2 and "beta (0.1 there, 0.5 now)" in line, line
    assert hub.repos == {}


def others_public_repo(hub: FakeHub, kind: str) -> Repo:
    """other/policy: a public repo of another user, which the token of `me` can read, not write."""
    hub.repos[(kind, "other/policy")] = repo = Repo(private=False, files={"config.json": b"{}"})
    return repo


def test_train_refuses_a_repo_the_token_cannot_write_before_the_model_loads(hub, monkeypatch, tmp_path, tiny_cache, tiny_model_dir):
    """create_repo(exist_ok=True) takes a 403 for a repo it can read as "it exists": the run
    trained, then its upload was refused, and so was every --resume retry the line advised."""
    repo = others_public_repo(hub, "model")
    stop_train_at(monkeypatch, first=False)
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *TRAIN, "--push-to-hub", "other/policy")
    line = train_error_line(result.output)
    assert line.startswith(
        "kto-train: error: --push-to-hub other/policy: the token of me (role write) cannot write to the model repo other/policy (HfHubHTTPError: 403 "
    ) and line.endswith("; push to a repo of yours, or use a token that can write there (HF_TOKEN, `hf auth login`)"), line
    assert "403 Forbidden: You don't have write access to other/policy.)" in line, line
    assert repo.files == {"config.json": b"{}"} and not (tmp_path / "run").exists()


def test_precompute_refuses_a_repo_the_token_cannot_write_before_the_model_loads(hub, monkeypatch, tmp_path, tiny_model_dir):
    others_public_repo(hub, "dataset")
    stop_precompute_at(monkeypatch, first=False)
    config = precompute_config(tmp_path, tiny_model_dir, repo="other/policy")
    with pytest.raises(InputError) as err:
        kto.precompute.run(config)
    assert str(err.value).startswith(
        "--push-to-hub other/policy: the token of me (role write) cannot write to the dataset repo other/policy (HfHubHTTPError: 403 "
    )
    assert not config.out.exists()  # the run made --out and staged its rows: removed, as for a bad row


def test_a_refused_push_on_a_rerun_leaves_the_finished_cache_as_it_was(hub, tmp_path, tiny_model_dir):
    """A rerun of a finished cache stages its rows before the repo is met: refused there, it
    left its staging file (a tokenized copy of every row) in the cache."""
    import dataclasses

    others_public_repo(hub, "dataset")
    done = kto.precompute.run(dataclasses.replace(precompute_config(tmp_path, tiny_model_dir), push_to_hub=None))
    before = sorted(p.name for p in done.cache.iterdir())
    with pytest.raises(InputError, match="^--push-to-hub other/policy: the token of me"):
        kto.precompute.run(precompute_config(tmp_path, tiny_model_dir, repo="other/policy"))
    assert sorted(p.name for p in done.cache.iterdir()) == before


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "new"])
def test_a_read_only_token_is_refused(exists, hub, monkeypatch, tmp_path, tiny_cache, tiny_model_dir):
    """Its own namespace, but a read token: the Hub refuses the create (403) and the write."""
    hub.tokens["hf_test"]["role"] = "read"
    if exists:
        hub.repos[("model", "me/policy")] = Repo(private=False)
    stop_train_at(monkeypatch, first=False)
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *TRAIN, "--push-to-hub", "me/policy")
    line = train_error_line(result.output)
    # Not there: the create's refusal is the reason (the write check finds no repo, 404).
    why = (
        "write to the model repo me/policy (HfHubHTTPError: 403 Forbidden: You don't have write access to me/policy."
        if exists
        else ('create the model repo me/policy (HfHubHTTPError: 403 Forbidden: You don\'t have the rights to create a repo under the namespace "me".')
    )
    assert line.startswith(f"kto-train: error: --push-to-hub me/policy: the token of me (role read) cannot {why})"), line
    assert list(hub.repos) == ([("model", "me/policy")] if exists else [])


@pytest.mark.parametrize("repo_id", ["me/policy", "team/policy", "other/shared"], ids=["own", "org", "collaborator"])
def test_a_repo_the_token_can_write_passes(repo_id, hub, monkeypatch, tmp_path, tiny_cache, tiny_model_dir):
    """An existing repo of the user's, of an org of theirs, or of another user who made them a
    writer (a create there is refused, 403; the Hub says the token may write): the run goes on."""
    import kto.train.loop

    hub.tokens["hf_test"]["orgs"] = ["team"]
    hub.repos[("model", repo_id)] = repo = Repo(
        private=False, files={"notes.md": b"mine"}, writers={"me"} if repo_id == "other/shared" else set()
    )  # other/shared: me a collaborator

    def stop(run):
        raise InputError("stopped here")

    monkeypatch.setattr(kto.train.loop, "setup", stop)
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *TRAIN, "--push-to-hub", repo_id)
    assert train_error_line(result.output) == "kto-train: error: stopped here"
    assert repo.files == {"notes.md": b"mine"} and len(hub.repos) == 1


def test_a_collaborator_pushes_to_a_repo_of_another_user(hub, tmp_path, tiny_cache, tiny_model_dir):
    hub.repos[("model", "other/shared")] = repo = Repo(private=False, writers={"me"})
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *TRAIN, "--push-to-hub", "other/shared")
    assert result.exit_code == 0, result.output
    assert repo.files == visible_files(tmp_path / "run" / "final")


def test_refused_train_input_creates_no_repo(hub, tmp_path, tiny_cache, tiny_model_dir):
    """A warmup that keeps every step at rate 0 is refused at the end of the input checks (the
    run's steps are known only then): the line is that one, and the Hub holds no new, empty repo."""
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *TRAIN, "--warmup-steps", "1", "--push-to-hub", "me/policy")
    line = train_error_line(result.output)
    assert "--push-to-hub" not in line and "learning rate 0" in line, line
    assert hub.repos == {} and not (tmp_path / "run").exists()


def test_refused_precompute_input_creates_no_repo(hub, tmp_path, tiny_model_dir):
    rows = chat_rows()[:6]
    del rows[3]["label"]
    config = PrecomputeConfig(
        data=(write_rows(tmp_path / "chat.jsonl", rows),),
        model=str(tiny_model_dir),
        out=tmp_path / "cache",
        max_length=64,
        batch_tokens=256,
        push_to_hub="me/cache",
    )
    with pytest.raises(InputError) as err:
        kto.precompute.run(config)
    assert "label" in str(err.value) and "--push-to-hub" not in str(err.value), err.value
    assert hub.repos == {} and not config.out.exists()


def test_a_failed_train_push_is_retried_with_resume(hub, tmp_path, tiny_cache, tiny_model_dir):
    """A LoRA run with --merge-adapters pushed over an earlier full model; the upload fails after
    the run: the line says final/ is complete and how to push it. The same command with --resume
    trains nothing and pushes, deleting the full model's weights and config (`hf upload`, the
    advice before, kept them beside the adapter). The card on the Hub says final-merged/ stayed
    in the run directory: final/ alone is uploaded."""
    earlier = {"model.safetensors": b"full", "config.json": b"{}", "notes.md": b"mine"}
    hub.repos[("model", "me/policy")] = repo = Repo(private=False, files=dict(earlier))
    out = tmp_path / "run"
    command = [*TRAIN, "--lora-r", "2", "--merge-adapters", "--push-to-hub", "me/policy"]
    fail_next_commit(hub)
    failed = run_train(tiny_cache, tiny_model_dir, out, *command)
    assert failed.exit_code == 2, failed.output
    line = train_error_line(failed.output)
    assert f"cannot upload {out / 'final'} (" in line and line.endswith("; final/ is complete: push it with the same command and --resume"), line
    assert repo.files == earlier
    again = run_train(tiny_cache, tiny_model_dir, out, *command, "--resume")
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output and "pushed " in again.output
    assert repo.files == {**visible_files(out / "final"), "notes.md": b"mine"} and "adapter_model.safetensors" in repo.files
    card = repo.files["README.md"].decode()
    assert "the run directory that holds this folder also holds final-merged/" in card and "--push-to-hub uploads this folder alone" in card
    assert (out / "final-merged" / "model.safetensors").is_file()


def test_a_failed_cache_push_is_retried_by_running_again(hub, tmp_path, tiny_model_dir):
    config = precompute_config(tmp_path, tiny_model_dir)
    fail_next_commit(hub)
    with pytest.raises(InputError) as err:
        kto.precompute.run(config)
    line = str(err.value)
    assert line.startswith(f"--push-to-hub me/cache: cannot upload {config.out} (") and line.endswith(
        "; the cache is complete: run the same command again to push it"
    ), line
    repo = hub.repos[("dataset", "me/cache")]
    assert repo.files == {}
    kto.precompute.run(config)
    assert repo.files == visible_files(config.out) and "manifest.json" in repo.files


def test_a_repo_the_token_cannot_write_leaves_the_run_directory_as_it_was(hub, tmp_path, tiny_cache, tiny_model_dir):
    """A review found the repo check moved under the run directory's lock, after it had set a
    damaged checkpoint aside (checkpoint-2 renamed .corrupt): refused there, --out was changed.
    The check comes before the lock, and a refused push changes nothing there."""
    others_public_repo(hub, "model")
    out = tmp_path / "run"
    assert run_train(tiny_cache, tiny_model_dir, out, *TRAIN, "--max-steps", "2", "--save-every", "1").exit_code == 0
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"junk")
    before = sorted(p.name for p in out.iterdir())
    result = run_train(tiny_cache, tiny_model_dir, out, *TRAIN, "--max-steps", "2", "--save-every", "1", "--resume", "--push-to-hub", "other/policy")
    assert result.exit_code == 2 and "cannot write to the model repo other/policy" in train_error_line(result.output), result.output
    assert sorted(p.name for p in out.iterdir()) == before
