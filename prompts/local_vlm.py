"""A reporter that asks a local multimodal chat model through ``transformers`` (SmolVLM/Idefics3, Qwen2-VL,
LLaVA, Llama-3.2-Vision, Gemma 3, …): ``AutoProcessor`` + ``AutoModelForImageTextToText`` and the processor's chat
template, from a local folder or the local cache (``local_files_only``: cfx never downloads). Generation is greedy
and batched; the answer is untrusted data (length-capped, read with the keyword filter). Any failure falls back to
the offline evidence reporter, and the explanation says so.
"""

from __future__ import annotations

from collections.abc import Callable

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from cfx.evidence import Evidence

from .reporters import MAX_TEXT, EvidenceReporter, Explanation, Reporter
from .scoring import cause_from_text
from .templates import render_prompt, side_by_side

__all__ = ["TransformersReporter"]


class TransformersReporter(Reporter):
    """Explanations from a local vision-language model.

    ``model`` is a loaded ``*ForConditionalGeneration`` / ``AutoModelForImageTextToText`` (then give ``processor``)
    or a local folder / cached model id to load both from. ``dtype`` e.g. ``torch.bfloat16``; ``device`` e.g. ``cuda``.
    """

    backend = "transformers"

    def __init__(self, model, processor=None, dataset: str = "I trained a classifier on a set of images.",
                 prompt: str = "grounded", device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 max_new_tokens: int = 100, image_scale: int = 1, fallback: EvidenceReporter | None = None):
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForImageTextToText, AutoProcessor

            processor = AutoProcessor.from_pretrained(str(model), local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(str(model), local_files_only=True, dtype=dtype)
        if processor is None:
            raise ValueError("give the model's processor (or a folder to load both from)")
        if getattr(processor, "chat_template", None) is None:
            raise ValueError("the processor has no chat template; set processor.chat_template (see the model card)")
        self.model = model.to(device).eval() if dtype is None else model.to(device, dtype).eval()
        self.processor, self.dataset, self.prompt = processor, dataset, prompt
        self.device, self.max_new_tokens, self.image_scale = torch.device(device), max_new_tokens, image_scale
        self.fallback = fallback or EvidenceReporter()
        self.name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__

    def _messages(self, prompt: str) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    def explain_many(self, evidence: Sequence[Evidence], images: Sequence[Tensor | None] | None = None,
                     counterfactuals: Sequence[Tensor | None] | None = None,
                     on_result: Callable[[int, Explanation], None] | None = None) -> list[Explanation]:
        """One batched ``generate`` for several records (originals, with counterfactuals side by side when given);
        ``on_result(i, explanation)`` is called for each once the batch is decoded."""
        results = self._generate(evidence, images, counterfactuals)
        for i, result in enumerate(results):
            if on_result is not None:
                on_result(i, result)
        return results

    def _generate(self, evidence, images, counterfactuals) -> list[Explanation]:
        if images is None or any(im is None for im in images):
            raise ValueError("a vision-language reporter needs the image of every record")
        counterfactuals = list(counterfactuals) if counterfactuals is not None else [None] * len(evidence)
        if not (len(evidence) == len(images) == len(counterfactuals)):
            raise ValueError("give one image (and counterfactual) per evidence record")
        prompts, pictures = [], []
        for ev, image, cf in zip(evidence, images, counterfactuals):
            kind = self.prompt if cf is not None else "free_form"
            prompts.append(render_prompt(kind, self.dataset, ev))
            pictures.append(side_by_side(image, cf, scale=self.image_scale))
        try:
            texts = [self.processor.apply_chat_template(self._messages(p), add_generation_prompt=True)
                     for p in prompts]
            tok = getattr(self.processor, "tokenizer", None)
            if tok is not None and tok.pad_token is None:
                tok.pad_token = tok.eos_token
            if tok is not None:
                tok.padding_side = "left"  # batched decoder generation needs left padding
            inputs = self.processor(images=pictures, text=texts, return_tensors="pt", padding=True)
            inputs.pop("token_type_ids", None)
            inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1]:]
            answers = self.processor.batch_decode(new, skip_special_tokens=True)
        except Exception as exc:  # any model/processor failure: explain offline and say why
            results = []
            for ev, p in zip(evidence, prompts):
                fb = self.fallback.explain(ev)
                fb.backend = f"{fb.backend} (fallback from transformers)"  # why: in fb.fallback
                fb.fallback = f"transformers:{self.name} failed: {type(exc).__name__}: {exc}"[:300]
                fb.prompt = p
                results.append(fb)
            return results
        results = []
        for p, a in zip(prompts, answers):
            text = str(a).strip()[:MAX_TEXT]
            cause = cause_from_text(text)
            results.append(Explanation(text, cause, 0.5 if cause != "other" else 0.0,
                                       f"{self.backend}:{self.name}", p, {"answer": text}))
        return results

    def explain(self, evidence: Evidence, image: Tensor | None = None,
                counterfactual: Tensor | None = None) -> Explanation:
        if image is None:
            raise ValueError("a vision-language reporter needs the image")
        return self.explain_many([evidence], [image], [counterfactual])[0]
