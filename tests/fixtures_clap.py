"""A tiny random CLAP checkpoint in the real on-disk format, built once per test session.

``ClapConfig`` with small dimensions and ``enable_fusion=True`` (the architecture of
laion/clap-htsat-fused, shrunk), a byte-level BPE tokenizer trained on the spot and wrapped as
``RobertaTokenizerFast(vocab=..., merges=...)``, and the stock ``ClapFeatureExtractor``, saved with
``save_pretrained`` and loaded by path through medzero's public API like any user directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = [
    "This is a sound of {}.",
    "speech with loud background noise",
    "a person speaking in a quiet room",
    "people talking in a crowded market",
    "a crying child, a baby crying",
    "traffic noise, cars passing on a road",
    "music or a television playing",
    "wind blowing into a microphone",
    "an electrical hum, a fan running",
    "muffled distant speech, coughing, heavy breathing",
    "dog bark, cat meow, siren, telephone ringing, machine whirring",
    "silence, no sound, other sounds, something else",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9",
]


def build_tiny_clap(directory: Path, *, seed: int = 0, fusion: bool = True) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    model_json = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tokenizer = RobertaTokenizerFast(vocab=model_json["vocab"], merges=merges, model_max_length=64)
    assert len(tokenizer("a person speaking")["input_ids"]) > 2, "tokenizer has an empty vocabulary"

    config = ClapConfig(
        text_config=dict(
            vocab_size=len(model_json["vocab"]),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=80,
            projection_dim=16,
        ),
        audio_config=dict(
            enable_fusion=fusion,
            fusion_type="aff_2d" if fusion else None,
            patch_embeds_hidden_size=16,
            hidden_size=32,
            depths=[1, 1],
            num_attention_heads=[2, 2],
            projection_dim=16,
            num_classes=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory) -> Path:
    return build_tiny_clap(tmp_path_factory.mktemp("tiny-clap") / "clap")
