"""build_optimizer decays matrices only: no weight decay on biases and norm weights (1-D), none
on frozen parameters (not given to the optimizer at all)."""

from types import SimpleNamespace


def test_only_trainable_matrices_are_decayed():
    """A linear layer, a norm and a frozen embedding; with a zero gradient and AdamW's decoupled
    decay, one step at lr 0.1 and decay 0.5 scales the linear weight by 1 − 0.05 and leaves the
    bias and the norm's weight and bias as they were."""
    import torch

    from kto.train.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"linear": torch.nn.Linear(3, 2, dtype=torch.float64), "norm": torch.nn.LayerNorm(2, dtype=torch.float64)})
    model["frozen"] = torch.nn.Embedding(4, 2, dtype=torch.float64).requires_grad_(False)
    cfg = SimpleNamespace(lr=0.1, weight_decay=0.5, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)
    optimizer = build_optimizer(model, cfg)
    groups = [({id(p) for p in g["params"]}, g["weight_decay"]) for g in optimizer.param_groups]
    lin, norm = model["linear"], model["norm"]
    assert groups == [({id(lin.weight)}, 0.5), ({id(lin.bias), id(norm.weight), id(norm.bias)}, 0.0)]

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["linear.weight"], before["linear.weight"] * (1 - 0.1 * 0.5), rtol=1e-15, atol=0)
    for name in ("linear.bias", "norm.weight", "norm.bias", "frozen.weight"):
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["linear.weight"], before["linear.weight"])
