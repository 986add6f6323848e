"""Benchmark datasets, made locally (no download): a CIFAR-10 binary set of 32 px images and
ImageFolder trees of photo-like 500x375 JPEGs (1,000 distinct files, and 10,000 files that are
hard links to those, for the memory check).

Usage: make_data.py OUT_DIR   (idempotent: a finished part is not made again)
"""
import os
import sys

import numpy as np
from PIL import Image

CIFAR_TRAIN, CIFAR_TEST, PHOTOS, CLASSES = 10_000, 1_000, 1_000, 10


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like image: smooth colour fields, a few hard-edged shapes and sensor noise, so
    that JPEG sizes and decode times resemble real photographs (about 50-100 KB at q=90)."""
    small = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(15, 120)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = 0.5 * img[mask] + 0.5 * rng.uniform(0, 255, size=3)
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_cifar(out: str, rng: np.random.Generator) -> None:
    if os.path.exists(os.path.join(out, "test_batch.bin")):
        return
    os.makedirs(out, exist_ok=True)
    per_file = CIFAR_TRAIN // 5
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        n = CIFAR_TEST if name == "test_batch.bin" else per_file
        labels = rng.integers(0, CLASSES, size=n, dtype=np.uint8)
        imgs = np.stack([np.asarray(Image.fromarray(photo(rng, 96, 128)).resize((32, 32), Image.BILINEAR)) for _ in range(n)])
        planar = imgs.transpose(0, 3, 1, 2).reshape(n, -1)  # R plane, G plane, B plane
        records = np.concatenate([labels[:, None], planar], axis=1)
        records.tofile(os.path.join(out, name + ".tmp"))
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))


def write_photos(out: str, rng: np.random.Generator) -> list:
    files = []
    for i in range(PHOTOS):
        split = "val" if (i // CLASSES) % 10 == 0 else "train"
        path = os.path.join(out, split, f"class{i % CLASSES}", f"img{i:05d}.jpg")
        files.append(path)
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(photo(rng, 375, 500)).save(path + ".tmp.jpg", quality=90)
        os.replace(path + ".tmp.jpg", path)
    return files


def link_copies(files: list, out: str, copies: int) -> None:
    """`copies` hard links of every file of the photo set, under new names and classes."""
    for c in range(copies):
        for i, src in enumerate(files):
            split = "val" if (i // CLASSES) % 10 == 0 else "train"
            dst = os.path.join(out, split, f"class{i % CLASSES}", f"img{c:02d}_{i:05d}.jpg")
            if not os.path.exists(dst):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.link(src, dst)


def main() -> None:
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    write_cifar(os.path.join(out, "cifar10"), rng)
    files = write_photos(os.path.join(out, "photos-1k"), rng)
    link_copies(files, os.path.join(out, "photos-10k"), 10)


if __name__ == "__main__":
    main()
