"""Few-shot memory banks (medzsad.methods.memory) on the tiny random backbone: nearest-neighbour search,
coreset, the fusion rules, the token tap, and k = 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medzsad.backbone import ClipBackbone, load_clip
from medzsad.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from medzsad.methods.baselines import ClipPromptBaseline, ClipPromptConfig, WinClipBaseline, WinClipConfig
from medzsad.methods.cops import CoPS, CoPSConfig
from medzsad.methods.faprompt import FAPrompt, FAPromptConfig
from medzsad.methods.memory import (
    FewShotConfig,
    FewShotMethod,
    MemoryBank,
    collect_bank,
    default_layers,
    greedy_coreset,
    nearest_similarity,
    resolve_layers,
)
from medzsad.methods.postprocess import gaussian_blur, upsample

SIZE = 112  # 7x7 patch grid with the 16-px tiny backbone


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone(load_clip("medzsad-tiny-fast", pretrained=None, seed=3))


def _method(backbone: ClipBackbone, name: str):
    torch.manual_seed(0)
    builders = {
        "clip": lambda: ClipPromptBaseline(backbone, ClipPromptConfig(image_size=SIZE, sigma=1.0)),
        "winclip": lambda: WinClipBaseline(backbone, WinClipConfig(image_size=SIZE)),
        "anomalyclip": lambda: AnomalyCLIP(backbone, AnomalyCLIPConfig(image_size=SIZE, sigma=1.0)),
        "faprompt": lambda: FAPrompt(backbone, FAPromptConfig(image_size=SIZE, sigma=1.0)),
        "cops": lambda: CoPS(backbone, CoPSConfig(image_size=SIZE, sigma=1.0)),
    }
    return builders[name]().eval()


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_nearest_similarity_equals_brute_force_for_any_block_size():
    generator = torch.Generator().manual_seed(1)
    queries = F.normalize(torch.randn(37, 16, generator=generator), dim=-1)
    bank = F.normalize(torch.randn(101, 16, generator=generator), dim=-1)
    bank[50] = queries[3]  # an exact match
    full = queries @ bank.t()
    brute_values, brute_rows = full.max(dim=1)
    for block in (1, 37, 500, 37 * 7 + 3, 1 << 24):
        values, rows = nearest_similarity(queries, bank, block)
        assert torch.equal(rows, brute_rows), block
        # a product over a block of the bank may round differently from the full one (BLAS blocking)
        torch.testing.assert_close(values, brute_values, rtol=0, atol=1e-6)
    assert rows[3] == 50 and values[3] == pytest.approx(1.0)
    distances = 1 - values
    cdist = torch.cdist(queries.double(), bank.double()).min(dim=1).values ** 2 / 2  # |a-b|²/2 = 1 - cos
    torch.testing.assert_close(distances.double(), cdist, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"empty"):
        nearest_similarity(queries, bank[:0])


def test_greedy_coreset_is_the_farthest_point_sequence():
    generator = torch.Generator().manual_seed(2)
    features = F.normalize(torch.randn(60, 8, generator=generator), dim=-1)
    chosen = greedy_coreset(features, 10).tolist()
    assert chosen[0] == 0 and len(set(chosen)) == 10
    expected = [0]
    for _ in range(9):  # brute force: the row whose nearest chosen row is farthest
        distance = (1 - features @ features[expected].t()).min(dim=1).values
        expected.append(int(distance.argmax()))
    assert chosen == expected
    assert greedy_coreset(features, 100).tolist() == list(range(60))


def test_default_layers_are_the_quarters_of_the_depth():
    assert default_layers(24) == [6, 12, 18, 24]
    assert default_layers(8) == [2, 4, 6, 8]
    assert resolve_layers(FewShotConfig(layers=[-1, 2]), 8) == (2, 8)
    with pytest.raises(ValueError, match=r"fewshot.layers"):
        resolve_layers(FewShotConfig(layers=[9]), 8)
    with pytest.raises(ValueError, match=r"stream"):
        FewShotConfig(stream="other")


@pytest.mark.parametrize("name", ["clip", "winclip", "anomalyclip", "faprompt", "cops"])
def test_tapped_pass_leaves_the_output_unchanged_and_k0_is_zero_shot(backbone, name):
    """The tap only records tokens: predict_with_tokens gives predict's output bit for bit, and the
    few-shot wrapper with an empty bank (k = 0) returns the zero-shot output exactly."""
    method = _method(backbone, name)
    images = _images(2)
    shape = method.noise_shape(False)  # CoPS draws: the same draws for every call
    noise = None if shape is None else torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    plain = method.predict(images, noise)
    tapped, tap = method.predict_with_tokens(images, (2, 8), noise)
    assert sorted(tap.original) == [2, 8] and tap.original[2].shape == (2, 1 + 49, 64)
    wrapped = FewShotMethod(method, MemoryBank({}), FewShotConfig())
    assert wrapped.noise_shape(False) == shape
    empty = wrapped.predict(images, noise)
    for other in (tapped, empty):
        assert torch.equal(other.image_scores, plain.image_scores)
        assert torch.equal(other.anomaly_maps, plain.anomaly_maps)
        assert torch.equal(other.raw_maps, plain.raw_maps)


def test_tap_takes_the_full_image_pass_tokens(backbone):
    """The original-stream tokens the tap records are those of a separate plain pass; the V-V stream
    exists only from the method's DPAM start on."""
    method = _method(backbone, "clip")  # DPAM from block 6
    images = _images(1, seed=4)
    _, tap = method.predict_with_tokens(images, (2, 8))
    encoder = backbone.visual
    with torch.no_grad():
        _, plain = encoder.run_blocks(encoder.embed(images), None, (2,))
    torch.testing.assert_close(tap.original[2], plain[2], rtol=0, atol=1e-6)
    assert 8 in tap.value_value and 2 not in tap.value_value
    winclip = _method(backbone, "winclip")  # windows run after the full pass: never recorded
    _, tap = winclip.predict_with_tokens(images, (8,))
    assert tap.original[8].shape[1] == 1 + 49 and not tap.value_value


