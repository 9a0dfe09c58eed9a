import torch

from kto.formats.compute.numerics import Numerics, parse_numerics, train_numerics


def test_equal_names_mean_equal_numerics():
    assert parse_numerics("auto", torch.device("cpu")).name == "fp32"
    assert parse_numerics("auto", torch.device("cuda")) == Numerics(torch.float32, torch.bfloat16)
    assert train_numerics("fp32", "bf16").name == "amp-bf16"
    assert train_numerics("bf16", "bf16").name == "bf16"  # autocast to the weights' own dtype is a no-op
    assert train_numerics("bf16", "no").name == "bf16"
    assert train_numerics("bf16", "fp16").name == "bf16+amp-fp16"
    assert train_numerics("fp32", "no").compute == torch.float32
