"""Speed yardstick for the training loop: the same LeNet-5 on the same digits, trained by
torch on the same CPU, side by side with convgpu's numpy backend in one run.

    python bench/torch_lenet.py [--epochs 10]

Prints the median epoch time of each and their ratio (convgpu / torch). torch is not a
dependency of convgpu: install it to run this script."""
import argparse
import time

import numpy as np


def torch_epochs(xtr, ytr, xte, yte, epochs, batch, lr, seed, device="cpu"):
    import torch
    import torch.nn as tnn
    torch.manual_seed(seed)
    s = xtr.shape[2] // 4
    net = tnn.Sequential(tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Conv2d(6, 16, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Flatten(), tnn.Linear(16 * s * s, 120), tnn.ReLU(),
                         tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    X, Y = torch.from_numpy(xtr).to(device), torch.from_numpy(ytr).to(device)
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        order = torch.from_numpy(rng.permutation(len(X))).to(device)
        for i in range(0, len(X), batch):
            j = order[i:i + batch]
            opt.zero_grad()
            loss = tnn.functional.cross_entropy(net(X[j]), Y[j])
            loss.backward()
            opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = (net(torch.from_numpy(xte).to(device)).argmax(1).cpu().numpy() == yte).mean()
    return times, float(acc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=["numpy", "cuda"], default="numpy",
                    help="numpy: both on the CPU; cuda: convgpu's CUDA backend vs torch+cuDNN")
    ap.add_argument("--upsample", type=int, default=1)
    a = ap.parse_args()
    import torch
    from convgpu import data as D
    from convgpu.train import train
    x, y = D.digits(a.upsample)
    (xtr, ytr), (xte, yte) = D.split(x, y, 0.2, a.seed)
    # a constant rate, as the torch loop below trains (train's default is a cosine schedule)
    res = train(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, progress=False,
                backend=a.backend, upsample=a.upsample, schedule="none")
    device = "cuda" if a.backend == "cuda" else "cpu"
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    tt, tacc = torch_epochs(xtr, ytr, xte, yte, a.epochs, a.batch_size, a.lr, a.seed, device)
    ours = float(np.median(res.history.epoch_seconds))
    theirs = float(np.median(tt))
    print(f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads): median epoch "
          f"{theirs:.3f} s, test acc {tacc:.4f} after {a.epochs} epochs")
    print(f"convgpu {a.backend} backend: median epoch {ours:.3f} s, test acc "
          f"{res.test_accuracy:.4f} after {a.epochs} epochs")
    print(f"speed ratio torch / convgpu (above 1: convgpu is faster): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
