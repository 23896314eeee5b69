"""GPU checks in one command: CUDA against CPU, reduced precision, host syncs, overlap, training steps.

Run on a machine with a GPU (``python scripts/check_cuda.py``); with ``--device cpu`` every step runs
on the CPU against itself, which only proves the script works. For each method it prints:

* fp32 on the device against fp32 on the CPU (same weights, same images): max |Δ score|, |Δ map|;
  PyTorch runs convolutions (the patch embedding) in TF32 on Ampere and later unless told otherwise,
  so the comparison is made with TF32 off and, separately, with PyTorch's defaults;
* bf16 and fp16 against fp32 on the device;
* whether ``predict`` forces the host to wait for the GPU (``torch.cuda.set_sync_debug_mode``): the
  evaluation loop launches the next batch before handing over the last one, which only pays off when
  ``predict`` launches its work without synchronising;
* the engine's inference loop, one batch ahead (``predict_batches``), against a plain loop, with the
  host-side metric work of a real evaluation, in images/s;
* one training step in fp32, bf16 and fp16 (loss scaling): finite loss, prompts moved.

Needs only what the backbone, methods and engine import (open_clip, scipy, scikit-learn); no weights.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from medzsad.backbone import ClipBackbone, load_clip
from medzsad.data.records import Sample, collate_samples
from medzsad.engine.evaluate import _update_metrics
from medzsad.engine.inference import indexed, predict_batches
from medzsad.engine.randomness import method_noise
from medzsad.engine.train import gradient_scaler, optimizer_step
from medzsad.methods.registry import method_class
from medzsad.metrics import MetricAccumulator

PRECISIONS = ("bf16", "fp16")


@contextlib.contextmanager
def tf32(enabled: bool):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled and saved[1]
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def build(name: str, model: str, image_size: int, device: torch.device):
    backbone = ClipBackbone(load_clip(model, pretrained=None, seed=0))
    cls = method_class(name)
    torch.manual_seed(0)
    return cls(backbone, cls.config_class(image_size=image_size)).to(device).eval()


def draws(method, images: torch.Tensor, training: bool = False) -> torch.Tensor | None:
    """The engine's seeded draws for a batch (CoPS samples; ``None`` for the other methods)."""
    noise = method_noise(method, training, 0, [(i,) for i in range(images.shape[0])])
    return None if noise is None else noise.to(images.device)


def predict(method, images: torch.Tensor, precision: str = "fp32"):
    method.backbone.set_precision(precision)
    method._text_cache = None
    with torch.inference_mode():
        output = method.predict(images, draws(method, images))
    method.backbone.set_precision("fp32")
    return output.image_scores.float().cpu(), output.anomaly_maps.float().cpu()


def max_diff(a, b) -> str:
    return f"{float((a[0] - b[0]).abs().max()):.1e}/{float((a[1] - b[1]).abs().max()):.1e}"


def first_sync(method, images: torch.Tensor, device: torch.device) -> str:
    """``none`` if predict launches without waiting for the GPU, else the first synchronising call."""
    if device.type != "cuda":
        return "n/a on CPU"
    predict(method, images)  # warm-up: caches (text, smoothing kernel) are filled once
    noise = draws(method, images)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            method.predict(images, noise)
        return "none"
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:120]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def loop_rates(method, images: torch.Tensor, batch: int, device: torch.device) -> tuple[float, float]:
    """Images/s of an evaluation loop with host metric work: plain, and one batch ahead (the same
    loop on a CPU, where nothing can overlap)."""

    size = images.shape[-1]
    samples = []
    for i, image in enumerate(images.cpu()):
        mask = torch.zeros(size, size, dtype=torch.bool)
        mask[: size // 4, : size // 4] = bool(i % 2)
        samples.append(Sample(image=image, mask=mask, label=i % 2, category="c", sample_id=str(i)))
    batches = [collate_samples(samples[i : i + batch]) for i in range(0, len(samples), batch)]
    batches = [b.pin_memory() if device.type == "cuda" else b for b in batches]

    def plain():
        accumulator = MetricAccumulator()
        for b in batches:
            with torch.inference_mode():
                out = method.predict(b.image.to(device, non_blocking=True), draws(method, b.image))
            scores, maps = out.image_scores.float().cpu().numpy(), out.anomaly_maps.float().cpu().numpy()
            _update_metrics(accumulator, b, scores, maps, pixel=True)

    def ahead():
        accumulator = MetricAccumulator()
        for b in predict_batches(method, indexed(batches), device):
            _update_metrics(accumulator, b, b.pred_score.numpy(), b.anomaly_map.numpy(), pixel=True)

    rates = []
    for loop in (plain, ahead):
        loop()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loop()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(images) / (time.perf_counter() - start))
    return rates[0], rates[1]


def training_step(method, images: torch.Tensor, precision: str, device: torch.device) -> str:
    masks = torch.zeros(images.shape[0], *images.shape[-2:], device=device)
    masks[1::2, : images.shape[-1] // 4, : images.shape[-1] // 4] = 1
    labels = torch.tensor([i % 2 for i in range(images.shape[0])], device=device)
    before = [p.detach().clone() for p in method.trainable_parameters()]
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    scaler = gradient_scaler(precision, device)
    method.train()
    method.backbone.set_precision(precision)
    try:  # CoPS samples in training: the same seeded draws for every precision
        loss = method.loss(images, masks, labels, draws(method, images, training=True)).total
        optimizer_step(loss, optimizer, scaler)
    finally:
        method.backbone.set_precision("fp32")
        method.eval()
    moved = any(not torch.equal(a, b) for a, b in zip(before, method.trainable_parameters()))
    with torch.no_grad():
        for param, value in zip(method.trainable_parameters(), before):
            param.copy_(value)  # leave the prompts as built for the next checks
    return f"{precision} loss {float(loss.detach()):.4f}{'' if moved else ' (step skipped by the loss scaler)'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="medzsad-tiny-fast", help="open_clip architecture, random weights")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--loop-images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["anomalyclip", "faprompt", "cops"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.model} at {args.image_size} px, random weights")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, generator=generator)
    loop_images = torch.randn(args.loop_images, 3, args.image_size, args.image_size, generator=generator)
    for method_name in args.methods:
        on_cpu = predict(build(method_name, args.model, args.image_size, torch.device("cpu")), images)
        method = build(method_name, args.model, args.image_size, device)
        on_device = images.to(device)
        with tf32(False):
            exact = predict(method, on_device)
        with tf32(True):
            default = predict(method, on_device)
        reduced = {p: predict(method, on_device, p) for p in PRECISIONS}
        print(
            f"{method_name}: |Δscore|/|Δmap| against fp32 on CPU: fp32 {max_diff(exact, on_cpu)}, "
            f"fp32 with TF32 convolutions {max_diff(default, on_cpu)}; against fp32 on {device.type}: "
            + ", ".join(f"{p} {max_diff(r, exact)}" for p, r in reduced.items())
        )
        print(f"  host sync inside predict: {first_sync(method, on_device, device)}")
        plain, ahead = loop_rates(method, loop_images, args.batch, device)
        note = "" if device.type == "cuda" else "; on a CPU the two loops are the same work"
        print(
            f"  evaluation loop with metrics: plain {plain:.1f} images/s, one batch ahead {ahead:.1f} "
            f"({ahead / plain:.2f}x{note})"
        )
        steps = [training_step(method, on_device[: args.batch], p, device) for p in ("fp32", *PRECISIONS)]
        print("  one training step: " + "; ".join(steps), flush=True)


if __name__ == "__main__":
    main()
