"""Data-parallel training of a small ResNet on our kernels: torch.nn layers, converted with
convgpu.torch.convert, trained with DistributedDataParallel on scikit-learn's digits (8x8
images, 10 classes). torch does the communication (NCCL on GPUs, gloo on CPUs); convgpu
does every convolution, pooling, batch norm, linear layer, ReLU and the loss, forward and
backward.

    torchrun --nproc_per_node=2 examples/ddp_train.py                  # CPU: gloo
    torchrun --nproc_per_node=4 examples/ddp_train.py --device cuda    # one GPU per process

Each process takes a shard of the training set (DistributedSampler); DDP averages the
gradients, so every rank holds the same weights after every step. Rank 0 prints the loss
and the test accuracy per epoch.
"""
import argparse
import gc
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import convgpu.torch as ct


class Block(nn.Module):
    """torchvision's BasicBlock: two 3x3 conv-bn pairs and a shortcut (1x1 conv + bn where
    the shape changes)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.down is None else self.down(x)
        return self.relu(out)


def small_resnet(width=16, classes=10):
    return nn.Sequential(
        nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))


def digits(dtype):
    """(train, test) TensorDatasets of the 1797 digits, scaled to [0, 1], 80/20 split."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=dtype)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many steps (0: run every epoch)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "width"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_steps < 0:
        p.error("--max-steps must be at least 0")
    if not args.lr > 0:
        p.error("--lr must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        p.error("launch with torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), "
                "e.g. torchrun --nproc_per_node=2 examples/ddp_train.py")
    return args


def evaluate(model, data, device):
    model.eval()
    with torch.no_grad():
        x, y = (t.to(device) for t in data.tensors)
        acc = (model(x).argmax(1) == y).double().mean().item()
    model.train()
    return acc


def main(argv=None):
    args = parse(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)                                  # the same initial weights everywhere
    model = ct.convert(small_resnet(args.width).to(device, dtype))
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    train, test = digits(dtype)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loss_fn = ct.CrossEntropyLoss()
    step, t0 = 0, time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total, n = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = loss_fn(ddp(x), y)
            loss.backward()
            opt.step()
            total, n, step = total + loss.item(), n + 1, step + 1
            if args.max_steps and step >= args.max_steps:
                break
        if rank == 0:
            print(f"epoch {epoch + 1}: loss {total / max(n, 1):.4f}, test accuracy "
                  f"{evaluate(model, test, device):.3f} ({world} processes, {args.device}, "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
        if args.max_steps and step >= args.max_steps:
            break
    # every rank holds the same weights: DDP averaged the same gradients into each
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    spread = flat.clone()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    same = bool(torch.equal(spread, flat))
    ok = torch.tensor([int(same)], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if rank == 0:
        print(f"ranks hold identical weights: {bool(ok.item())}", flush=True)
    same = bool(ok.item())
    # DDP's reducer keeps the process group alive through a reference cycle: freed only by the
    # interpreter's last collection, gloo's worker threads would still run at exit, and one
    # that reaches for the GIL during finalization aborts the process (about 1 run in 10).
    # Free it here, so that destroy_process_group joins them while the interpreter runs.
    del ddp, opt, loader
    gc.collect()
    dist.destroy_process_group()
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
