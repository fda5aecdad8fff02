"""CUDA checks (marker `cuda`; benchmarks/gpu_check.sh runs them): mixed-precision training and search
steps, the sliding window on the GPU against the CPU, and NCCL between two processes. Skipped without CUDA."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]


def _device() -> torch.device:
    return torch.device("cuda", 0)


def test_amp_training_step_runs_in_reduced_precision_and_tracks_float32():
    from scnas.models.uresnet import UResNet
    from scnas.train.engine import Precision
    from scnas.train.loss import jaccard_loss

    device = _device()
    torch.manual_seed(0)
    x = torch.randn((2, 1, 32, 32, 32), device=device)
    y = torch.randint(0, 3, (2, 32, 32, 32), device=device)
    losses = {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = UResNet(1, 3, base_channels=8).to(device)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        precision = Precision(device, amp)
        seen: list[torch.dtype] = []
        hook = model.stem[0].register_forward_hook(lambda module, args, out, seen=seen: seen.append(out.dtype))
        with precision.autocast():
            loss = jaccard_loss(model(x), y)
        hook.remove()
        assert seen == [precision.dtype if precision.enabled else torch.float32]
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(optimizer)
        assert torch.isfinite(loss)
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        losses[amp] = float(loss.detach())
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)


def test_amp_search_step_updates_weights_and_alphas():
    from scnas.nas import SearchNetwork
    from scnas.train.engine import Precision
    from scnas.train.loss import jaccard_loss

    device = _device()
    torch.manual_seed(0)
    net = SearchNetwork(1, 3, 8, sampling="two", seed=0).to(device)
    precision = Precision(device, True)
    for params in (net.weight_parameters(), net.arch_parameters()):
        before = [p.detach().clone() for p in params]
        optimizer = torch.optim.Adam(params, lr=1e-2)
        x = torch.randn((1, 1, 32, 32, 32), device=device)
        y = torch.randint(0, 3, (1, 32, 32, 32), device=device)
        with precision.autocast():
            loss = jaccard_loss(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss, inputs=params)
        precision.step(optimizer)
        assert torch.isfinite(loss)
        assert any(not torch.equal(b, p) for b, p in zip(before, params))


def test_sliding_window_on_the_gpu_equals_the_cpu():
    from scnas.inference.sliding_window import sliding_window

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU(), torch.nn.Conv3d(4, 3, 1)
    ).eval()
    image = torch.randn((1, 40, 36, 30))
    cpu = sliding_window(image, net, (16, 16, 16), mirror_axes=(0, 1, 2))
    gpu = sliding_window(image.to(_device()), net.to(_device()), (16, 16, 16), mirror_axes=(0, 1, 2))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def _nccl_rank(rank: int, port: int, queue) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from scnas.train.distributed import init_distributed

    ctx = init_distributed(prefer_cuda=True)
    mean = ctx.all_reduce_mean(torch.full((3,), float(rank + 1), device=ctx.device))
    queue.put((rank, ctx.backend, str(ctx.device), mean.cpu().tolist()))
    ctx.close()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between two processes needs two GPUs")
def test_nccl_all_reduce_between_two_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_nccl_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [r[1] for r in results] == ["nccl", "nccl"]
    assert [r[2] for r in results] == ["cuda:0", "cuda:1"]
    assert all(r[3] == [1.5, 1.5, 1.5] for r in results)
