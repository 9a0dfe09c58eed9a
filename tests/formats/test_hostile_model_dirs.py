"""Model folders built to harm: a link that carries a file from outside the folder into the cache
and the run's final/, a FIFO or device weight file that hangs the identity hash, a safetensors
header whose tensors overlap (the identity read gigabytes from a 2.5 MB file), and a config.json
that claims weights the files do not hold (loaded with random layers, or grown to a MemoryError)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_llama, tiny_llama

from kto.formats.compute.identity import model_identity
from kto.formats.compute.loading import load_causal_lm
from kto.formats.compute.sources import ModelSource, resolve_source
from kto.formats.compute.weights_check import checked_source
from kto.formats.errors import InputError


def copy_model(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest


def test_a_template_linked_from_outside_the_model_folder_is_refused(tmp_path, tiny_model_dir):
    """The hunter's m_sym_tpl: the secret became every prompt's start, cache/tokenizer/ and final/."""
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=hunter2")
    model = copy_model(tiny_model_dir, tmp_path / "m")
    (model / "chat_template.jinja").unlink()
    (model / "chat_template.jinja").symlink_to(secret)
    with pytest.raises(InputError) as caught:
        resolve_source(str(model))
    assert str(caught.value) == (
        f"--model {model}: chat_template.jinja is a symbolic link to {secret}, outside the model folder; copy it into the folder instead of linking it"
    )


@pytest.mark.parametrize("name", ["tokenizer.json", "vocab.txt", "additional_chat_templates/tool_use.jinja", "additional_chat_templates"])
def test_tokenizer_and_template_files_linked_from_outside_are_refused_at_any_depth(tmp_path, tiny_model_dir, name):
    """Files transformers reads and saves again (into the cache's tokenizer/, run/final): a link
    in a subfolder (additional_chat_templates/, which transformers writes) or a linked subfolder
    too. Seen in a review: only the folder's top level was looked at."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    model = copy_model(tiny_model_dir, tmp_path / "m")
    (model / "additional_chat_templates").mkdir()
    if (model / name).is_file():
        shutil.move(model / name, outside / name)
    elif name == "additional_chat_templates":
        (model / name).rmdir()
        (outside / name).mkdir()
    else:
        (outside / name).parent.mkdir(parents=True, exist_ok=True)
        (outside / name).write_text("x")
    (model / name).symlink_to(os.path.relpath(outside / name, (model / name).parent))
    with pytest.raises(InputError, match=rf"^--model {model}: {name} is a symbolic link to [./]*elsewhere/{name}, outside the model folder"):
        resolve_source(str(model))


def test_weight_files_may_link_anywhere(tmp_path, tiny_model_dir):
    """A huggingface_hub local_dir, git-annex or DVC links the weights into a store elsewhere:
    they are hashed and loaded, never copied, so such a folder is read as it is."""
    outside = tmp_path / "store"
    outside.mkdir()
    model = copy_model(tiny_model_dir, tmp_path / "m")
    shutil.move(model / "model.safetensors", outside / "blob")
    (model / "model.safetensors").symlink_to(outside / "blob")
    assert resolve_source(str(model)).directory == model


def test_links_inside_the_model_folder_and_a_linked_folder_load(tmp_path, tiny_model_dir):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    (model / "templates").mkdir()
    shutil.move(model / "chat_template.jinja", model / "templates" / "chat.jinja")
    (model / "chat_template.jinja").symlink_to("templates/chat.jinja")
    (tmp_path / "alias").symlink_to(model)
    assert resolve_source(str(tmp_path / "alias")).directory == model


def hf_cache_repo(root: Path, model: Path) -> Path:
    """`model` laid out as huggingface_hub's cache keeps it: models--ORG--NAME/snapshots/REV/FILE
    -> ../../blobs/HASH. Returns the snapshot folder."""
    repo = root / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(model.iterdir())):
        shutil.copy(path, repo / "blobs" / f"blob{i}")
        (snapshot / path.name).symlink_to(f"../../blobs/blob{i}")
    return snapshot


def test_the_hugging_face_cache_layout_is_allowed(tmp_path, tiny_model_dir):
    snapshot = hf_cache_repo(tmp_path, tiny_model_dir)
    assert resolve_source(str(snapshot)).directory == snapshot


