"""Inference and training speed of medzsad against a deliberately plain path that mirrors the official code.

The plain path is what the official scripts do: fp32, one image at a time, the text encoder run again
for every image (no cache) over the whole 77-token context, attention written as ``softmax(q kᵀ/√d) v``
with explicit matrix products for both the original and the V-V stream. Our path: batches, fused
scaled-dot-product attention for both streams from one qkv projection, text features cached where they
do not depend on the image, text encoded only up to the last EOT token, ``inference_mode``, and on a
GPU bf16/fp16 transformer blocks (``--precision``) and optional ``torch.compile``.

Both paths run in this one process on the same inputs and the same random-weight backbone (no weights
are downloaded); the script prints images/s, the ratio, peak memory and how far the outputs differ.

With ``--predict-images N`` it adds a ``predict`` row per method: ``medzsad predict`` on a folder of N
PNG files (reading, transform, model, maps + overlays + CSV written) against the evaluation loop of
``medzsad test`` on the same folder (reading, transform, model, metrics). Both run the engine's one
inference loop (``medzsad.engine.inference.predict_batches``), so the ratio shows what the writing costs.

    python scripts/bench_inference.py                        # CPU: ViT-L-14-336 at 518 px, 2 images
    python scripts/bench_inference.py --images 64 --batch 32 --precision bf16   # on a GPU
    python scripts/bench_inference.py --model medzsad-tiny-fast --image-size 224 --predict-images 64
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medzsad.backbone import ClipBackbone, PromptableTextEncoder, load_clip
from medzsad.data.datasets import FolderDataset
from medzsad.data.transforms import ClipImageTransform
from medzsad.engine.config import EvalConfig
from medzsad.engine.evaluate import evaluate
from medzsad.engine.predict import predict_paths
from medzsad.engine.randomness import method_noise
from medzsad.methods.registry import method_class


def plain_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """Attention as the official code writes it: explicit scores, softmax, product (fp32)."""
    scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores + attn_mask
    return scores.softmax(dim=-1) @ v


_encode_text = PromptableTextEncoder.forward


def full_context_text(self, *args, length=None, **kwargs):
    """The text encoder over the whole 77-token context, as the official code runs it."""
    return _encode_text(self, *args, **kwargs)


@contextlib.contextmanager
def plain_path() -> Iterator[None]:
    with (
        mock.patch.object(F, "scaled_dot_product_attention", plain_attention),
        mock.patch.object(PromptableTextEncoder, "forward", full_context_text),
    ):
        yield


class PeakMemory:
    """Peak device memory (CUDA) or peak resident set size above the start (CPU), in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0.0
        self._stop = threading.Event()

    def _rss(self) -> float:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated() / 2**20
        else:
            self._base = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss() - self._base)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20 - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss() - self._base)


@dataclass
class Timing:
    images_per_s: float
    peak_mib: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, count: int, run: Callable[[], object]) -> Timing:
    with PeakMemory(device) as memory:
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        elapsed = time.perf_counter() - start
    return Timing(count / elapsed, memory.peak)


def bench_method(name: str, backbone: ClipBackbone, images: torch.Tensor, args, device: torch.device) -> dict:
    cls = method_class(name)
    torch.manual_seed(0)
    method = cls(backbone, cls.config_class(image_size=args.image_size)).to(device).eval()

    def draws(first: int, count: int):
        """CoPS's seeded draws of images ``first .. first + count - 1`` (the same in both paths)."""
        return method_noise(method, False, 0, [(i,) for i in range(first, first + count)])

    def plain_predict(batch: torch.Tensor):
        outputs = []
        method.backbone.set_precision("fp32")
        with plain_path(), torch.no_grad():
            for index, image in enumerate(batch):
                method._text_cache = None  # the official test recomputes the text for every image
                outputs.append(method.predict(image[None].to(device), draws(index, 1)))
        return outputs

    def ours_predict(batch: torch.Tensor):
        outputs = []
        method.backbone.set_precision(args.precision)
        with torch.inference_mode():
            for start in range(0, len(batch), args.batch):
                chunk = batch[start : start + args.batch]
                outputs.append(predictor(chunk.to(device, non_blocking=True), draws(start, len(chunk))))
        return outputs

    predictor = torch.compile(method.predict) if args.compile else method.predict
    plain_predict(images[:1])  # warm-up, excluded
    ours_predict(images[: args.batch])
    plain_out: list = []
    ours_out: list = []
    plain = timed(device, len(images), lambda: plain_out.extend(plain_predict(images)))
    ours = timed(device, len(images), lambda: ours_out.extend(ours_predict(images)))
    plain_scores = torch.cat([o.image_scores.float().cpu() for o in plain_out])
    ours_scores = torch.cat([o.image_scores.float().cpu() for o in ours_out])
    plain_maps = torch.cat([o.anomaly_maps.float().cpu() for o in plain_out])
    ours_maps = torch.cat([o.anomaly_maps.float().cpu() for o in ours_out])
    result = {
        "method": name,
        "plain_img_s": plain.images_per_s,
        "ours_img_s": ours.images_per_s,
        "ratio": ours.images_per_s / plain.images_per_s,
        "plain_peak_mib": plain.peak_mib,
        "ours_peak_mib": ours.peak_mib,
        "score_diff": float((plain_scores - ours_scores).abs().max()),
        "map_diff": float((plain_maps - ours_maps).abs().max()),
    }
    if args.train_steps > 0:
        result.update(bench_training(method, images, args, device))
    if args.predict_images > 0:
        result.update(bench_predict(method, args, device))
    return result


