"""One training step of a ResNet-18-sized model of torch.nn layers, timed as torch runs it
(cuDNN) and after convgpu.torch.convert (our kernels), in the same run on the same inputs.

    python bench/torch_convert_step.py --out bench/results/<date>_<gpu>_<commit>_torch_step.json

A step is zero_grad, forward, cross-entropy, backward and an SGD step. Both sides are timed
the two ways of the design: `cold` (L2 flushed, device synchronised, CUDA events around one
step, so host dispatch counts) and `batch` (K steps back to back between two events, per
step). cuDNN runs with benchmark = True and benchmark_limit = 0, TF32 off. Speed ratio =
torch's time / ours. --device cpu is a smoke run (wall-clock timing, no flush)."""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

# torchvision's BasicBlock, as the DDP example writes it out for its readers
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from ddp_train import Block  # noqa: E402


def resnet18(width=64, classes=1000):
    """torchvision's resnet18 layer for layer (7x7/2 stem, 3x3/2 max pool, [2, 2, 2, 2] basic
    blocks, adaptive average pool, linear)."""
    layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
              nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def step_fn(model, x, y, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def time_cuda(step, reps, batch_k):
    flush = torch.empty(256 * 2 ** 20 // 4, device="cuda")
    cold = []
    for _ in range(reps):
        flush.fill_(1.0)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        cold.append(a.elapsed_time(b))
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    for _ in range(batch_k):
        step()
    b.record()
    b.synchronize()
    return statistics.median(cold), a.elapsed_time(b) / batch_k


def time_cpu(step, reps, batch_k):
    cold = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        cold.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    for _ in range(batch_k):
        step()
    return statistics.median(cold), (time.perf_counter() - t0) * 1e3 / batch_k


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--batch-k", type=int, default=10)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("batch", "size", "width", "reps", "batch_k"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.size < 32:
        p.error("--size must be at least 32 (five halvings)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU")
    import convgpu.torch as ct
    from convgpu.torch import functional as CF
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.benchmark_limit = 0
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    theirs = resnet18(args.width).to(dev, dtype)
    ours = ct.convert(resnet18(args.width).to(dev, dtype))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev, dtype=dtype)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    timer = time_cuda if dev.type == "cuda" else time_cpu
    rows = {}
    for name, model, loss in (("torch", theirs, nn.functional.cross_entropy),
                              ("convgpu", ours, CF.cross_entropy)):
        step = step_fn(model, x, y, loss)
        for _ in range(args.warmup):                 # cuDNN's and our autotuning happen here
            step()
        cold, batch = timer(step, args.reps, args.batch_k)
        rows[name] = {"cold_ms": cold, "batch_ms": batch}
    result = {
        "what": "one SGD step of ResNet-18 (torch.nn layers) vs its convgpu.torch.convert copy",
        "shape": {"batch": args.batch, "size": args.size, "width": args.width,
                  "dtype": args.dtype},
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "timings": rows,
        "speed_ratio": {k: rows["torch"][f"{k}_ms"] / rows["convgpu"][f"{k}_ms"]
                        for k in ("cold", "batch")},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
