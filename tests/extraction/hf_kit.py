"""A tiny random BERT classifier and a tiny word-level tokenizer for the keyword-input and
text-data tests, built in tmp_path (no downloads), with the direct forward passes the stores
are checked against."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

FACTORY_SOURCE = '''\
"""A tiny BERT classifier: ncinspect builds it here, the weights come from the checkpoint."""
import torch
from transformers import BertConfig, BertForSequenceClassification


def make(return_dict=True):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64, num_labels=3,
        return_dict=return_dict,
    )
    return BertForSequenceClassification(config)
'''

WORDS = "the a movie film was is good bad great awful plot actor not very fun dull".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def write_factory(folder: Path) -> str:
    """The factory file in `folder`; returns its `--model` spec."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "factory.py"
    path.write_text(FACTORY_SOURCE)
    return f"{path}:make"


def make_bert(seed: int = 1) -> nn.Module:
    """The factory's architecture with other random weights (seed): the checkpoint's model."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def save_checkpoint(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def direct(
    model: nn.Module, batches: list[Mapping[str, torch.Tensor]]
) -> tuple[np.ndarray, np.ndarray]:
    """Features (the classifier's input, by a forward pre-hook) and logits of `model` on each
    batch of keyword inputs, concatenated."""
    caught: list[torch.Tensor] = []
    handle = model.classifier.register_forward_pre_hook(lambda m, a: caught.append(a[0]))
    logits = []
    try:
        with torch.no_grad():
            for batch in batches:
                logits.append(model(**batch).logits)
    finally:
        handle.remove()
    return torch.cat(caught).numpy(), torch.cat(logits).numpy()


def write_tokenizer(folder: Path, max_length: int = 32) -> Path:
    """A word-level tokenizer ([CLS] A [SEP] B [SEP], token type ids) saved with
    save_pretrained; no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    tokenizer.save_pretrained(str(folder))
    return folder


def sentences(n: int, seed: int, longest: int = 20) -> list[str]:
    """`n` sentences of 1..`longest` words (some beyond a short max length)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, longest + 1)))) for _ in range(n)]
