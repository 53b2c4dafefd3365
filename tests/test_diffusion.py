"""The InstructPix2Pix editor on a tiny random pipeline built offline (built in-process, nothing downloaded)."""

import pytest
import torch

pytestmark = pytest.mark.slow  # builds a diffusion pipeline or trains a DDPM


@pytest.fixture(scope="module")
def tiny_ip2p():
    from cfx.generators.diffusion import tiny_instruct_pix2pix

    return tiny_instruct_pix2pix()


def test_batched_sweep_equals_the_pipeline_called_per_strength(tiny_ip2p):
    from cfx.generators import InstructPix2PixEditor

    editor = InstructPix2PixEditor(tiny_ip2p, "brightness", steps=5, seed=3)
    image = torch.rand(1, 3, 32, 32)
    scales = [1.01, 4.0, 12.5]
    seq = editor.edit(image, scales)
    assert seq.shape == (1, 4, 3, 32, 32) and torch.equal(seq[0, 0], image[0])
    for j, g in enumerate(scales):
        ref = tiny_ip2p(prompt=editor.instruction, image=image, num_inference_steps=5, guidance_scale=g,
                        image_guidance_scale=2.5, generator=torch.Generator().manual_seed(3), output_type="pt").images
        torch.testing.assert_close(seq[0, j + 1], ref[0].float(), atol=2e-4, rtol=1e-3)
    # chunked sweeps give the same images as one batch
    chunked = InstructPix2PixEditor(tiny_ip2p, "brightness", steps=5, seed=3, batch_size=1).edit(image, scales)
    torch.testing.assert_close(chunked, seq, atol=2e-4, rtol=1e-3)


def test_instruction_mapping_and_errors(tiny_ip2p, tmp_path):
    from cfx.generators import InstructPix2PixEditor

    e = InstructPix2PixEditor(tiny_ip2p, "spots", instructions={"spots": "add red spots"})
    assert e.instruction == "add red spots" and len(e.sweep(steps=100)) == 100
    with pytest.raises(ValueError, match="no instruction for property"):
        InstructPix2PixEditor(tiny_ip2p, "mood")
    with pytest.raises(ValueError, match="model_index.json"):
        InstructPix2PixEditor(tmp_path, "brightness")
    tiny_ip2p.save_pretrained(tmp_path / "ip2p")
    loaded = InstructPix2PixEditor(tmp_path / "ip2p", "brightness", steps=2)
    out = loaded.edit(torch.rand(2, 3, 20, 28), [2.0, 5.0])  # sizes not multiples of 8 are resized and back
    assert out.shape == (2, 3, 3, 20, 28) and 0 <= out.min() and out.max() <= 1


def test_ddpm_editor_sweep_and_fitted_round_trip(tmp_path):
    from cfx.core.data import TensorSource
    from cfx.jobs import fit
    from cfx.trust.fitted import Fitted
    from cfx.generators import DDPMEditor, SDEditCounterfactual
    from cfx.core.models import load_classifier
    from pathlib import Path

    clf = load_classifier(f"python:{Path(__file__).parent / 'factories.py'}:tiny_cnn")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 3, 16, 16, generator=g)
    fitted = fit(clf, TensorSource(images, torch.randint(0, 4, (40,), generator=g)), tmp_path, ae_epochs=1,
                 ddpm=True, ddpm_steps=3, progress=False)
    assert fitted.manifest["ddpm"]["steps"] == 3 and fitted.ddpm is not None
    editor = DDPMEditor.from_fitted(fitted, steps=5)
    seq = editor.edit(images[:3], [0.2, 0.6, 1.0])
    assert seq.shape == (3, 4, 3, 16, 16) and torch.equal(seq[:, 0], images[:3])
    assert 0 <= seq.min() and seq.max() <= 1
    change = [(seq[:, i] - seq[:, 0]).abs().mean() for i in range(4)]
    assert change[0] == 0 and change[1] < change[3]  # more noise, further from the original
    torch.testing.assert_close(editor.apply(images[:3], 0.0), images[:3])
    again = Fitted.load(tmp_path, clf)
    torch.testing.assert_close(DDPMEditor(again.ddpm, steps=5).edit(images[:3], [0.6]), seq[:, [0, 2]])
    cf = SDEditCounterfactual(lambda x: fitted.parce.score_torch(clf, x), editor, 0.5).generate(images[:3])
    assert cf.images.shape == (3, 3, 16, 16) and cf.score_after.shape == (3,)
    with pytest.raises(ValueError, match="strength must be in"):
        editor.apply(images[:1], 1.5)
