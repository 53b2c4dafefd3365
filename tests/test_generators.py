import shutil

import pytest
import torch
import torch.nn.functional as F

from cfx.trust.fitted import Fitted
from cfx.generators import (AutoencoderReconstruction, FeatureGradientDescent, ImageGradientDescent, LatentIndex,
                            LatentGradientDescent, LatentNearestNeighbours, competency_target, counterfactual_metrics,
                            kernel_inception_distance, ssim)
from cfx.core.nets import ConvAutoencoder


@pytest.fixture(scope="module")
def world(shapes_models):
    from cfx.demo import cause_examples, demo_fitted

    fitted = demo_fitted(shapes_models, progress=False)
    clf = shapes_models.classifier
    x, y = shapes_models.data.split("test")
    ex = cause_examples(x[:200], y[:200], clf, "pixelation", score=lambda im: fitted.parce.score(clf, im))
    return clf, fitted, ex.images[:24], competency_target(clf, fitted)


def _all(clf, fitted, target, **kw):
    return [ImageGradientDescent(target, **kw), FeatureGradientDescent(target, clf, **kw),
            LatentGradientDescent(target, fitted.autoencoder, **kw),
            AutoencoderReconstruction(target, fitted.autoencoder),
            LatentNearestNeighbours(target, fitted.autoencoder, fitted.latent_index)]


@pytest.mark.slow
def test_every_generator_raises_competency_and_keeps_pixels_in_range(world):
    clf, fitted, images, target = world
    assert (fitted.parce.score(clf, images) < 0.9).all()
    for gen in _all(clf, fitted, target):
        cf = gen.generate(images)
        assert cf.images.shape == images.shape and 0 <= cf.images.min() and cf.images.max() <= 1, gen.name
        torch.testing.assert_close(cf.score_after, fitted.parce.score(clf, cf.images), rtol=1e-4, atol=1e-5)
        rose = (cf.score_after > cf.score_before).float().mean()
        assert rose > 0.5, (gen.name, float(rose))
        assert torch.equal(cf.success, cf.score_after >= 0.9)


@pytest.mark.slow
def test_a_stopped_sample_no_longer_changes(world):
    clf, fitted, images, target = world
    short = LatentGradientDescent(target, fitted.autoencoder, steps=10).generate(images)
    longer = LatentGradientDescent(target, fitted.autoencoder, steps=40).generate(images)
    stopped = short.steps < 10
    assert stopped.any() and (short.score_after[stopped] >= 0.9).all()
    torch.testing.assert_close(short.images[stopped], longer.images[stopped])
    assert torch.equal(short.steps[stopped], longer.steps[stopped])
    # per-sample stopping spends fewer image-steps than the paper's batch-level rule, at equal success
    batch = LatentGradientDescent(target, fitted.autoencoder, steps=40, stopping="batch").generate(images)
    assert longer.success.float().mean() >= batch.success.float().mean()
    assert longer.image_steps < batch.image_steps


@pytest.mark.slow
def test_reco_is_the_autoencoder_reconstruction(world):
    clf, fitted, images, target = world
    cf = AutoencoderReconstruction(target, fitted.autoencoder).generate(images)
    with torch.no_grad():
        torch.testing.assert_close(cf.images, fitted.autoencoder.decode(fitted.autoencoder.encode(images)))


@pytest.mark.slow
def test_lnn_neighbour_is_the_brute_force_nearest(world):
    clf, fitted, images, target = world
    index = fitted.latent_index
    stored = index.latents_
    with torch.no_grad():
        z = fitted.autoencoder.encode(images)
    brute = torch.cdist(z.double(), stored.double(), p=1).argmin(1)
    cf = LatentNearestNeighbours(target, fitted.autoencoder, index).generate(images)
    assert cf.extra["neighbour_ids"] == [index.ids_[j] for j in brute.tolist()]
    with torch.no_grad():
        torch.testing.assert_close(cf.images, fitted.autoencoder.decode(stored[brute]))
    torch.testing.assert_close(cf.extra["neighbour_labels"], index.labels_[brute])
    # stored neighbour images are the confident calibration images themselves
    assert cf.extra["neighbour_images"].shape == images.shape


