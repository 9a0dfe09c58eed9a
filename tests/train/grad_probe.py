"""Run the first optimizer step's forward/backward and save the gradients (no optimizer step).

Used by test_step.py in-process (1 rank) and under torchrun (2 ranks):
    python grad_probe.py CACHE MODEL BATCH ACCUM KL_SCOPE OUT.safetensors
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from kto.formats.logprob import CompletionLogps
from kto.formats.models import load_causal_lm, load_tokenizer, resolve_source
from kto.train.config import TrainConfig
from kto.train.data import BatchShape, ShardedCache, collate, epoch_plan
from kto.train.setup import disable_dropout, make_accelerator
from kto.train.step import LossSettings, forward_backward


def probe(cache: str, model: str, batch: int, accum: int, kl_scope: str, out: str) -> None:
    cfg = TrainConfig(cache=Path(cache), model=model, out=Path(out).parent, batch_size=batch, grad_accum=accum,
                      kl_scope=kl_scope, sft_weight=0.5, desirable_weight=1.3)
    accelerator = make_accelerator(cfg)
    source = resolve_source(model)
    tokenizer = load_tokenizer(source)
    lm = load_causal_lm(source, dtype=torch.float32)
    disable_dropout(lm)
    wrapped = accelerator.prepare(CompletionLogps(lm.train()))
    data = ShardedCache(Path(cache))
    plan = epoch_plan(data.lengths(), BatchShape(batch, accum, accelerator.num_processes), cfg.seed, 0)
    batches = [collate(data, s, tokenizer.pad_token_id) for s in plan[0, accelerator.process_index]]
    settings = LossSettings(cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, cfg.loss_type, cfg.sft_weight, cfg.kl_scope)
    forward_backward(wrapped, batches, settings, accelerator)
    if accelerator.is_main_process:
        grads = {n: p.grad.detach().clone().contiguous() for n, p in accelerator.unwrap_model(wrapped).named_parameters() if p.grad is not None}
        save_file(grads, out)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    c, m, b, a, k, o = sys.argv[1:]
    probe(c, m, int(b), int(a), k, o)
