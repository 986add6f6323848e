#!/usr/bin/env python3
"""The SimCLR training step of `simclr bench step`, in PyTorch eager, for a side-by-side speed
comparison (scripts/bench/step.sh runs both).

Identical to the Rust step (src/step.rs, src/bench/step.rs) op for op where it matters:
- encoder: the ResNet of src/model/resnet.rs (torchvision's layout, width multiplier on every
  layer, CIFAR stem 3x3/1 without max-pool for <= 32 px or ImageNet stem 7x7/2 + max-pool;
  bias-free convolutions, Kaiming-normal fan-out init), h = global average pool;
- head: Linear(no bias) -> BatchNorm1d -> ReLU -> Linear(bias), hidden = width of h, 128 out;
- both views in one forward pass, under torch.autocast in the chosen dtype (bf16/fp16);
  the input and the model in channels-last memory order on CUDA, cudnn.benchmark on;
- NT-Xent in f32 outside autocast: cosine similarities of the 2N projections, / tau (0.5),
  self pairs masked to -inf, log-softmax, NLL of each view's positive;
- fp16: dynamic loss scaling as torch.amp.GradScaler does it, with its defaults (start 2^16,
  x0.5 on an overflow, which skips the update, x2 after 2000 clean steps), written out with
  GradScaler's own kernels because the LARS here is no torch.optim.Optimizer;
- LARS (src/optim/lars.rs): for rank >= 2 parameters g <- g + wd*w, r = eta*|w|/|g| (1 when
  either norm is 0), v <- m*v + lr*r*g, w <- w - v; batch-norm and bias parameters (rank 1) get
  neither weight decay nor the trust ratio; lr = 2.0 * B / 256, m = 0.9, wd = 1e-4, eta = 1e-3.

Prints one JSON object (the same keys as `simclr bench step --json`) as the last line.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

TEMPERATURE = 0.5
LR, MOMENTUM, WEIGHT_DECAY, TRUST = 2.0, 0.9, 1e-4, 1e-3
PROJ_DIM = 128


def conv(c_in, c_out, k, stride):
    layer = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return layer


class Block(nn.Module):
    def __init__(self, c_in, planes, stride, bottleneck):
        super().__init__()
        kernels, widths = ([1, 3, 1], [planes, planes, planes * 4]) if bottleneck else ([3, 3], [planes, planes])
        strided = 1 if bottleneck else 0
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        c = c_in
        for i, (k, w) in enumerate(zip(kernels, widths)):
            self.convs.append(conv(c, w, k, stride if i == strided else 1))
            self.bns.append(nn.BatchNorm2d(w))
            c = w
        self.downsample = None
        if stride != 1 or c_in != c:
            self.downsample = nn.Sequential(conv(c_in, c, 1, stride), nn.BatchNorm2d(c))

    def forward(self, x):
        y = x
        last = len(self.convs) - 1
        for i, (conv_layer, bn) in enumerate(zip(self.convs, self.bns)):
            y = bn(conv_layer(y))
            if i < last:
                y = F.relu(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ResNet(nn.Module):
    DEPTHS = {
        "resnet18": ([2, 2, 2, 2], False),
        "resnet34": ([3, 4, 6, 3], False),
        "resnet50": ([3, 4, 6, 3], True),
        "resnet101": ([3, 4, 23, 3], True),
        "resnet152": ([3, 8, 36, 3], True),
    }

    def __init__(self, arch, width, cifar_stem):
        super().__init__()
        blocks, bottleneck = self.DEPTHS[arch]
        base = max(1, round(64 * width))
        self.conv1 = conv(3, base, 3, 1) if cifar_stem else conv(3, base, 7, 2)
        self.bn1 = nn.BatchNorm2d(base)
        self.max_pool = not cifar_stem
        layers, c_in = [], base
        for i, count in enumerate(blocks):
            planes = base << i
            for b in range(count):
                layers.append(Block(c_in, planes, (1 if i == 0 else 2) if b == 0 else 1, bottleneck))
                c_in = planes * (4 if bottleneck else 1)
        self.layers = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        if self.max_pool:
            y = F.max_pool2d(y, 3, 2, 1)
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(y), 1), 1)


def linear(c_in, c_out, bias):
    layer = nn.Linear(c_in, c_out, bias=bias)
    bound = 1.0 / c_in**0.5
    nn.init.uniform_(layer.weight, -bound, bound)
    if bias:
        nn.init.uniform_(layer.bias, -bound, bound)
    return layer


class SimClr(nn.Module):
    def __init__(self, arch, width, cifar_stem):
        super().__init__()
        self.encoder = ResNet(arch, width, cifar_stem)
        d = self.encoder.out_dim
        self.head = nn.Sequential(linear(d, d, False), nn.BatchNorm1d(d), nn.ReLU(), linear(d, PROJ_DIM, True))

    def forward(self, x):
        return self.head(self.encoder(x))


def nt_xent(z1, z2):
    z = torch.cat([z1, z2], 0).float()  # [2N, D]
    z = z / z.norm(2, dim=1, keepdim=True).clamp_min(1e-12)
    scores = z @ z.t()  # [2N, 2N]
    views = scores.shape[0]
    self_mask = torch.eye(views, dtype=torch.bool, device=z.device)
    logits = (scores / TEMPERATURE).masked_fill(self_mask, float("-inf"))
    positives = (torch.arange(views, device=z.device) + views // 2) % views
    return F.nll_loss(logits.log_softmax(-1), positives)


class Lars:
    """SimCLR's LARS, batch-norm and bias parameters (rank 1) excluded from decay and adaptation."""

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]
        self.velocity = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def gradients(self):
        return [p.grad for p in self.params if p.grad is not None]

    @torch.no_grad()
    def step(self, lr):
        for p, v in zip(self.params, self.velocity):
            if p.grad is None:
                continue
            if p.dim() >= 2:
                g = p.grad + p * WEIGHT_DECAY
                w_norm, g_norm = p.norm(), g.norm()
                usable = (w_norm > 0) & (g_norm > 0)
                update = g * torch.where(usable, w_norm / g_norm * TRUST, torch.ones_like(w_norm))
            else:
                update = p.grad
            v.mul_(MOMENTUM).add_(update * lr)
            p.sub_(v)


