"""LLaMA-Factory's QLoRA and LoRA keys at their defaults (model_args.py QuantizationArguments,
finetuning_args.py LoraArguments): a QLoRA YAML as its examples write it was refused as "unknown
keys" with a "did you mean quantization_bit?" (formats/config_keys.py, docs/migrating.md)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import kto.train.api
import kto.train.cli
from kto.formats.config_keys import PRECOMPUTE, TRAIN
from kto.formats.config_names import resolve
from kto.formats.errors import InputError
from kto.train.cli import main

# LLaMA-Factory's examples/train_qlora/llama3_lora_sft_bnb_npu.yaml's keys in the KTO stage, with
# the QLoRA and LoRA keys at LLaMA-Factory's defaults written out (that example writes
# double_quantization: false, and llama3_lora_sft_otfq.yaml quantization_method: bitsandbytes:
# both are taken too, below).
QLORA_YAML = """\
model_name_or_path: m
quantization_bit: 4
quantization_method: bnb
double_quantization: true
quantization_type: nf4
stage: kto
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
pissa_init: false
create_new_adapter: false
loraplus_lr_ratio: null
additional_target: null
pref_beta: 0.1
output_dir: {out}
learning_rate: 5.0e-6
num_train_epochs: 1.0
"""


def test_a_qlora_yaml_at_llama_factorys_defaults_trains_4bit_lora(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(kto.train.api, "run", seen.append)
    monkeypatch.setattr(kto.train.cli, "check_paths", lambda cfg: None)
    path = tmp_path / "lfq.yaml"
    path.write_text(QLORA_YAML.format(out=tmp_path / "o"))
    result = CliRunner().invoke(main, ["--config", str(path), "--cache", "c"])
    assert result.exit_code == 0, result.output
    assert "unknown" not in result.output and "did you mean" not in result.output
    cfg = seen[0]
    assert cfg.load_in_4bit is True and cfg.lora_r == 8
    for line in (
        "quantization_method: bnb: ignored",
        "double_quantization: true: ignored",
        "quantization_type: nf4: ignored",
        "pissa_init: false: ignored",
        "create_new_adapter: false: ignored",
        "loraplus_lr_ratio: null: ignored",
        "additional_target: null: ignored",
    ):
        assert line in result.output, result.output


@pytest.mark.parametrize(
    "key, value, note",
    [
        ("quantization_method", "bnb", "quantization_method: bnb: ignored (kto-train quantizes with bitsandbytes too"),
        ("quantization_method", "bitsandbytes", "quantization_method: bitsandbytes: ignored (kto-train quantizes with bitsandbytes too"),
        ("quantization_type", "nf4", "quantization_type: nf4: ignored (kto-train's 4-bit weights are NF4 too)"),
        ("double_quantization", True, "double_quantization: true: ignored (kto-train's 4-bit loading nests the quantization constants too"),
        ("double_quantization", False, "double_quantization: false: ignored (kto-train's 4-bit loading always nests the quantization constants"),
        ("pissa_init", False, "pissa_init: false: ignored (LoRA starts as peft's default"),
        ("create_new_adapter", False, "create_new_adapter: false: ignored (kto-train starts fresh adapters"),
        ("create_new_adapter", True, "create_new_adapter: true: ignored (kto-train starts fresh adapters"),
        ("loraplus_lr_ratio", None, "loraplus_lr_ratio: null: ignored (every adapter weight trains at lr"),
        ("additional_target", None, "additional_target: null: ignored (only the LoRA adapters train"),
    ],
)
def test_llama_factorys_defaults_are_said_not_refused(key, value, note):
    resolved = resolve({key: value}, TRAIN)
    assert any(n.startswith(note) for n in resolved.notes), resolved.notes


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("quantization_method", "hqq", "quantization_method: 'hqq': kto-train quantizes with bitsandbytes only"),
        ("quantization_method", "eetq", "quantization_method: 'eetq': kto-train quantizes with bitsandbytes only"),
        ("quantization_method", "gptq", "quantization_method: 'gptq': kto-train quantizes with bitsandbytes only"),
        ("quantization_type", "fp4", "quantization_type: 'fp4': kto-train loads 4-bit weights as NF4 only"),
        ("double_quantization", "no", "double_quantization: 'no': a true/false switch"),
        ("pissa_init", True, "pissa_init: True: PiSSA initialization is not supported"),
        ("create_new_adapter", "yes", "create_new_adapter: 'yes': a true/false switch"),
        ("loraplus_lr_ratio", 16.0, "loraplus_lr_ratio: 16.0: LoRA+ is not supported"),
        (
            "additional_target",
            "embed_tokens",
            "additional_target: 'embed_tokens': training modules beside the adapters (peft's modules_to_save) is not supported",
        ),
    ],
)
def test_llama_factorys_other_values_are_refused_saying_what_kto_does(key, value, reason):
    with pytest.raises(InputError) as err:
        resolve({key: value}, TRAIN)
    said = str(err.value)
    assert reason in said and "unknown" not in said and "did you mean" not in said, said


def test_kto_precompute_leaves_them_to_kto_train():
    raw = {"quantization_method": "bnb", "double_quantization": True, "quantization_type": "nf4", "pissa_init": False, "create_new_adapter": False}
    notes = resolve(raw, PRECOMPUTE).notes
    assert notes == [f"kto-train's keys, ignored by kto-precompute: {', '.join(raw)}"], notes
