"""The LM head's per-token log-probs on CPU: `token_logps` (logsumexp in the logits' own memory,
one logits buffer per call reused by its chunks) against the same chunks computed with fresh
tensors and torch.logsumexp, as the package did before (issue 21, the LM head on CPU). Random
hidden states of the given widths; per pass: wall time, CPU time (user + system) and this
process's minor page faults; the two results must agree bit for bit (the same kernels on the
same shapes).

    python tools/bench_lm_head.py --vocab 49152 --hidden 576 --rows 1200,900,1500,600,1100,1800
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch

from kto.formats.compute.logprob import token_logps


def fresh_tensors(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The chunked head with a new logits tensor per chunk and torch's own logsumexp."""
    out = []
    for s in range(0, hidden.shape[0], chunk_size):
        z = hidden[s : s + chunk_size] @ weight.T
        out.append(z.gather(1, targets[s : s + chunk_size, None]).squeeze(1) - torch.logsumexp(z, dim=-1))
    return torch.cat(out)


def timed(fn, inputs, chunk_size: int) -> tuple[float, float, int, list[torch.Tensor]]:
    """(wall s, CPU s of this process: user + system, minor faults, results) of one pass."""
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with torch.inference_mode():
        results = [fn(h, w, t, chunk_size) for h, w, t in inputs]
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, after.ru_minflt - before.ru_minflt, results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=49152, help="V (SmolLM2: 49152)")
    p.add_argument("--hidden", type=int, default=576, help="H (SmolLM2: 576)")
    p.add_argument("--rows", default="1200,900,1500,600,1100,1800", help="completion tokens per call, comma list (one call a batch)")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden, generator=gen) * 0.02
    inputs = [(torch.randn(n, args.hidden, generator=gen), weight, torch.randint(0, args.vocab, (n,), generator=gen)) for n in map(int, args.rows.split(","))]
    paths = {
        "fresh tensors + torch.logsumexp": fresh_tensors,
        "token_logps": lambda h, w, t, c: token_logps(h, w, t, chunk_size=c),
    }
    print(
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads | torch {torch.__version__} | V {args.vocab} H {args.hidden} rows {args.rows}"
    )
    best, results = {}, {}
    for r in range(args.repeats):
        for name, fn in paths.items() if r % 2 == 0 else reversed(paths.items()):
            seconds, cpu, faults, results[name] = timed(fn, inputs, args.chunk_size)
            best[name] = min(best.get(name, (seconds, cpu, faults)), (seconds, cpu, faults))
            print(f"  {name:34s} {seconds:7.3f} s, {cpu:7.3f} CPU s, {faults / 1e3:7.0f} k minor faults")
    a, b = results.values()
    same = all(torch.equal(x, y) for x, y in zip(a, b))
    print(f"best: {', '.join(f'{k} {v[0]:.3f} s, {v[1]:.3f} CPU s / {v[2] / 1e3:.0f} k faults' for k, v in best.items())}; bit-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