def peak_memory(device, reset=False):
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return {"bytes": torch.cuda.max_memory_allocated(device), "kind": "cuda_allocated"}
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return {"bytes": kib * 1024, "kind": "host_rss"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=sorted(ResNet.DEPTHS))
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--stem", default="auto", choices=["auto", "cifar", "imagenet"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="accepted for simclr's command line; the JSON line is always printed")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    channels_last = device.type == "cuda"
    if channels_last:
        torch.backends.cudnn.benchmark = True
    cifar_stem = {"auto": args.image_size <= 32, "cifar": True, "imagenet": False}[args.stem]
    model = SimClr(args.arch, args.width, cifar_stem).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = Lars(model.parameters())
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    fp16 = args.precision == "fp16"
    scale = torch.full((1,), 65536.0, device=device)
    growth_tracker = torch.zeros(1, dtype=torch.int32, device=device)
    lr = LR * args.batch_size / 256
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    views = [torch.rand(shape, device=device) for _ in range(2)]
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def one_step():
        x = torch.cat(views, 0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            z = model(x)
        z1, z2 = z.chunk(2, 0)
        loss = nt_xent(z1, z2)
        optimizer.zero_grad()
        if not fp16:
            loss.backward()
            optimizer.step(lr)
        else:
            (loss * scale).backward()
            found_inf = torch.zeros(1, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(optimizer.gradients(), found_inf, scale.reciprocal())
            if found_inf.item() == 0:
                optimizer.step(lr)
            torch._amp_update_scale_(scale, growth_tracker, found_inf, 2.0, 0.5, 2000)
        return loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        one_step()
    sync()
    peak_memory(device, reset=True)
    loss_sum = torch.zeros((), device=device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        loss_sum += one_step()
    sync()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    report = {
        "implementation": "pytorch",
        "arch": args.arch,
        "width": args.width,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "precision": args.precision,
        "device": str(device),
        "channels_last": channels_last,
        "threads": torch.get_num_threads(),
        "parameters": parameters,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "images_per_sec": args.steps * args.batch_size / seconds,
        "ms_per_step": 1000 * seconds / args.steps,
        "peak_memory": peak_memory(device),
        "mean_loss": loss_sum.item() / args.steps,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
