"""Run the first optimizer step's forward/backward and save the gradients (no optimizer step).

Used by test_step.py in-process (1 rank: `probe`) and under torchrun (2 ranks, DDP or FSDP2):
    python grad_probe.py CACHE MODEL SPEC [SPEC …]
    SPEC = OUT.safetensors:BATCH:ACCUM:KL_SCOPE[:fsdp][:lora=R]

Several SPECs run one after the other in the same processes, each with an Accelerator of its own:
starting torchrun and importing torch costs most of a probe's time, the step itself little.
With lora=R the adapters' B matrices are drawn at random (seeded, the same on every rank)
instead of peft's zeros, so that the A matrices get a gradient too.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from kto.formats.cache import open_cache
from kto.formats.compute.loading import load_tokenizer
from kto.formats.compute.logprob import CompletionLogps
from kto.formats.compute.sources import resolve_source
from kto.train import adapters, sharding
from kto.train.config import TrainConfig
from kto.train.data import MicroBatchShape, collate_micro_batch, epoch_plan, prompt_groups
from kto.train.model import load_policy
from kto.train.optim import build_optimizer
from kto.train.setup import loss_settings, make_accelerator
from kto.train.step import forward_backward


@dataclass(frozen=True)
class Spec:
    out: str
    batch: int
    accum: int
    kl_scope: str = "step"
    fsdp: bool = False
    lora_r: int = 0

    @classmethod
    def parse(cls, text: str) -> "Spec":
        out, batch, accum, scope, *flags = text.split(":")
        lora = [int(f.removeprefix("lora=")) for f in flags if f.startswith("lora=")]
        return cls(out, int(batch), int(accum), scope, "fsdp" in flags, lora[0] if lora else 0)

    def __str__(self) -> str:
        flags = (["fsdp"] if self.fsdp else []) + ([f"lora={self.lora_r}"] if self.lora_r else [])
        return ":".join([self.out, str(self.batch), str(self.accum), self.kl_scope, *flags])


def probe(cache: str, model: str, spec: Spec) -> None:
    cfg = TrainConfig(
        cache=Path(cache),
        model=model,
        out=Path(spec.out).parent,
        batch_size=spec.batch,
        grad_accum=spec.accum,
        kl_scope=spec.kl_scope,
        sft_weight=0.5,
        desirable_weight=1.3,
        fsdp=spec.fsdp,
        lora_r=spec.lora_r,
    )
    accelerator = make_accelerator(cfg)
    source = resolve_source(model)
    tokenizer = load_tokenizer(source)
    model_ = load_policy(cfg, source)  # CompletionLogps, fp32, dropout off, train mode: what kto-train trains
    if spec.lora_r:
        lm = adapters.add_adapters(cfg, model_.lm)
        g = torch.Generator().manual_seed(7)
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=g) * 0.05
        model_ = CompletionLogps(lm.train())
    sharding.before_prepare(accelerator, model_.lm)
    wrapped, _ = accelerator.prepare(model_, build_optimizer(model_, cfg))
    data = open_cache(Path(cache))
    # kto-train's plan: prompt groups in one micro-batch (tiny_cache's rows come in pairs), so the
    # split's micro-batches run packed prompts.
    plan = epoch_plan(data.lengths(), MicroBatchShape(spec.batch, spec.accum, accelerator.num_processes), cfg.seed, 0, prompt_groups(data))
    batches = [collate_micro_batch(data, s, tokenizer.pad_token_id) for s in plan[0, accelerator.process_index]]
    settings = loss_settings(cfg)  # kto-train's: prefix sharing on (the tiny cache's rows come in pairs)
    forward_backward(wrapped, batches, settings, accelerator)
    grads = {}
    for n, p in accelerator.unwrap_model(wrapped).named_parameters():
        if p.grad is not None:
            # FSDP2: each rank holds a shard of the gradient (a DTensor); gather the whole one
            # (a collective: every rank takes part).
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[n] = g.detach().clone().contiguous()
    if accelerator.is_main_process:
        # What ran, for the test to check: several probes share one process, so a probe that
        # silently ran DDP instead of FSDP2 would otherwise pass (both give these gradients).
        ran = {"fsdp": str(sharding.is_fsdp(accelerator)), "world": str(accelerator.num_processes)}
        save_file(grads, spec.out, metadata=ran)
    accelerator.wait_for_everyone()


def fresh_accelerator_state() -> None:
    """Forget the last probe's Accelerator (its model, its FSDP plugin) but keep the process group:
    the next probe builds its own, as a new kto-train process would. sharding.promote_cpu_state
    marked the process FSDP in PartialState too; a new process starts as MULTI_CPU."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    AcceleratorState._reset_state(reset_partial_state=False)
    if PartialState._shared_state.get("distributed_type") == DistributedType.FSDP:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU


if __name__ == "__main__":
    cache, model, *texts = sys.argv[1:]
    for s in map(Spec.parse, texts):
        probe(cache, model, s)
        fresh_accelerator_state()
