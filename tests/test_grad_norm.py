"""``maximize_grad_norm`` as RETURNN's TF updater has it: the gradient of the objective plus the
gradient of ``-factor * ||g||`` (``g`` the whole step's gradient), on one rank and under DDP.

The expected gradient is computed here the direct way, by differentiating the norm of the
gradient with torch autograd (double backward), on the union of the ranks' batches; the code
under test goes through a surrogate objective and (under DDP) an all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from returnn_ray.training.grad_norm import with_grad_norm_term

FACTOR = 0.3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)


def _sum_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).sum()


def _expected_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """RETURNN: grad + d(-factor * global_norm(grad))/dθ, by plain double backward."""
    params = list(model.parameters())
    grads = torch.autograd.grad(_sum_loss(model, x, y), params, create_graph=True)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    ext = torch.autograd.grad(-FACTOR * norm, params)
    return [(g + e).detach() for g, e in zip(grads, ext)]


def test_one_rank_adds_the_gradient_of_minus_factor_times_the_grad_norm():
    model = _model()
    x, y = _data()
    expected = _expected_grads(model, x, y)
    plain = [g.detach() for g in torch.autograd.grad(_sum_loss(model, x, y), list(model.parameters()))]
    with_grad_norm_term(_sum_loss(model, x, y), model.parameters(), FACTOR, world_size=1).backward()
    for p, e, g in zip(model.parameters(), expected, plain):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(e, g, atol=1e-4)  # the term is there (the test can fail)


def _ddp_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x, y = _data()
        mine = slice(rank * 3, rank * 3 + 3)
        # as returnn_ray.training.scores.objective: W × the rank's sum, DDP averages over the ranks
        loss = world_size * _sum_loss(ddp, x[mine], y[mine])
        with_grad_norm_term(loss, model.parameters(), FACTOR, world_size=world_size).backward()
        torch.save([p.grad for p in model.parameters()], f"{out_dir}/grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_give_the_term_of_the_reduced_gradient(tmp_path):
    """Two gloo ranks with half the batch each update as one rank with all of it (RETURNN with
    Horovod: the norm of the all-reduced gradient)."""
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model = _model()
    expected = _expected_grads(model, *_data())
    for rank in range(2):
        got = torch.load(tmp_path / f"grads{rank}.pt")
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
