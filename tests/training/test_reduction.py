"""How 2 ranks' steps combine, on a real gloo process group of 2 CPU processes (no Ray):
returnn-ray's ``grad`` rule against RETURNN's own DDP set-up (``DistributedContext``), the
default ``sum`` rule, padding steps, and ``reduce_type: "param"`` through RETURNN's sync.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from returnn_ray.config.validators import check_torch_distributed
from returnn_ray.errors import ConfigError
from returnn_ray.model.losses import LossValue
from returnn_ray.model.build import Padded
from returnn_ray.training.reduction import RankSync, Reduction
from returnn_ray.training.scores import objective

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _losses(model: torch.nn.Module, rank: int) -> dict[str, LossValue]:
    gen = torch.Generator().manual_seed(100 + rank)
    x, y = torch.randn(4 + rank, 3, generator=gen), torch.randint(0, 2, (4 + rank,), generator=gen)
    ce = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    return {"cost:output": LossValue("cost:output", ce, torch.tensor(len(y)))}


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def _run(rank: int, port: int, mode: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        queue.put((rank, _plain(globals()[f"_case_{mode}"](rank))))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _plain(obj):
    """Tensors as nested lists: a queue's shared-memory tensors die with the process that sent them."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", obj.tolist())
    return [_plain(o) for o in obj]


def _tensors(obj):
    if isinstance(obj, tuple):
        return torch.tensor(obj[1])
    return [_tensors(o) for o in obj]


def _case_returnn_grad(rank: int):
    """RETURNN's DDP (its DistributedContext, reduce_type grad) on RETURNN's objective (the summed loss)."""
    from returnn.torch.distributed import DistributedContext

    os.environ.update(
        _RETURNN_TORCH_DISTRIBUTED_INIT_INFO=repr({"rank": rank, "size": WORLD, "hostnames": None}),
        LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
    )
    model = _model()
    ddp = DistributedContext({"reduce_type": "grad"}).maybe_make_distributed_module(model)
    gen = torch.Generator().manual_seed(100 + rank)
    x, y = torch.randn(4 + rank, 3, generator=gen), torch.randint(0, 2, (4 + rank,), generator=gen)
    torch.nn.functional.cross_entropy(ddp(x), y, reduction="sum").backward()
    return _grads(model)


def _ours(rank: int, reduction: Reduction, *, pad_rank: int | None = None):
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(Padded(model), **reduction.ddp_kwargs())
    if rank == pad_rank:
        with torch.no_grad():  # a poisoned dummy batch: must not matter
            model.weight[0, 0] = model.weight[0, 0]  # (params stay finite; the data is never run)
        ddp(padding=True).backward()
    else:
        objective(_losses(ddp, rank), scale=reduction.loss_scale(WORLD)).backward()
    return _grads(model)


def _case_ours_grad(rank: int):
    return _ours(rank, Reduction.from_setting({"reduce_type": "grad"}))


def _case_ours_sum(rank: int):
    return _ours(rank, Reduction.from_setting(None))


def _case_ours_grad_padding(rank: int):
    return _ours(rank, Reduction.from_setting({}), pad_rank=1)


def _case_param(rank: int):
    """Each rank steps its own SGD; RETURNN's sync averages after every 2nd update of the epoch."""
    model = _model()
    sync = RankSync(Reduction.from_setting({"reduce_type": "param", "param_sync_step": 2}), rank=rank, world_size=WORLD)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    after = []
    for update in range(2):
        opt.zero_grad()
        objective(_losses(model, rank + 2 * update)).backward()
        opt.step()
        sync.after_update(model, opt, update)
        after.append([p.detach().clone() for p in model.parameters()])
    return after


def _spawn(mode: str) -> list:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_run, args=(r, port, mode, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in range(WORLD))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return [_tensors(results[r]) for r in range(WORLD)]


def _single_process_grads(ranks: list[int]) -> list[torch.Tensor]:
    """One worker accumulating the ranks' batches: the sum of their summed-loss gradients."""
    model = _model()
    for rank in ranks:
        objective(_losses(model, rank)).backward()
    return _grads(model)


def test_grad_rule_is_returnns_ddp_mean():
    theirs, ours = _spawn("returnn_grad"), _spawn("ours_grad")
    for t, o in zip(theirs[0], ours[0]):
        torch.testing.assert_close(o, t)
    for t, one in zip(theirs[0], _single_process_grads([0, 1])):
        torch.testing.assert_close(t, one / WORLD)  # RETURNN's rule: the mean over ranks


def test_default_sum_rule_equals_one_worker_accumulating():
    ours = _spawn("ours_sum")
    for o, one in zip(ours[0], _single_process_grads([0, 1])):
        torch.testing.assert_close(o, one)
    for a, b in zip(*ours):
        torch.testing.assert_close(a, b)


def test_padding_rank_adds_zero_gradient():
    ours = _spawn("ours_grad_padding")
    for rank_grads in ours:
        for o, one in zip(rank_grads, _single_process_grads([0])):
            assert torch.isfinite(o).all()
            torch.testing.assert_close(o, one / WORLD)


def test_param_rule_averages_every_param_sync_step_updates():
    after = _spawn("param")
    first = [torch.stack([after[r][0][i] for r in range(WORLD)]) for i in range(2)]
    assert not torch.allclose(first[0][0], first[0][1])  # update 0 of 2: each rank its own
    for i in range(2):
        assert torch.equal(after[0][1][i], after[1][1][i])  # update 1: RETURNN averaged them


@pytest.mark.parametrize(
    "opts, words",
    [
        ({"reduce_type": "param"}, "param_sync_step"),
        ({"reduce_type": "sum"}, "reduce_type"),
        ({"backend": "nccl"}, "'backend'"),
        ({"sync": []}, "'sync'"),
        ({"dataset_distribution": "random_seed_offset"}, "dataset_distribution"),
        ({"sync_at_epoch_end": False}, "sync_at_epoch_end"),
        ({"reduce_type": "param", "param_sync_step": 5, "options": {}}, "'class'/'options'"),
        ({"typo_option": 1}, "'typo_option'"),
    ],
)
def test_torch_distributed_options_refused_in_one_line(opts, words):
    with pytest.raises(ConfigError, match=words):
        check_torch_distributed(opts)