def test_a_snapshot_link_out_of_its_repo_folder_is_refused(tmp_path, tiny_model_dir):
    snapshot = hf_cache_repo(tmp_path / "hub", tiny_model_dir)
    (tmp_path / "secret.txt").write_text("x")
    (snapshot / "chat_template.jinja").unlink()
    (snapshot / "chat_template.jinja").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InputError, match=r"chat_template\.jinja is a symbolic link to .*secret\.txt, outside the model folder"):
        resolve_source(str(snapshot))


def identity_in_a_subprocess(model: Path) -> subprocess.CompletedProcess:
    """model_identity of `model` in a child with a time limit: the hang this guards against runs
    in a worker thread that neither Ctrl-C nor the test's end can stop."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom kto.formats.compute.identity import model_identity\n"
        "from kto.formats.compute.sources import ModelSource\n"
        "from kto.formats.errors import InputError\n"
        "try:\n    model_identity(ModelSource(Path(sys.argv[1])))\nexcept InputError as e:\n    print(e)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=30)


def test_a_fifo_weight_file_is_refused_not_hashed_forever(tmp_path, tiny_model_dir):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    os.mkfifo(model / "extra.bin")
    assert resolve_source(str(model)).directory == model  # a local FIFO: refused where it is hashed
    done = identity_in_a_subprocess(model)
    assert done.stdout.strip() == f"{model / 'extra.bin'}: a FIFO, not a regular file", done.stderr[-2000:]


def test_a_weight_file_linked_to_dev_zero_is_refused(tmp_path, tiny_model_dir):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    (model / "extra.pt").symlink_to("/dev/zero")
    done = identity_in_a_subprocess(model)
    assert done.stdout.strip() == f"{model / 'extra.pt'}: a character device, not a regular file", done.stderr[-2000:]


def safetensors_file(path: Path, header: dict, data_len: int) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\1" * data_len)
    return path


def tensor(begin: int, end: int) -> dict:
    return {"dtype": "U8", "shape": [end - begin], "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ({f"t{i}": tensor(0, 1024) for i in range(3)}, "tensors t0 and t1 overlap"),
        ({"a": tensor(0, 600), "b": tensor(500, 1024)}, "tensors a and b overlap"),
        ({"a": tensor(0, 2048)}, "tensor a ends at byte 2048, past the 1024 bytes of data"),
        ({"a": tensor(700, 600)}, "tensor a ends at byte 600, before it begins"),
        ({"a": tensor(-8, 16)}, "tensor a begins at byte -8"),
    ],
)
def test_safetensors_offsets_out_of_range_or_overlapping_are_refused(tmp_path, tiny_model_dir, header, why):
    """The hunter's m_stamp20000: 20,000 entries of 1 MiB, all at [0, 1 MiB], took 37 s to hash."""
    model = copy_model(tiny_model_dir, tmp_path / "m")
    extra = safetensors_file(model / "extra.safetensors", header, 1024)
    with pytest.raises(InputError) as caught:
        model_identity(ModelSource(model, given=str(model)))
    assert str(caught.value) == f"{extra}: cannot load model (its safetensors header is invalid: {why})"


def test_safetensors_with_empty_tensors_and_metadata_are_hashed(tmp_path, tiny_model_dir):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    header = {"__metadata__": {"format": "pt"}, "e": tensor(0, 0), "a": tensor(0, 512), "z": tensor(512, 512), "b": tensor(512, 1024)}
    safetensors_file(model / "extra.safetensors", header, 1024)
    assert "extra.safetensors" in model_identity(ModelSource(model, given=str(model)))["weights"]


def with_config(model: Path, **changes) -> Path:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **changes}))
    return model


def test_a_config_claiming_more_layers_than_the_weights_hold_is_refused(tmp_path, tiny_model_dir):
    """The hunter's m_layers3: layer 2 was scored with random weights, and kto-precompute exited 0.
    The layer count of the safetensors header answers, before any skeleton is built."""
    import torch

    model = with_config(copy_model(tiny_model_dir, tmp_path / "m"), num_hidden_layers=3)
    with pytest.raises(InputError) as caught:
        load_causal_lm(resolve_source(str(model)), dtype=torch.float32)
    assert str(caught.value) == (
        f"--model {model}: config.json claims 3 layers (num_hidden_layers) but its weight files hold 2 "
        "(model.layers.0 to model.layers.1); transformers would fill the others with random values"
    )