def bench_predict(method, args, device: torch.device) -> dict:
    """images/s of ``medzsad test``'s evaluation loop and of ``medzsad predict`` on one folder of PNGs."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.predict_images):
            pixels = rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        transform = ClipImageTransform(args.image_size)
        dataset = FolderDataset(folder, transform=transform)
        config = EvalConfig(batch_size=args.batch, precision=args.precision, pixel_metrics=False)

        def test() -> None:
            evaluate(method, dataset, config, device, "bench")

        def predict() -> None:
            out = Path(tempfile.mkdtemp(dir=tmp))
            predict_paths(method, [folder], out, device, transform, args.batch, args.precision, report=print)

        test()  # warm-up of both, excluded
        predict()
        test_rate = timed(device, args.predict_images, test).images_per_s
        predict_rate = timed(device, args.predict_images, predict).images_per_s
    return {"test_img_s": test_rate, "predict_img_s": predict_rate, "predict_ratio": predict_rate / test_rate}


def bench_training(method, images: torch.Tensor, args, device: torch.device) -> dict:
    batch = images[: args.train_batch].to(device)
    masks = torch.zeros(batch.shape[0], *batch.shape[-2:], device=device)
    masks[1::2, : args.image_size // 4, : args.image_size // 4] = 1
    labels = torch.tensor([i % 2 for i in range(batch.shape[0])], device=device)
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)

    def steps(use_plain: bool) -> None:
        method.train()
        method.backbone.set_precision("fp32" if use_plain else args.precision)
        with plain_path() if use_plain else contextlib.nullcontext():
            for _ in range(args.train_steps):
                loss = method.loss(batch, masks, labels).total
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        method.eval()

    steps(True)  # warm-up of both paths, excluded
    steps(False)
    count = args.train_steps * batch.shape[0]
    plain = timed(device, count, lambda: steps(True))
    ours = timed(device, count, lambda: steps(False))
    return {
        "train_plain_img_s": plain.images_per_s,
        "train_ours_img_s": ours.images_per_s,
        "train_ratio": ours.images_per_s / plain.images_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-L-14-336", help="open_clip architecture (random weights)")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--images", type=int, default=2, help="images per timed pass")
    parser.add_argument("--batch", type=int, default=2, help="our batch size")
    parser.add_argument("--methods", nargs="+", default=["anomalyclip", "faprompt", "cops"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile our predict")
    parser.add_argument("--train-steps", type=int, default=1, help="training steps per timed pass (0: skip)")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--predict-images", type=int, default=0, help="images of the predict row's folder (0: skip)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    backbone = ClipBackbone(load_clip(args.model, pretrained=None, seed=0)).to(device)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model} at {args.image_size} px, random weights, {name}, ours: batch {args.batch}, {args.precision}")
    header = (
        f"{'method':<12}{'plain img/s':>12}{'ours img/s':>12}{'ratio':>8}{'plain MiB':>11}{'ours MiB':>10}"
        f"{'|Δscore|':>10}{'|Δmap|':>10}{'train plain':>13}{'train ours':>12}{'ratio':>8}"
    )
    print(header)
    for method in args.methods:
        r = bench_method(method, backbone, images, args, device)
        train = (
            f"{r['train_plain_img_s']:>13.3f}{r['train_ours_img_s']:>12.3f}{r['train_ratio']:>8.2f}"
            if "train_ratio" in r
            else ""
        )
        print(
            f"{r['method']:<12}{r['plain_img_s']:>12.3f}{r['ours_img_s']:>12.3f}{r['ratio']:>8.2f}"
            f"{r['plain_peak_mib']:>11.0f}{r['ours_peak_mib']:>10.0f}{r['score_diff']:>10.1e}{r['map_diff']:>10.1e}"
            + train,
            flush=True,
        )
        if "predict_ratio" in r:
            print(
                f"{'':<12}predict: test loop {r['test_img_s']:.3f} img/s, folder prediction {r['predict_img_s']:.3f} "
                f"img/s, ratio {r['predict_ratio']:.2f} (batch {args.batch}, {args.predict_images} PNGs)",
                flush=True,
            )


if __name__ == "__main__":
    main()
