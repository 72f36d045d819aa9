"""Tokenizers for the tiny test models, trained locally on a few sentences (nothing is downloaded).

They are real `tokenizers`-backed transformers tokenizers, saved with `save_pretrained`, so the
pipelines load them exactly as they load the tokenizers of the real checkpoints.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Words the sample videos' captions and the tests use, so tiny tokenizers split them into few pieces.
CORPUS = [
    "a red circle moving left to right over a blue background",
    "a green square moving right to left over a yellow background",
    "a white triangle moving top to bottom over a dark purple background",
    "an orange ball bouncing up and down on a grey gradient",
    "a cyan shape drifting slowly diagonally across a black scene",
    "the quick brown fox jumps over the lazy dog",
    "a cat walks on the beach at sunset, cinematic, high quality video",
    "describe the video by detailing the following aspects objects actions camera",
]


def _train(
    model, trainer, pre_tokenizer, decoder, vocab_size: int, corpus=CORPUS, normalizer=normalizers.NFKC()
) -> Tokenizer:
    tokenizer = Tokenizer(model)
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    tokenizer.train_from_iterator(corpus * 4, trainer)
    return tokenizer


def _trained_model(tokenizer: Tokenizer) -> dict:
    """The trained model's vocab (and merges), as the transformers tokenizer classes take them."""
    return json.loads(tokenizer.to_str())["model"]


def tiny_t5_tokenizer(vocab_size: int = 256):
    """A SentencePiece-style unigram tokenizer that is a real `T5Tokenizer` (pad=0, eos=1, unk=2).

    transformers' T5Tokenizer rebuilds its pre-tokenizer from the vocab alone whenever it is constructed or
    loaded, so the unigram is trained with that same step (read off a blank T5Tokenizer) and only the vocab is
    handed over: what is saved then reloads to the same tokenizer.
    """
    from transformers import T5Tokenizer

    steps = T5Tokenizer(extra_ids=0).backend_tokenizer
    specials = ["<pad>", "</s>", "<unk>"]
    tokenizer = _train(
        models.Unigram(),
        trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>"),
        steps.pre_tokenizer,
        steps.decoder,
        vocab_size,
        normalizer=steps.normalizer,
    )
    vocab = [tuple(piece) for piece in _trained_model(tokenizer)["vocab"]]
    return T5Tokenizer(vocab=vocab, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


# Llama 3's pre-tokenizer split (its tokenizer.json): words keep one leading space, digits go in threes, newlines
# group. Training with it on the HunyuanVideo system prompt gives that prompt whole-word tokens, so the tiny
# tokenizer splits it exactly as the real one does.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _hunyuan_system_prompt() -> str:
    """HunyuanVideoPipeline's default prompt template, as plain text (special tokens and placeholder dropped)."""
    import re

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return re.sub(r"<\|[a-z_]+\|>", "\n", DEFAULT_PROMPT_TEMPLATE["template"].replace("{}", ""))


def tiny_llama_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer shaped like Llama 3's (bos=<|begin_of_text|>, pad=eos, Llama 3 pre-split).

    HunyuanVideoPipeline crops a fixed `crop_start` = 95 tokens (the system prompt's length under the real
    Llama 3 tokenizer) off every encoded prompt. A tokenizer that split the system prompt into more pieces would
    leak system-prompt tokens into the embeddings; one that split it into fewer would crop the user's words and,
    for short prompts, leave an all-zero mask (NaN in the transformer's token refiner). Trained on that prompt
    with Llama 3's split, this one tokenises it to exactly 95 tokens too, so the default template works unchanged.
    """
    from tokenizers import Regex
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = _train(
        models.BPE(),
        trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        decoders.ByteLevel(),
        vocab_size,
        corpus=CORPUS + [_hunyuan_system_prompt()],
    )
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        padding_side="right",
    )


def tiny_clip_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer that is a real `CLIPTokenizer` (bos/eos around every text, pad = eos).

    transformers' CLIPTokenizer rebuilds its normaliser and pre-tokenizer from only vocab + merges whenever it is
    constructed or loaded, so the BPE is trained with those same steps (read off a blank CLIPTokenizer) and only
    vocab and merges are handed over: what is saved then reloads to the same tokenizer.
    """
    from transformers import CLIPTokenizer

    steps = CLIPTokenizer().backend_tokenizer
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = _train(
        models.BPE(end_of_word_suffix="</w>"),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            end_of_word_suffix="</w>",
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
        steps.pre_tokenizer,
        decoders.ByteLevel(),
        vocab_size,
        normalizer=steps.normalizer,
    )
    trained = _trained_model(tokenizer)
    # Like the real CLIP vocab, hold every byte also as a word end ("x</w>"): a character seen only inside
    # words in the corpus would otherwise map to unk = eos, and CLIP pools at the first eos.
    vocab = dict(trained["vocab"])
    for char in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(char + "</w>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
