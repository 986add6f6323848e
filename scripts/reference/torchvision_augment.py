"""Reference outputs of torchvision's augmentation ops for tests/torchvision_augment.rs.

Usage: torchvision_augment.py DIR

Reads DIR/cases.json, written by the test:
  {"images": [{"name": N, "seed": S, "height": H, "width": W}, ...],
   "cases":  [{"name": C, "image": N, "op": OP, ...parameters}, ...]}
writes each image as DIR/N.rgb (u8 HWC) and each case's output as DIR/C.f32 (float32 HWC,
little-endian, on the 0..255 scale, not rounded).

The images are photo-like, since the test machine has no photographs and no network: a
luminance field with the 1/f amplitude spectrum of natural images, smoother colour fields,
a few hard-edged shaded objects in front, clipped highlights, sensor noise and a round trip
through JPEG at quality 85.

The reference is torchvision's tensor path on float images (transforms.v2.functional on
uint8 / 255 tensors), which never rounds between ops; the ops take the parameters the test
gives (crop box, factors, order, kernel size, sigma), so no randomness is involved.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

FILTERS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def pink_noise(rng, h, w, exponent):
    """A zero-mean, unit-std field whose amplitude spectrum falls as 1/f^exponent."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**exponent
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(h, w))
    return field / field.std()


def photo(seed, h, w):
    rng = np.random.default_rng(seed)
    lum = 0.45 + 0.18 * pink_noise(rng, h, w, 1.0)
    chroma = [0.08 * pink_noise(rng, h, w, 1.6) for _ in range(2)]
    tint = rng.uniform(-0.1, 0.1, size=3)
    img = np.stack(
        [lum + chroma[0] + tint[0], lum - 0.5 * chroma[0] + chroma[1] + tint[1], lum - chroma[1] + tint[2]],
        axis=-1,
    )
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(6):  # shaded objects with hard edges
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        colour = rng.uniform(0.0, 1.0, size=3)
        shade = 0.7 + 0.3 * (yy - cy) / ry
        img[inside] = (colour[None, :] * shade[inside][:, None]).clip(0, 1.2)
    img = img * rng.uniform(0.9, 1.3) + rng.normal(scale=0.01, size=img.shape)
    u8 = (img.clip(0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=85)
    return np.asarray(Image.open(buf).convert("RGB"))


def jitter(x, op, factor):
    return {
        "brightness": F.adjust_brightness,
        "contrast": F.adjust_contrast,
        "saturation": F.adjust_saturation,
        "hue": F.adjust_hue,
    }[op](x, factor)


def view(x, p):
    """The whole view in the official order: crop, flip, jitter, grayscale, blur."""
    top, left, height, width = p["crop"]
    x = F.resized_crop(x, top, left, height, width, [p["size"]] * 2, FILTERS[p["filter"]], antialias=True)
    if p["flip"]:
        x = F.horizontal_flip(x)
    if p["jitter"] is not None:
        for op in p["jitter"]["order"]:
            x = jitter(x, op, p["jitter"][op])
    if p["grayscale"]:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if p["blur"] is not None:
        k, sigma = p["blur"]["kernel_size"], p["blur"]["sigma"]
        x = F.gaussian_blur(x, [k, k], [sigma, sigma])
    return x.clamp(0, 1)  # the final conversion to u8 saturates


def apply(x, case):
    op = case["op"]
    if op == "resized_crop":
        top, left, height, width = case["crop"]
        size = [case["size"]] * 2
        return F.resized_crop(x, top, left, height, width, size, FILTERS[case["filter"]], antialias=True)
    if op == "hflip":
        return F.horizontal_flip(x)
    if op in ("brightness", "contrast", "saturation", "hue"):
        return jitter(x, op, case["factor"])
    if op == "grayscale":
        return F.rgb_to_grayscale(x, num_output_channels=3)
    if op == "blur":
        k, sigma = case["kernel_size"], case["sigma"]
        return F.gaussian_blur(x, [k, k], [sigma, sigma])
    if op == "eval":
        size, fraction = case["size"], case["crop_fraction"]
        resized = F.resize(x, [int(size / fraction)], FILTERS[case["filter"]], antialias=True)
        return F.center_crop(resized, [size, size]).clamp(0, 1)  # compared as u8, which saturates
    if op == "view":
        return view(x, case)
    raise ValueError(f"unknown op {op}")


def main():
    out = Path(sys.argv[1])
    spec = json.loads((out / "cases.json").read_text())
    torch.set_num_threads(2)
    images = {}
    for im in spec["images"]:
        pixels = photo(im["seed"], im["height"], im["width"])
        pixels.tofile(out / f"{im['name']}.rgb")
        images[im["name"]] = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    for case in spec["cases"]:
        y = apply(images[case["image"]], case)
        (y * 255).permute(1, 2, 0).contiguous().numpy().astype("<f4").tofile(out / f"{case['name']}.f32")


if __name__ == "__main__":
    main()
