"""DistributedDataParallel over a converted model: two processes with gloo on the CPU train
the converted ResNet for a few steps, each on its half of every batch; both ranks must
hold identical weights, equal (float64, 1e-10) to one process training torch's own,
unconverted model on the same halves (the mean of the two halves' losses: what DDP's
averaged gradient is; batch norm normalises each half by its own statistics, as it does on
each rank). And examples/ddp_train.py under torchrun."""
import gc
import os
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from torch_resnet import rel, resnet, sgd_steps  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH, DEADLINE_S = 3, 4, 180


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batches():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(2 * BATCH, 1, 10, 10, dtype=torch.float64, generator=g),
             torch.randint(0, 10, (2 * BATCH,), generator=g)) for _ in range(STEPS)]


def worker(rank, world, port, out_dir):
    """One rank: the converted ResNet under DDP, SGD on its half of each batch."""
    import convgpu.torch as ct
    from convgpu.torch import functional as CF
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        model = ct.convert(resnet())
        ddp = DDP(model)
        halves = [(x[rank * BATCH:(rank + 1) * BATCH], y[rank * BATCH:(rank + 1) * BATCH])
                  for x, y in batches()]
        sgd_steps(ddp, halves, loss_fn=CF.cross_entropy)
        torch.save({n: p.detach() for n, p in model.named_parameters()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # free DDP's hold on the group before destroying it (examples/ddp_train.py says why)
        del ddp
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_ranks_match_one_process(tmp_path):
    ctx = mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"the two DDP ranks did not finish in {DEADLINE_S} s")
    finally:
        for p in ctx.processes:                 # only ours, and only if still running
            if p.is_alive():
                p.terminate()
                p.join(10)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    reference = resnet()
    sgd_steps(reference, [[(x[:BATCH], y[:BATCH]), (x[BATCH:], y[BATCH:])]
                          for x, y in batches()])
    assert ranks[0].keys() == ranks[1].keys() == dict(reference.named_parameters()).keys()
    for name, p in reference.named_parameters():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between ranks"
        assert rel(ranks[0][name], p) <= 1e-10, name
    assert any(rel(ranks[0][n], q) > 1e-3 for n, q in resnet().named_parameters()), \
        "the weights did not move"


def test_ddp_example_under_torchrun():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", os.path.join(ROOT, "examples", "ddp_train.py"),
           "--epochs", "1", "--max-steps", "3", "--width", "4", "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE_S, env=env,
                         cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "epoch 1: loss" in run.stdout
    assert "ranks hold identical weights: True" in run.stdout


def test_ddp_example_needs_torchrun():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "ddp_train.py")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2 and "launch with torchrun" in run.stderr
    assert "Traceback" not in run.stderr