@pytest.mark.slow
def test_index_round_trips_through_the_fitted_folder(world, tmp_path):
    clf, fitted, images, _ = world
    copy = tmp_path / "f"
    shutil.copytree(fitted.path, copy)
    again = Fitted.load(copy, clf)
    with torch.no_grad():
        z = fitted.autoencoder.encode(images)
    d1, p1 = fitted.latent_index.search(z, 3)
    d2, p2 = again.latent_index.search(z, 3)
    assert torch.equal(p1, p2) and torch.allclose(d1, d2)
    assert again.latent_index.ids_ == fitted.latent_index.ids_
    assert fitted.manifest["counts"]["latent_index"] == len(fitted.latent_index)


@pytest.mark.slow
def test_metrics_and_bad_inputs(world):
    clf, fitted, images, target = world
    cf = LatentGradientDescent(target, fitted.autoencoder).generate(images)
    ref = fitted.autoencoder.encode(images).detach()
    m = counterfactual_metrics(cf, images, clf, fitted.autoencoder, reference_latents=ref)
    assert 0 <= m["success_rate"] <= 1 and -1 <= m["latent_similarity"] <= 1 and m["kid_latent"] is not None
    ae = fitted.autoencoder
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        LatentGradientDescent(target, ae).generate(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="empty"):
        ImageGradientDescent(target).generate(torch.rand(0, 3, 32, 32))
    with pytest.raises(ValueError, match="latent index"):
        LatentNearestNeighbours(target, ae, None)


