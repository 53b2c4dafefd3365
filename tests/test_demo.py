import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from cfx.core.data import open_source
from cfx.core.training import train_model
from cfx.core.shifts import SHIFTS
from cfx.demo import (CAUSES, SHAPES, ShapesWorld, WorldConfig, apply_cause, cause_examples, digits_data,
                      shapes_data, split_indices)
from cfx.core.nets import ConvAutoencoder, SmallCNN


@pytest.fixture(scope="module")
def small_world():
    return shapes_data(WorldConfig(n_images=240, seed=3))


def test_world_is_deterministic_by_seed(small_world):
    again = shapes_data(WorldConfig(n_images=240, seed=3))
    assert torch.equal(small_world.images, again.images) and torch.equal(small_world.labels, again.labels)
    other = shapes_data(WorldConfig(n_images=240, seed=4))
    assert not torch.equal(small_world.images, other.images)
    assert small_world.images.shape == (240, 3, 32, 32)
    assert 0.0 <= small_world.images.min() and small_world.images.max() <= 1.0


def test_world_has_all_classes_and_metadata(small_world):
    counts = torch.bincount(small_world.labels, minlength=len(SHAPES))
    assert len(SHAPES) >= 6 and (counts == 240 // len(SHAPES)).all()
    row = small_world.metadata[0]
    for key in ("shape", "object_hue", "background_hue", "texture", "size", "x", "y", "rotation"):
        assert key in row
    assert row["shape"] == SHAPES[int(small_world.labels[0])]
    rec = next(iter(small_world.source("test")))
    assert rec.metadata["split"] == "test" and rec.id.startswith("shapes-")


def test_splits_follow_parce_proportions():
    s = split_indices(1000)
    assert (len(s["train"]), len(s["calibration"]), len(s["test"])) == (720, 180, 100)
    together = torch.cat(list(s.values()))
    assert len(torch.unique(together)) == 1000


def test_intervention_changes_only_the_named_attribute(small_world):
    world = ShapesWorld(WorldConfig(n_images=240, seed=3))
    attrs = {k: v[:8] for k, v in small_world.attributes.items()}
    base = world.render(attrs)
    assert torch.equal(base, small_world.images[:8])  # rendering is a pure function of the attributes
    moved = world.render(world.intervene(attrs, "background_hue", torch.remainder(attrs["background_hue"] + 0.5, 1)))
    # The object's coverage: render a white object on a flat black background.
    cover = attrs
    for name, value in (("object_value", 1.0), ("object_saturation", 0.0), ("background_value", 0.0),
                        ("texture_amplitude", 0.0)):
        cover = world.intervene(cover, name, value)
    alpha = world.render(cover)[:, 0]
    diff = (moved - base).abs().sum(1)
    assert (alpha == 1).any() and (alpha == 0).any()
    assert diff[alpha == 1].max() == 0  # the object is untouched
    assert (diff[alpha == 0] > 0.01).float().mean() > 0.9  # the background moved
    with pytest.raises(KeyError, match="unknown attribute"):
        world.intervene(attrs, "colour", 1.0)


def test_biased_variant_ties_background_hue_to_class():
    biased = shapes_data(WorldConfig(n_images=600, seed=1, bias_rate=0.9))
    control = shapes_data(WorldConfig(n_images=600, seed=1, bias_rate=0.0))
    aligned_b = np.mean([m["bias_aligned"] for m in biased.metadata])
    aligned_c = np.mean([m["bias_aligned"] for m in control.metadata])
    # 90 % tied + a chance 8 % of the rest; the control only by chance (band of width 0.08).
    assert 0.85 < aligned_b < 0.97 and aligned_c < 0.15
    assert torch.equal(biased.labels, control.labels)


def test_held_out_shape_is_not_a_training_class():
    world = ShapesWorld()
    attrs = world.sample_attributes(4, held_out=True, seed=2)
    assert (attrs["shape"] == len(SHAPES)).all()
    assert world.metadata(attrs)[0]["shape"] == "star"


def test_digits_are_real_and_upsampled():
    d = digits_data()
    assert d.images.shape == (1797, 3, 32, 32) and sorted(torch.unique(d.labels).tolist()) == list(range(10))
    assert torch.equal(d.images[:, 0], d.images[:, 1])
    assert len(open_source("demo:digits:calibration")) == len(d.splits["calibration"])


# ---------------------------------------------------------------------------------------------- causes vs PIL

def _uint8_images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 20), generator=g, dtype=torch.uint8)


