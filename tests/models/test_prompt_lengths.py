"""`prompt_lengths` counts tokens as the pipelines do: a prompt counted over the limit is exactly one the pipeline cut.

Prompts of k single-token words straddle each limit; the k-th word is cut exactly when adding it changes nothing.
"""

from __future__ import annotations

import pytest
import torch

from blueberry_video.models.cogvideox import CogVideoXFamily
from blueberry_video.models.hunyuan_video import CLIP_MAX_TOKENS, HunyuanVideoFamily

WORD = "red"  # one token for each tiny tokenizer: its corpus has the word


def prompts_around(limit: int, extra_tokens: int) -> list[str]:
    """Prompts of WORD repeated, from 3 tokens under `limit` to 3 over; `extra_tokens` are the tokenizer's own."""
    return [" ".join([WORD] * words) for words in range(limit - extra_tokens - 3, limit - extra_tokens + 4)]


def cut_by_the_pipeline(embeds: torch.Tensor) -> list[bool]:
    """For prompts of 1, 2, ... more words: whether prompt i encodes like prompt i-1 (its last word was cut)."""
    return [torch.allclose(embeds[i], embeds[i - 1], rtol=0, atol=1e-6) for i in range(1, len(embeds))]


@pytest.fixture(scope="module")
def cogvideox(cogvideox_dir):
    family = CogVideoXFamily(cogvideox_dir)
    return family, family.load_encoders(torch.float32, "cpu")


@pytest.fixture(scope="module")
def hunyuan(hunyuan_dir):
    family = HunyuanVideoFamily(hunyuan_dir)
    return family, family.load_encoders(torch.float32, "cpu")


def test_cogvideox_counts_t5_tokens_as_the_pipeline_cuts_them(cogvideox):
    family, encoders = cogvideox
    prompts = prompts_around(family.max_text_length, extra_tokens=1)  # T5 adds </s>
    (t5,) = family.prompt_lengths(encoders, prompts)
    assert (t5.encoder, t5.limit) == ("T5 text encoder", family.max_text_length) == ("T5 text encoder", 32)
    over_limit = [count > t5.limit for count in t5.counts]
    assert any(over_limit) and not all(over_limit)
    cut = cut_by_the_pipeline(family.encode_prompts(encoders, prompts)["prompt_embeds"])
    assert over_limit[1:] == cut


def test_hunyuan_video_counts_llama_tokens_after_the_template_as_the_pipeline_keeps_them(hunyuan):
    family, encoders = hunyuan
    prompts = prompts_around(family.max_sequence_length, extra_tokens=1)  # the template's <|eot_id|> after it
    llama, _ = family.prompt_lengths(encoders, prompts)
    assert (llama.encoder, llama.limit) == ("Llama text encoder", 256)
    assert any(count > llama.limit for count in llama.counts)
    # The pipeline's mask marks the prompt's tokens it kept, the template's system prompt cropped off.
    kept = family.encode_prompts(encoders, prompts)["prompt_attention_mask"].sum(dim=1).tolist()
    assert kept == [min(count, llama.limit) for count in llama.counts]


def test_hunyuan_video_counts_clip_tokens_as_the_pipeline_cuts_them(hunyuan):
    family, encoders = hunyuan
    prompts = prompts_around(CLIP_MAX_TOKENS, extra_tokens=2)  # CLIP adds <|startoftext|> and <|endoftext|>
    _, clip = family.prompt_lengths(encoders, prompts)
    assert (clip.encoder, clip.limit) == ("CLIP text encoder", 77)
    over_limit = [count > clip.limit for count in clip.counts]
    assert any(over_limit) and not all(over_limit)
    cut = cut_by_the_pipeline(family.encode_prompts(encoders, prompts)["pooled_prompt_embeds"])
    assert over_limit[1:] == cut