def test_per_sample_adam_matches_torch_adam():
    # One sample that never reaches the threshold: our batched Adam must equal torch.optim.Adam step for step.
    torch.manual_seed(0)
    w = torch.randn(3, 8, 8)
    target = lambda x: (x * w).flatten(1).sum(1) / 100  # noqa: E731
    x0 = torch.rand(1, 3, 8, 8) * 0.5 + 0.25
    dist = lambda a, b: (a - b).pow(2).flatten(1).sum(1)  # noqa: E731
    cf = ImageGradientDescent(target, distance=dist, threshold=1e9, steps=5, lr=1e-2).generate(x0)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=1e-2)
    for _ in range(5):
        loss = (-target(x) + 0.1 * dist(x0, x)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    torch.testing.assert_close(cf.images, x.detach())
    assert cf.steps.tolist() == [5] and not cf.success.any()


def test_ssim_and_kid_by_reference():
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert (ssim(x, torch.rand(2, 3, 16, 16)) < 0.5).all()
    a = torch.randn(200, 4)
    assert abs(kernel_inception_distance(a[:100], a[100:])) < 0.1
    assert kernel_inception_distance(a, a + 3) > 1


def test_latent_index_metrics_agree_with_brute_force():
    torch.manual_seed(0)
    z = torch.rand(300, 16)
    q = torch.rand(20, 16)
    imgs = torch.rand(300, 3, 16, 16)
    for metric, ref in (("l1", torch.cdist(q, z, p=1).argmin(1)), ("l2", torch.cdist(q, z).argmin(1)),
                        ("cos", F.normalize(q, dim=1).matmul(F.normalize(z, dim=1).T).argmax(1))):
        idx = LatentIndex(metric).build(z, [str(i) for i in range(300)], torch.zeros(300), imgs)
        assert torch.equal(idx.search(q)[1][:, 0], ref), metric
    # approximate kinds on clustered data find (nearly) the exact neighbours
    centres = torch.rand(20, 16) * 10
    zc = centres[torch.randint(0, 20, (3000,))] + torch.rand(3000, 16) * 0.5
    qc = zc[:100] + 0.01
    exact = torch.cdist(qc, zc, p=1).argmin(1)
    for kind in ("ivf", "hnsw"):
        idx = LatentIndex("l1", kind=kind).build(zc, [""] * 3000, torch.zeros(3000), torch.zeros(3000, 3, 1, 1))
        assert (idx.search(qc)[1][:, 0] == exact).float().mean() > 0.9, kind
    assert LatentIndex("l1", exact_limit=100).build(zc, [""] * 3000, torch.zeros(3000),
                                                    torch.zeros(3000, 3, 1, 1)).built_kind_ == "ivf"
    with pytest.raises(ValueError, match="kind must be"):
        LatentIndex("l1", kind="tree")
    with pytest.raises(ValueError, match="no latents"):
        LatentIndex().build(torch.empty(0, 4), [], torch.empty(0), torch.empty(0, 3, 4, 4))
    assert ConvAutoencoder(16).image_size == (16, 16)


class _IdentityAutoencoder(torch.nn.Module):
    """A perfect autoencoder at 16 px: D(E(x)) = x. A counterfactual from it changes nothing."""

    image_size = (16, 16)
    latent_dim = 3 * 16 * 16

    def encode(self, x):
        return x.flatten(1)

    def decode(self, z):
        return z.view(-1, 3, 16, 16)

    def forward(self, x):
        return self.decode(self.encode(x))


def test_autoencoder_generators_work_at_the_images_own_resolution():
    """Images at 48 px, autoencoder at 16 px: the counterfactual is 48 px and keeps the original's fine detail
    wherever the low-resolution counterfactual did not change anything (here: everywhere)."""
    from cfx.trust.latent_index import LatentIndex

    x = torch.rand(3, 3, 48, 48)  # full of pixel-level detail that 16 px cannot represent
    target = lambda im: im.mean((1, 2, 3)) * 0  # noqa: E731 - never reaches the threshold: LGD runs its steps
    ae = _IdentityAutoencoder()
    reco = AutoencoderReconstruction(target, ae).generate(x)
    assert reco.images.shape == x.shape
    torch.testing.assert_close(reco.images, x)
    lgd = LatentGradientDescent(target, ae, steps=3).generate(x)
    assert lgd.images.shape == x.shape
    torch.testing.assert_close(lgd.images, x, atol=1e-2, rtol=0)  # zero gradient of the target: barely moves
    # LNN: the neighbour of each image is itself (indexed at 16 px), so again nothing changes at 48 px
    small = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    index = LatentIndex("l2").build(ae.encode(small), ["a", "b", "c"], torch.tensor([0, 1, 2]), small)
    lnn = LatentNearestNeighbours(target, ae, index).generate(x)
    assert lnn.extra["neighbour_ids"] == ["a", "b", "c"]
    torch.testing.assert_close(lnn.images, x, atol=1e-5, rtol=0)


def test_patience_stops_a_sample_whose_score_has_stalled():
    # the score rises with the mean pixel value up to 0.3, then is flat: the threshold (0.9) is out of reach
    target = lambda x: torch.clamp(x.mean((1, 2, 3)), max=0.3)  # noqa: E731
    images = torch.full((3, 3, 8, 8), 0.1)
    images[2] = 0.35  # already on the flat part
    plain = ImageGradientDescent(target, steps=40, lr=0.02, gamma=0.0).generate(images)
    assert plain.steps.tolist() == [40, 40, 40] and not plain.success.any()
    patient = ImageGradientDescent(target, steps=40, lr=0.02, gamma=0.0, patience=3).generate(images)
    assert patient.steps[2] == 3  # flat from the start: stops after 3 steps without a gain
    assert (patient.steps[:2] < 40).all() and (patient.steps[:2] > 3).all()  # climbed, then stalled at 0.3
    torch.testing.assert_close(patient.score_after[:2], torch.full((2,), 0.3))
    with pytest.raises(ValueError, match="patience must be"):
        ImageGradientDescent(target, patience=0)


@pytest.mark.slow
def test_known_scores_of_the_originals_save_a_target_call(world):
    clf, fitted, images, target = world
    calls = []

    def counted(x):
        calls.append(len(x))
        return target(x)

    with torch.no_grad():
        known = fitted.parce.score(clf, images)
    for make in (lambda t: AutoencoderReconstruction(t, fitted.autoencoder),
                 lambda t: LatentNearestNeighbours(t, fitted.autoencoder, fitted.latent_index),
                 lambda t: LatentGradientDescent(t, fitted.autoencoder, steps=2)):
        calls.clear()
        scored = make(counted).generate(images)
        scored_calls = sum(calls)
        calls.clear()
        given = make(counted).generate(images, score_before=known)
        assert sum(calls) == scored_calls - len(images)  # the originals were not scored again
        torch.testing.assert_close(given.score_before, scored.score_before, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(given.images, scored.images)
        with pytest.raises(ValueError, match="one target score per image"):
            make(counted).generate(images, score_before=known[:3])