def _pil(img_u8):
    return Image.fromarray(img_u8.permute(1, 2, 0).numpy())


def _from_pil(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.mark.parametrize("cause, enhancer", [("brightness", ImageEnhance.Brightness),
                                             ("contrast", ImageEnhance.Contrast),
                                             ("saturation", ImageEnhance.Color)])
def test_enhance_causes_match_pil(cause, enhancer):
    u8 = _uint8_images()
    x = u8.float() / 255
    grids = SHIFTS.get(cause).grids
    assert set(grids) == {"increase", "decrease"}  # both directions: too dark and too bright, and so on
    assert all(k > 1 for k in grids["increase"]) and all(0 <= k < 1 for k in grids["decrease"])
    for k in grids["increase"] + grids["decrease"] + (0.7,):
        ours = apply_cause(x, cause, k)
        ref = torch.stack([_from_pil(enhancer(_pil(img)).enhance(k)) for img in u8])
        # PIL truncates its float blend to uint8: at most one grey level apart.
        assert (ours - ref).abs().max() <= 1.0 / 255 + 1e-5, (cause, k)


def test_pixelation_matches_pil_nearest():
    u8 = _uint8_images()
    x = u8.float() / 255
    for k in CAUSES["pixelation"]:
        k = int(k)
        ours = apply_cause(x, "pixelation", k)
        ref = []
        for img in u8:
            p = _pil(img)
            w, h = p.size
            ref.append(_from_pil(p.resize((w // k, h // k), Image.NEAREST).resize((w, h), Image.NEAREST)))
        torch.testing.assert_close(ours, torch.stack(ref), atol=1e-6, rtol=0)


def test_noise_is_uniform_within_bounds_and_seeded():
    x = torch.full((8, 3, 16, 16), 0.5)
    for k in CAUSES["noise"]:
        out = apply_cause(x, "noise", k, seed=1)
        delta = (out - x).abs()
        assert delta.max() <= k / 255 + 1e-6 and delta.max() > 0.9 * k / 255
        # Uniform on [-k, k]: mean |delta| is k/2.
        assert abs(delta.mean().item() - k / 510) < 0.05 * k / 255
        assert torch.equal(out, apply_cause(x, "noise", k, seed=1))
    assert not torch.equal(apply_cause(x, "noise", 60, seed=1), apply_cause(x, "noise", 60, seed=2))


def test_spatial_pastes_a_photo_patch_of_the_right_size():
    x = torch.zeros(6, 3, 32, 32)
    for k in CAUSES["spatial"]:
        out = apply_cause(x, "spatial", k, seed=0)
        side = int(round(k * 32))
        changed = (out != x).any(1).flatten(1).sum(1)
        # The photo has (almost) no pure-black pixels, so the changed area is the patch.
        assert (changed <= side * side).all() and (changed >= 0.95 * side * side).all()


def test_blur_matches_scipy_gaussian_filter_at_a_share_of_the_image_side():
    # an independent Gaussian: scipy's, truncated at 3 σ like ours, mirrored at the border (torch's "reflect")
    from scipy.ndimage import gaussian_filter

    x = _uint8_images().float() / 255
    side, tested = min(x.shape[-2:]), 0
    for k in CAUSES["blur"]:
        sigma = k * side
        ref = torch.from_numpy(np.stack([gaussian_filter(img.numpy(), sigma=(0, sigma, sigma), mode="mirror",
                                                         truncate=3.0) for img in x])).float()
        if int(3 * sigma + 0.5) != int(np.ceil(3 * sigma)):  # the two round the kernel's radius differently
            continue
        torch.testing.assert_close(apply_cause(x, "blur", k), ref.clamp(0, 1), atol=1e-5, rtol=0)
        tested += 1
    assert tested >= 3
    assert SHIFTS.get("blur").inverse_edits == (("sharpness", "increase"),)


def test_unknown_cause():
    with pytest.raises(ValueError, match="unknown cause"):
        apply_cause(torch.rand(1, 3, 8, 8), "fog", 1.0)


# ---------------------------------------------------------------------------------------------- training

@pytest.mark.slow
def test_training_is_deterministic_given_seed(small_world):
    x, y = small_world.split("train")
    weights = []
    for _ in range(2):
        torch.manual_seed(5)
        net = SmallCNN(len(SHAPES))
        train_model(net, x[:64], y[:64], epochs=1, batch_size=32, lr=1e-3, seed=5, desc="t", progress=False)
        weights.append(torch.cat([p.flatten() for p in net.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_autoencoder_any_resolution():
    for size in (16, 20, (24, 40)):
        ae = ConvAutoencoder(size)
        hw = (size, size) if isinstance(size, int) else size
        x = torch.rand(2, 3, *hw)
        z = ae.encode(x)
        assert z.shape == (2, 256) and (z >= 0).all()
        out = ae.decode(z)
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="16 px"):
        ConvAutoencoder(8)


@pytest.mark.slow
def test_demo_classifier_accuracy_and_causes(shapes_models):
    clf = shapes_models.classifier
    x, y = shapes_models.data.split("test")
    with torch.inference_mode():
        probs = torch.softmax(clf.logits(x), 1)
    accuracy = (probs.argmax(1) == y).float().mean().item()
    clean_msp = probs.max(1).values.mean().item()
    assert accuracy >= 0.95
    for cause, grid in CAUSES.items():
        with torch.inference_mode():
            msp = torch.softmax(clf.logits(apply_cause(x, cause, grid[-1])), 1).max(1).values.mean().item()
        assert msp < clean_msp, (cause, msp, clean_msp)


@pytest.mark.slow
def test_demo_autoencoder_reconstructs_better_than_the_mean_image(shapes_models):
    x, _ = shapes_models.data.split("test")
    x_train, _ = shapes_models.data.split("train")
    with torch.inference_mode():
        loss = shapes_models.autoencoder.reconstruction_loss(x).mean().item()
    baseline = (x - x_train.mean(0, keepdim=True)).pow(2).mean().item()
    assert loss < 0.25 * baseline


@pytest.mark.slow
def test_cause_examples_really_lower_the_score(shapes_models):
    x, y = shapes_models.data.split("test")
    ex = cause_examples(x[:200], y[:200], shapes_models.classifier, "pixelation", threshold=0.9)
    assert len(ex.images) > 0
    assert (ex.score_after < 0.9).all() and (ex.score_before >= 0.9).all()
    with torch.inference_mode():
        rescored = torch.softmax(shapes_models.classifier.logits(ex.images), 1).max(1).values
    torch.testing.assert_close(rescored, ex.score_after)


@pytest.mark.slow
def test_demo_models_load_from_cache(shapes_models):
    from cfx.demo import load_demo

    again = load_demo("shapes", progress=False)
    assert again.loaded_from_cache and again.cache_path == shapes_models.cache_path
    x, _ = shapes_models.data.split("test")
    with torch.inference_mode():
        torch.testing.assert_close(again.classifier.logits(x[:16]), shapes_models.classifier.logits(x[:16]))


@pytest.mark.slow
def test_digits_classifier(digits_models):
    x, y = digits_models.data.split("test")
    assert (digits_models.classifier.predict(x) == y).float().mean() >= 0.95


def test_an_unwritable_demo_cache_is_refused_before_any_training(tmp_path, monkeypatch):
    # load_demo trained both models (minutes on 2 cores) and only then found it could not keep them
    import cfx.demo.models as demo_models
    from cfx.core.models import ClassifierError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CFX_CACHE_DIR", str(blocker / "cache"))

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the cache")

    monkeypatch.setattr(demo_models, "train_model", no_training)
    with pytest.raises(ClassifierError, match="cannot be written.*CFX_CACHE_DIR"):
        demo_models.load_demo("digits", progress=False)