@pytest.mark.parametrize("score_rule", ["mean_max", "add_max", "zero_shot"])
@pytest.mark.parametrize("map_rule", ["mean", "sum"])
def test_fused_output_equals_its_definition(backbone, map_rule, score_rule):
    """Map: rule(zero-shot map, blur(upsample(mean over layers of 1 - max cos))); score: rule(score, max)."""
    method = _method(backbone, "clip")
    config = FewShotConfig(layers=[4, 8], map_rule=map_rule, score_rule=score_rule)
    references = _images(3, seed=7)
    bank = collect_bank(method, [references[:2], references[2:]], config, {"k": "3"})
    assert bank.layers == (4, 8) and len(bank) == 3 * 49
    fused = FewShotMethod(method, bank, config).predict(images := _images(2, seed=8))
    zero = method.predict(images)
    _, tap = method.predict_with_tokens(images, (4, 8))
    distances = []
    for layer in (4, 8):
        queries = F.normalize(tap.original[layer][:, 1:], dim=-1)  # [B, 49, C]
        distances.append(1 - (queries @ bank.features[layer].t()).amax(dim=-1))
    patch = torch.stack(distances).mean(dim=0).view(2, 1, 7, 7)
    raw = upsample(patch, (SIZE, SIZE))[:, 0]
    smooth = gaussian_blur(raw, 1.0)
    divisor = 2 if map_rule == "mean" else 1
    torch.testing.assert_close(fused.anomaly_maps, (zero.anomaly_maps + smooth) / divisor, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused.raw_maps, (zero.raw_maps + raw) / divisor, rtol=0, atol=1e-6)
    peak = smooth.flatten(1).amax(dim=1)
    expected = {"mean_max": (zero.image_scores + peak) / 2, "add_max": zero.image_scores + peak}
    torch.testing.assert_close(fused.image_scores, expected.get(score_rule, zero.image_scores), rtol=0, atol=1e-6)
    torch.testing.assert_close(fused.state.few_shot_maps, smooth, rtol=0, atol=1e-6)


def test_a_reference_scores_zero_against_its_own_bank(backbone):
    """An image in the bank has distance 0 at every patch, on any stream and space."""
    images = _images(2, seed=9)
    for config in (FewShotConfig(), FewShotConfig(stream="dpam", layers=[6, 8]), FewShotConfig(project=True)):
        method = _method(backbone, "clip")
        bank = collect_bank(method, [images], config, {})
        out = FewShotMethod(method, bank, config).predict(images)
        assert out.state.few_shot_raw.abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"fewshot.stream"):
        collect_bank(_method(backbone, "winclip"), [images], FewShotConfig(stream="dpam"), {})


def test_coreset_bank_and_layer_mismatch(backbone):
    method = _method(backbone, "clip")
    config = FewShotConfig(layers=[8], max_bank_size=20)
    bank = collect_bank(method, [_images(2, seed=10)], config, {})
    assert len(bank) == 20
    with pytest.raises(ValueError, match=r"fewshot.layers"):
        FewShotMethod(method, bank, FewShotConfig(layers=[4]))
