"""oneDNN routing of batch-1 3D convolutions (MedXAILib.model.convolution): PyTorch's own convolution is
the reference for every output and input gradient, the slow kernel is gone inside the block, and
everything the block changes is given back."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from MedXAILib.model.convolution import onednn_convolutions, routes_to_onednn, slow_kernel_call
from MedXAILib.model.layout import fast_convolutions, to_channels_last

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def _output_and_gradient(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = x.clone().requires_grad_(True)
    y = module(z)
    return y.detach(), torch.autograd.grad((y * y).sum(), z)[0]


def _kernels(run) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        run()
    return {event.key for event in prof.key_averages()}


CASES = [dict(stride=s, dilation=d, padding_mode=m, bias=b, kernel_size=k, padding=p)
         for s, d, m, b, (k, p) in itertools.product(
             (1, 2), (1, 2), ("zeros", "reflect", "replicate", "circular"), (True, False),
             ((3, 1), (3, 0), ((1, 3, 3), (0, 1, 1)), (5, 2), (3, 3)))
         if not (m != "zeros" and p == 3)]  # padding wider than the input is not defined for those modes


@pytest.mark.parametrize("layout", ["NCDHW", "channels-last"])
def test_routed_convolutions_equal_pytorch_s_output_and_input_gradient(layout):
    torch.manual_seed(0)
    worst = 0.0
    for case in CASES:
        conv = torch.nn.Conv3d(3, 5, **case).requires_grad_(False)
        x = torch.randn(1, 3, 13, 12, 11)
        x = to_channels_last(x) if layout == "channels-last" else x
        expected = _output_and_gradient(conv, x)
        with onednn_convolutions(conv):
            assert "_conv_forward" in conv.__dict__, case
            found = _output_and_gradient(conv, x)
            with torch.no_grad():
                without_graph = conv(x)
        for a, b in zip(expected, (*found, without_graph)):
            assert a.shape == b.shape, case
            worst = max(worst, float((a - b).abs().max() / a.abs().max()))
        assert "_conv_forward" not in conv.__dict__
    assert worst < 1e-5, worst


def test_inside_the_block_no_convolution_runs_pytorch_s_slow_kernel():
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.Conv3d(4, 2, 3, stride=2))
    network.requires_grad_(False)
    x = torch.randn(1, 1, 16, 16, 16)  # N * C * D * H of 256 to 1,024: under PyTorch's threshold for oneDNN

    def run():
        _output_and_gradient(network, x)

    assert any("slow_conv3d" in name for name in _kernels(run)), "PyTorch itself picks its slow kernel here"
    with onednn_convolutions(network):
        inside = _kernels(run)
    assert not any("slow_conv3d_forward" in name for name in inside) and any("mkldnn" in n for n in inside), inside


@pytest.mark.parametrize("shape, kernel", [((1, 4, 16, 16, 16), 3), ((1, 8, 48, 48, 8), 3), ((1, 9, 48, 48, 8), 3),
                                           ((2, 4, 16, 16, 16), 3), ((1, 4, 16, 16, 16), (3, 5, 5))])
def test_slow_kernel_call_says_where_pytorch_picks_its_slow_kernel(shape, kernel):
    """The rule the routing follows is PyTorch's own: if a torch release changes its heuristic, this fails."""
    conv = torch.nn.Conv3d(shape[1], 4, kernel).requires_grad_(False)
    x = torch.randn(shape)
    with torch.no_grad():
        slow = any("slow_conv3d" in name for name in _kernels(lambda: conv(x)))
    assert slow_kernel_call(x, conv.weight) == slow


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_calls_that_need_what_onednn_does_not_give_run_pytorch_s_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)  # trainable: the weight gradient is PyTorch's
    x = torch.randn(1, 2, 8, 8, 8)
    y = conv(x).square().sum()
    expected = torch.autograd.grad(y, conv.weight)[0]
    with onednn_convolutions(conv):
        found = torch.autograd.grad(conv(x).square().sum(), conv.weight)[0]
        conv.requires_grad_(False)
        double = conv.double()(x.double())  # float64 is not routed
        conv.float()
    assert torch.allclose(found, expected, rtol=1e-5, atol=1e-6)
    assert double.dtype == torch.float64

    class Standardised(torch.nn.Conv3d):  # its own _conv_forward: left alone
        def _conv_forward(self, input, weight, bias):
            return super()._conv_forward(input, weight - weight.mean(), bias)

    skipped = [Standardised(2, 2, 3), torch.nn.Conv3d(2, 2, 1), torch.nn.Conv3d(2, 2, 3, groups=2),
               torch.nn.Conv3d(2, 2, 3, padding="same")]
    assert not any(routes_to_onednn(m) for m in skipped)
    assert routes_to_onednn(torch.nn.Conv3d(2, 2, 3))
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv3d(1, 1, 3)))
    elsewhere = torch.nn.Sequential(torch.nn.Conv3d(1, 1, 3)).to("meta")  # weights off the CPU (as on CUDA)
    for network in (scripted, elsewhere):
        with onednn_convolutions(network):
            assert not any("_conv_forward" in m.__dict__ for m in network.modules())


def test_the_block_gives_everything_back_nested_after_an_error_and_in_copies():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv3d(3, 2, 3, padding=1)).requires_grad_(False)
    x = torch.randn(1, 1, 10, 9, 8)
    expected = _output_and_gradient(network, x)
    with pytest.raises(RuntimeError, match="stop"):
        with fast_convolutions(network):
            with fast_convolutions(network):  # an inner block changes nothing and gives nothing back early
                pass
            assert all("_conv_forward" in m.__dict__ for m in network if isinstance(m, torch.nn.Conv3d))
            copied = copy.deepcopy(network)  # a copy made inside computes the same values
            for a, b in zip(expected, _output_and_gradient(copied, to_channels_last(x))):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
            raise RuntimeError("stop")
    assert not any("_conv_forward" in m.__dict__ or "_medxai_onednn" in m.__dict__ for m in network.modules())
    assert all(p.is_contiguous() for p in network.parameters())  # the layout given back too
    for a, b in zip(expected, _output_and_gradient(network, x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_gradients_through_normalised_networks_agree_with_float64(norm):
    """Instance norm at batch 1 returns a wrong input gradient for a channels-last output gradient
    (torch 2.13, CPU), which oneDNN convolutions after it produce: such networks keep NCDHW."""
    torch.manual_seed(0)
    layer = (lambda c: torch.nn.InstanceNorm3d(c, affine=True)) if norm == "instance" else torch.nn.BatchNorm3d
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 16, 3, padding=1), layer(16), torch.nn.PReLU(),
                                  torch.nn.Conv3d(16, 16, 3, padding=1), layer(16),  # a norm straight into a convolution
                                  torch.nn.Conv3d(16, 2, 3, padding=1)).eval().requires_grad_(False)
    x = torch.randn(1, 1, 40, 40, 40)  # 16 channels x 40 x 40 > 20,480: PyTorch itself picks oneDNN here

    def gradient(dtype=torch.float32, fast=True):
        z = (to_channels_last(x) if fast else x).to(dtype).requires_grad_(True)
        return torch.autograd.grad(network(z)[:, 1].square().sum(), z)[0].double()

    with fast_convolutions(network):
        found = gradient()
    network.double()
    reference = gradient(torch.float64, fast=False)
    assert float((found - reference).abs().max() / reference.abs().max()) < 1e-5
