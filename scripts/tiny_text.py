"""Tokenizers and text encoders for the tiny hub-format pipelines (``scripts/tiny_models.py``).

Everything is built offline in code: tokenizers get a vocabulary made here (byte-level BPE for CLIP,
Unigram for T5, byte-fallback BPE for Gemma) in the file formats of the published ones, and the text
encoders are two-layer versions of CLIP, T5 v1.1 and Gemma2 whose widths the pipeline builders choose.
"""

from __future__ import annotations

from transformers import CLIPTextConfig, CLIPTokenizer, GemmaTokenizerFast, T5Config, T5EncoderModel, T5TokenizerFast

# Words that get whole-word tokens; everything else falls back to characters (CLIP, Gemma) or <unk> (T5).
WORDS = tuple(
    "a photo of the an in on with and high quality detailed image landscape portrait city street animal face "
    "food building sky water tree night day".split()
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (the base alphabet of byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _word_merges(words: tuple[str, ...] | list[str], suffix: str = "", prefix: str = "") -> list[tuple[str, str]]:
    """Left-to-right BPE merges that assemble each word (``prefix + word``; the last symbol gets ``suffix``)."""
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = list(prefix + word)
        symbols[-1] += suffix
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
    return merges


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer (vocab.json + merges.txt like openai/clip-vit-large-patch14), 77 tokens."""
    alphabet = list(_bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = _word_merges(WORDS, suffix="</w>")
    vocab_tokens += ["".join(pair) for pair in merges]
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]  # last ids, as in CLIP (49406, 49407)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def t5_tokenizer(model_max_length: int = 512) -> T5TokenizerFast:
    """A T5 Unigram tokenizer (tokenizer.json like google/t5-v1_1-xxl's): <pad>=0, </s>=1, <unk>=2."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -3.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def gemma_tokenizer() -> GemmaTokenizerFast:
    """A Gemma byte-fallback BPE tokenizer (tokenizer.json like google/gemma-2-2b-it's)."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + list("▁abcdefghijklmnopqrstuvwxyz")
    merges = _word_merges(WORDS, prefix="▁")
    tokens += ["".join(pair) for pair in merges]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return GemmaTokenizerFast(vocab=vocab, merges=merges, model_max_length=2048)


def clip_text_config(tokenizer: CLIPTokenizer, hidden_size: int, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def t5_encoder(tokenizer: T5TokenizerFast, d_model: int) -> T5EncoderModel:
    """A T5 v1.1 encoder (gated-gelu, as in FLUX.1-dev's and PixArt-Sigma's t5-v1_1-xxl) of width ``d_model``."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=0,
        )
    )
