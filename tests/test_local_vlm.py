"""The transformers reporter on a tiny random LLaVA built offline (built in-process, nothing downloaded)."""

import pytest
import torch

from cfx.core.shifts import CAUSE_LABELS
from cfx.evidence import Evidence

EVIDENCE = Evidence(id="x", prediction=1, prediction_name="cat", competency=0.3,
                    statistics={"original": {"blockiness": 0.0}},
                    statistics_z={"brightness": 7.0, "contrast": 0.0, "saturation": 0.0, "high_frequency": 0.0},
                    difference_mass=0.1)


@pytest.fixture(scope="module")
def tiny_llava():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["the image is too bright", "the image is noisy", "explain the low confidence"] * 50,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>", "</s>",
                                                                                "<image>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>")
    proc.chat_template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                          "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}")
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(cfg).eval(), proc


def test_whole_path_template_processor_generate_decode(tiny_llava):
    from cfx.prompts import TransformersReporter

    model, proc = tiny_llava
    rep = TransformersReporter(model, proc, dataset="I trained a classifier on shapes.", max_new_tokens=8)
    img = torch.rand(3, 16, 16)
    results = rep.explain_many([EVIDENCE, EVIDENCE], [img, img * 0.5], [img * 0.8, None])
    assert len(results) == 2
    for e in results:
        assert e.backend.startswith("transformers:") and isinstance(e.text, str) and len(e.text) <= 2000
        assert e.cause in CAUSE_LABELS
    assert "measurements" in results[0].prompt and "measurements" not in results[1].prompt
    # greedy decoding: the same input gives the same text
    again = rep.explain(EVIDENCE, img, img * 0.8)
    assert again.text == results[0].text


def test_load_from_folder_and_fallback(tiny_llava, tmp_path, monkeypatch):
    from cfx.prompts import TransformersReporter

    model, proc = tiny_llava
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    rep = TransformersReporter(tmp_path, max_new_tokens=4)
    assert rep.explain(EVIDENCE, torch.rand(3, 16, 16)).backend.startswith("transformers")
    broken = TransformersReporter(model, proc, max_new_tokens=4)
    monkeypatch.setattr(broken.model, "generate", lambda **kw: (_ for _ in ()).throw(RuntimeError("out of memory")))
    e = broken.explain(EVIDENCE, torch.rand(3, 16, 16))
    assert e.backend == "evidence (fallback from transformers)" and e.cause == "brightness"
    assert e.fallback.startswith("transformers:") and "failed: RuntimeError: out of memory" in e.fallback
    with pytest.raises(ValueError, match="needs the image"):
        rep.explain(EVIDENCE)