def without_tensors(model: Path, prefix: str, extra: dict | None = None) -> Path:
    """`model` with the tensors whose names start with `prefix` removed (and `extra` added)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    kept = {name: t for name, t in weights.items() if not name.startswith(prefix)}
    save_file({**kept, **(extra or {})}, model / "model.safetensors", metadata={"format": "pt"})
    return model


def test_a_layer_missing_some_of_its_weights_is_refused(tmp_path, tiny_model_dir):
    """Every layer there, so the layer count passes; the names on the skeleton still find the
    three MLP weights of layer 1 missing."""
    import torch

    model = without_tensors(copy_model(tiny_model_dir, tmp_path / "m"), "model.layers.1.mlp.")
    with pytest.raises(InputError) as caught:
        load_causal_lm(resolve_source(str(model)), dtype=torch.float32)
    assert str(caught.value) == (
        f"--model {model}: config.json describes weights that its weight files do not hold (3 missing: model.layers.1.mlp.down_proj.weight, "
        "model.layers.1.mlp.gate_proj.weight, model.layers.1.mlp.up_proj.weight); transformers would fill them with random values"
    )


def test_a_gpt2_with_a_shorter_layers_stack_beside_its_blocks_is_not_refused(tmp_path):
    """GPT-2 numbers its blocks `transformer.h.<i>`, not `layers.<i>`: a `layers.<i>` stack of
    another part (here one extra tensor, which transformers ignores) is not the stack config.json
    counts, so 3 claimed layers over 1 such name is no refusal: the largest numbered stack counts."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=97, n_positions=64)).save_pretrained(gpt2)
    with_config(gpt2, num_hidden_layers=3)
    without_tensors(gpt2, "none", {"vision.layers.0.weight": torch.zeros(2)})
    lm = load_causal_lm(resolve_source(str(gpt2)), dtype=torch.float32)
    assert len(lm.transformer.h) == 3


