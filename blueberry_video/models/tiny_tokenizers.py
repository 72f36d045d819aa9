"""Tokenizers for the tiny test models, built locally from a few sentences (nothing is downloaded).

They are real `tokenizers`-backed transformers tokenizers, saved with `save_pretrained`, so the
pipelines load them exactly as they load the tokenizers of the real checkpoints.
"""

from __future__ import annotations

import json
import math

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


def _train(model, trainer, pre_tokenizer, decoder, corpus=CORPUS, normalizer=normalizers.NFKC()) -> Tokenizer:
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

    Its pieces are the corpus' whole words and characters, scored by log frequency, rather than the output of
    tokenizers' UnigramTrainer: that trainer is not deterministic (piece scores, hence ids, change from run to
    run), and a tiny model must be the same function of its seed in every process. Only the vocab is handed to
    T5Tokenizer, which rebuilds its own pre-tokenizer from it on every load, so what is saved reloads unchanged.
    """
    from collections import Counter

    from transformers import T5Tokenizer

    words = Counter("\u2581" + word for line in CORPUS for word in line.split())  # T5's Metaspace marks word starts
    chars = Counter(char for line in CORPUS for char in line.replace(" ", ""))
    counts = words + chars + Counter({"\u2581": sum(words.values())})
    total = sum(counts.values())
    pieces = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: vocab_size - 3]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(piece, math.log(n / total)) for piece, n in pieces]
    return T5Tokenizer(vocab=vocab, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


# Llama 3's pre-tokenizer split (its tokenizer.json): words keep one leading space, digits go in threes, newlines
# group. Training with it on the HunyuanVideo system prompt gives that prompt whole-word tokens, so the tiny
# tokenizer splits it exactly as the real one does.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
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


def tiny_clip_tokenizer(vocab_size: int = 640):
    """A byte-level BPE tokenizer that is a real `CLIPTokenizer` (bos/eos around every text, pad = eos).

    transformers' CLIPTokenizer rebuilds its normaliser and pre-tokenizer from only vocab + merges whenever it is
    constructed or loaded, so the BPE is trained with those same steps (read off a blank CLIPTokenizer) and only
    vocab and merges are handed over: what is saved then reloads to the same tokenizer.
    """
    from transformers import CLIPTokenizer

    steps = CLIPTokenizer().backend_tokenizer
    # Every byte also as a word end ("x</w>"), like the real CLIP vocab: a character the corpus only has inside
    # words would otherwise map to unk = eos, and CLIP pools at the first eos. Listed as trainer specials they
    # also get fixed ids; left to the trainer, they would be numbered in hash order, differently every run.
    word_ends = [char + "</w>" for char in sorted(pre_tokenizers.ByteLevel.alphabet())]
    specials = ["<|startoftext|>", "<|endoftext|>", *word_ends]
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
        normalizer=steps.normalizer,
    )
    trained = _trained_model(tokenizer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return CLIPTokenizer(
        vocab=trained["vocab"],
        merges=merges,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
