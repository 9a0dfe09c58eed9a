"""FSDP's final/ of a model whose LM head is tied to its embeddings is the same HF directory as
a one-process run's: the head is not stored a second time (save_pretrained drops a tied weight
by its shared storage, and the full state dict gathered from the shards holds a copy of each),
and loading it gives the trained weights, the head tied back to the embeddings."""

import textwrap

import pytest
import torch
from conftest import chat_rows, make_cache, make_tiny_llama, run_train, torchrun
from safetensors.torch import load_file

ARGS = ["--batch-size", "2", "--lr", "1e-2", "--log-every", "1", "--max-steps", "2", "--lr-schedule", "constant"]
# Two FSDP runs in one launch: `short` ends at step 2 (final/ holds step 2's weights); `long`
# goes on to step 4 and saves checkpoint-2 (DCP shards) on its way. With a constant learning
# rate their first two steps are the same, so long's checkpoint-2 holds the weights that short's
# final/ must hold: the trained weights, read back apart from final/'s code.
RUNS = """
    import sys
    from pathlib import Path

    import kto.train
    from kto.train.config import TrainConfig

    cache, model, short, long = sys.argv[1:5]
    common = dict(cache=Path(cache), model=model, batch_size=2, lr=1e-2, log_every=1, lr_schedule="constant", fsdp=True)
    kto.train.run(TrainConfig(out=Path(short), max_steps=2, **common))
    kto.train.run(TrainConfig(out=Path(long), max_steps=4, save_every=2, **common))
"""


@pytest.fixture(scope="module")
def tied(tmp_path_factory, tokenizer_dir):
    """A tiny Llama with tie_word_embeddings=True, and a cache scored by it."""
    root = tmp_path_factory.mktemp("tied")
    model = make_tiny_llama(root / "model", tokenizer_dir, tie_word_embeddings=True)
    return model, make_cache(root, chat_rows(), model, "chat.jsonl")


def trained_weights(checkpoint, tmp_path) -> dict[str, torch.Tensor]:
    """The HF model's weights in an FSDP checkpoint's DCP shards (keys "model.lm.<HF key>"),
    read by torch's own converter, apart from the code under test."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint / "sharded", tmp_path / "trained.pt")
    saved = torch.load(tmp_path / "trained.pt", weights_only=True)["model"]
    return {k.removeprefix("lm."): v for k, v in saved.items()}


@pytest.mark.distributed
def test_fsdp_final_of_a_tied_model_stores_the_head_once(tied, tmp_path):
    from transformers import AutoModelForCausalLM

    model, cache = tied
    sharded, longer, whole = tmp_path / "fsdp", tmp_path / "fsdp-longer", tmp_path / "one"
    script = tmp_path / "runs.py"
    script.write_text(textwrap.dedent(RUNS))
    torchrun(str(script), str(cache), str(model), str(sharded), str(longer), timeout=600)
    result = run_train(cache, model, whole, *ARGS)
    assert result.exit_code == 0, result.output
    files = load_file(sharded / "final" / "model.safetensors")
    assert files.keys() == load_file(whole / "final" / "model.safetensors").keys()
    assert "lm_head.weight" not in files and "model.embed_tokens.weight" in files
    trained = trained_weights(longer / "checkpoint-2", tmp_path)  # step 2's, as short's final/
    assert all(torch.equal(files[k], trained[k]) for k in files)
    lm = AutoModelForCausalLM.from_pretrained(sharded / "final")
    embed = trained["model.embed_tokens.weight"]
    assert not torch.equal(embed, load_file(model / "model.safetensors")["model.embed_tokens.weight"])  # it trained
    assert torch.equal(trained["lm_head.weight"], embed)  # the head stayed tied while it trained
    assert torch.equal(lm.model.embed_tokens.weight, embed) and torch.equal(lm.lm_head.weight, embed)
    # kto-inspect export of the checkpoint: the same files as final/ (tests/export_checks.py).
    from export_checks import check_tied_export

    check_tied_export(longer / "checkpoint-2", sharded / "final", tmp_path)