def fake_multimodal(folder: Path, text_layers: int, held: int) -> Path:
    """config.json and a safetensors header of a multimodal shape: the language model's layers
    under text_config, and a 4-layer vision tower numbered `layers.<i>` too."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "not-a-model", "text_config": {"num_hidden_layers": text_layers}}))
    names = [f"model.language_model.layers.{i}.w" for i in range(held)] + [f"model.vision_tower.encoder.layers.{i}.w" for i in range(4)]
    save_file({name: torch.zeros(1) for name in names}, folder / "model.safetensors")
    return folder


def test_the_layer_count_of_a_multimodal_config_is_read_from_text_config(tmp_path):

    model = fake_multimodal(tmp_path / "mm", text_layers=50_000, held=2)
    with pytest.raises(InputError, match=r"claims 50,000 layers \(text_config\.num_hidden_layers\) but its weight files hold 4 "):
        checked_source(ModelSource(model, given=str(model)))
    # 3 claimed over 2 text layers beside a 4-layer vision tower: not caught here (the largest
    # stack counts); the skeleton's names are, for a config that builds (this one does not).
    short = fake_multimodal(tmp_path / "short", text_layers=3, held=2)
    checked_source(ModelSource(short, given=str(short)))
    fine = fake_multimodal(tmp_path / "fine", text_layers=6, held=6)
    assert checked_source(ModelSource(fine, given=str(fine))).directory == fine


def test_an_moe_s_expert_count_is_no_layer_count(tmp_path):
    """64 experts in each of 2 layers: a claim of 50 layers is still refused from the header
    (the experts' numbering made the largest stack 64, and the check passed it on to the skeleton)."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "moe"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "not-a-model", "num_hidden_layers": 50}))
    names = [f"model.layers.{i}.mlp.experts.{j}.w" for i in range(2) for j in range(64)]
    save_file({name: torch.zeros(1) for name in names}, folder / "model.safetensors")
    with pytest.raises(InputError, match=r"claims 50 layers \(num_hidden_layers\) but its weight files hold 2 \(model\.layers\.0 to model\.layers\.1\)"):
        checked_source(ModelSource(folder, given=str(folder)))


def test_an_untied_model_without_its_head_is_refused(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file, save_file

    model = copy_model(tiny_model_dir, tmp_path / "m")
    weights = load_file(model / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"\(1 missing: lm_head\.weight\)"):
        load_causal_lm(resolve_source(str(model)), dtype=torch.float32)


def test_tied_and_sharded_models_load(tmp_path, tokenizer_dir):
    """A tied head is absent from the file (save_pretrained writes embed_tokens once); a sharded
    model's names are spread over the files its index names."""
    import torch

    tied = make_tiny_llama(tmp_path / "tied", tokenizer_dir, tie_word_embeddings=True)
    lm = load_causal_lm(resolve_source(str(tied)), dtype=torch.float32)
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    sharded = tmp_path / "sharded"
    tiny_llama(vocab_size=300).save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    load_causal_lm(resolve_source(str(sharded)), dtype=torch.float32)


def test_a_sharded_model_missing_a_layer_is_refused(tmp_path):
    import torch

    sharded = tmp_path / "sharded"
    tiny_llama(vocab_size=300).save_pretrained(sharded, max_shard_size="40KB")
    with_config(sharded, num_hidden_layers=3)
    with pytest.raises(InputError, match=r"claims 3 layers \(num_hidden_layers\) but its weight files hold 2 "):
        load_causal_lm(resolve_source(str(sharded)), dtype=torch.float32)


def test_a_gpt2_whose_ignore_patterns_match_a_held_parameter_loads(tmp_path):
    """GPT-2's _keys_to_ignore_on_load_unexpected ("attn.bias", its old mask buffer) also matches
    c_attn.bias: dropped from the held names, it was called missing and the model refused."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=97, n_positions=64)).save_pretrained(tmp_path / "gpt2")
    load_causal_lm(resolve_source(str(tmp_path / "gpt2")), dtype=torch.float32)


def test_one_unknown_tensor_does_not_switch_the_check_off(tmp_path, tiny_model_dir):
    """Seen in a review: a `junk` tensor beside missing weights read as "transformers renames
    these" and skipped the whole check; one unknown name cannot stand for three lacking ones."""
    import torch

    model = without_tensors(copy_model(tiny_model_dir, tmp_path / "m"), "model.layers.1.mlp.", {"junk": torch.zeros(1)})
    with pytest.raises(InputError, match=r"\(3 missing: model\.layers\.1\.mlp\."):
        load_causal_lm(resolve_source(str(model)), dtype=torch.float32)


def test_the_single_file_is_read_before_an_index_as_transformers_does(tmp_path, tiny_model_dir):
    """Seen in a review: with model.safetensors and an index both there, the check read the
    index's files while transformers loaded the single file."""
    import torch

    model = with_config(copy_model(tiny_model_dir, tmp_path / "m"), num_hidden_layers=3)
    names = {f"model.layers.2.{n}": "model-extra.safetensors" for n in ("input_layernorm.weight",)}
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": names}))
    with pytest.raises(InputError, match=r"claims 3 layers \(num_hidden_layers\) but its weight files hold 2 "):
        load_causal_lm(resolve_source(str(model)), dtype=torch.float32)


def test_named_chat_templates_have_an_identity(tmp_path, tiny_model_dir):
    """An additional_chat_templates/ folder (transformers writes one) makes the tokenizer's
    chat_template a dict of name -> text: the identity crashed on .encode() (a traceback in
    every command); it hashes the dict, and a change of any template changes it."""
    from transformers import AutoTokenizer

    from kto.formats.compute.identity import tokenizer_identity

    model = copy_model(tiny_model_dir, tmp_path / "m")
    (model / "additional_chat_templates").mkdir()
    shutil.copy(model / "chat_template.jinja", model / "additional_chat_templates" / "tool_use.jinja")
    first = tokenizer_identity(AutoTokenizer.from_pretrained(model))["chat_template"]
    (model / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages }}")
    assert tokenizer_identity(AutoTokenizer.from_pretrained(model))["chat_template"] != first


def test_a_folder_with_its_own_code_is_refused_naming_the_flag_that_allows_it(tmp_path, tiny_model_dir):
    """transformers refuses a folder whose config maps to its own code (auto_map) without saying
    how kto lets it run: the one line now names --trust-remote-code, and that it runs the code.
    Nothing of the folder's code runs: it would write `ran`."""
    import torch

    model = with_config(
        copy_model(tiny_model_dir, tmp_path / "m"),
        model_type="evil",
        auto_map={"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilLM"},
    )
    ran = tmp_path / "ran"
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (model / name).write_text(f"open({str(ran)!r}, 'w').write('x')\n")
    with pytest.raises(InputError) as caught:
        load_causal_lm(resolve_source(str(model)), dtype=torch.float32)
    assert "contains custom code" in str(caught.value) and str(caught.value).endswith(
        "; --trust-remote-code runs that code: give it only for a folder whose code you have read and trust"
    )
    assert not ran.exists()
