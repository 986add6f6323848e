"""The torchvision side of scripts/bench/loader.sh: the same SimCLR two-view augmentation
(random resized crop 0.08-1, flip 0.5, colour jitter 0.8s/0.2s with p=0.8, grayscale 0.2,
Gaussian blur with kernel 10% of the side made odd, sigma 0.1-2, p=--blur-prob, ToTensor) with
torchvision transforms on PIL images and a torch DataLoader with --workers worker processes,
on the same files. Prints images/s of two-view batches (source images, each giving two views).

Datasets: cifar10:DIR (official binary, held in memory as torchvision's CIFAR10 does) and
folder:DIR (torchvision ImageFolder over DIR/train).
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision import transforms as T


def simclr_transform(size: int, strength: float, blur_prob: float) -> T.Compose:
    s = strength
    ops = [
        T.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur_prob > 0:
        kernel = (size // 10) // 2 * 2 + 1
        ops.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_prob))
    ops.append(T.ToTensor())
    return T.Compose(ops)


class TwoViews:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)


class CifarBinary(Dataset):
    """CIFAR-10's official binary train files, decoded into memory like torchvision's CIFAR10."""

    def __init__(self, root: str, transform):
        records = [np.fromfile(os.path.join(root, f"data_batch_{i}.bin"), np.uint8).reshape(-1, 3073) for i in range(1, 6)]
        data = np.concatenate(records)
        self.labels = data[:, 0].astype(np.int64)
        self.images = data[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--jitter-strength", type=float, default=0.5)
    p.add_argument("--blur-prob", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    transform = TwoViews(simclr_transform(a.image_size, a.jitter_strength, a.blur_prob))
    kind, root = a.data.split(":", 1)
    if kind == "cifar10":
        ds = CifarBinary(root, transform)
    elif kind == "folder":
        ds = datasets.ImageFolder(os.path.join(root, "train"), transform=transform)
    else:
        sys.exit(f"unsupported dataset {a.data}")
    loader = DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                        drop_last=True, persistent_workers=a.workers > 0)
    wanted, seen, start = a.warmup + a.batches, 0, None
    while seen < wanted:
        for (v1, v2), _ in loader:
            seen += 1
            if seen == a.warmup:
                start = time.perf_counter()
            if seen == wanted:
                break
    seconds = time.perf_counter() - start
    report = {
        "data": a.data, "workers": a.workers, "batch_size": a.batch_size, "image_size": a.image_size,
        "batches": a.batches, "images_per_sec": a.batches * a.batch_size / seconds, "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
    }
    print(f"torchvision loader on {a.data}: {report['images_per_sec']:.0f} images/s", file=sys.stderr)
    print(json.dumps(report) if a.json else report)


if __name__ == "__main__":
    main()
