"""Out-of-sample NLU probabilities for every clip, by k-fold cross-fitting over accounts.

A model cannot judge the labels it was trained on: it has learnt them, wrong ones included. So
every clip is scored by a model fitted on the other folds only, and folds are whole accounts
(a speaker's clips resemble each other, and a fold that shares a voice would leak). Refitting the
whole NLU k times would cost k NLU trainings; instead the NLU's own encoder, as it was before
fine-tuning (the backbone `nlu` names, frozen), embeds each text once, and the two heads the NLU
puts on it (intent from the mean-pooled output, a BIO tag per word from its first sub-token) are
refitted per fold as logistic regressions: seconds, and the standard recipe for confident learning.

Those text kinds see nothing but the words, so their folds are whole texts instead: clips that read
the same text embed to the same vector, and a corpus that records one sentence several times under
different accounts (SLURP by take) would otherwise fit each clip's fold on exact copies of it, its
label (right or wrong) included. The acoustic kinds hear the voice, and keep folds of accounts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.runtime import PipelineError, first_line

# The `not_judged` reason (summary.json, and the queue line) of a clip whose label only its own fold
# of texts carries (seen_elsewhere).
ONE_FOLD = "label_in_one_fold"


@dataclass
class TextEmbeddings:
    """Per clip: the mean-pooled sentence vector, and one vector per word (its first sub-token)."""

    pooled: np.ndarray
    words: list[np.ndarray]
    seconds: float = 0.0


@dataclass
class Folds:
    """`fold[i]`: the fold clip i is held out in; folds never split an account."""

    fold: np.ndarray
    accounts: int
    seconds: dict[str, float] = field(default_factory=dict)


def account_folds(speakers: list[str], folds: int) -> Folds:
    accounts = len(set(speakers))
    if folds < 2:
        raise PipelineError(f"review.folds={folds}: cross-fitting needs at least 2 folds (default 5)")
    if folds > accounts:
        raise PipelineError(
            f"review.folds={folds} is more than the {accounts} accounts the clips come from; folds are whole "
            f"accounts, so set review.folds to at most {accounts}"
        )
    return Folds(_group_folds(speakers, folds), accounts)


def text_folds(texts: list[str], folds: int) -> np.ndarray | None:
    """`fold[i]` for the text kinds: every clip of one text in one fold; None for fewer than two
    distinct texts, where no text can be held out against another (and no review.folds would do).
    Texts are compared as `normalize_text` reads them: takes of one sentence annotated "Play jazz."
    and "play jazz" embed alike, and in different folds one would vouch for the other's label."""
    from pipeline.text import normalize_text

    keys = [normalize_text(t) for t in texts]
    distinct = len(set(keys))
    if distinct < 2:
        return None
    if folds > distinct:
        raise PipelineError(f"review.folds={folds} is more than the {distinct} distinct texts of the clips with an "
                            f"intent; the intent and entities kinds hold out whole texts, so set review.folds to at "
                            f"most {distinct}")
    return _group_folds(keys, folds)


def seen_elsewhere(labels: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Per row, whether its label occurs in a fold other than its own: whether the model that
    judges the row (out_of_fold_probs, fitted on the other folds) was ever shown that label.

    The text kinds' folds hold out whole texts (text_folds), so a class annotated on one text only
    (one phrasing, however many takes of it) lies in a single fold, as does a class whose few texts
    all fell into one. The model fitted without that fold has no such class, gives it
    out_of_fold_probs' floor, and every clip of it would read as a near-certain mislabel: a score
    near 1.0 that measures how rare the class is, not whether the annotation is wrong, and such
    classes would fill the top of the queue. Those rows are not judged (the kinds count them, and
    queue them after every ranked line, unscored: a label made by an annotation error, such as a
    span widened by one word, lies in one fold too).
    Holding their texts in the training folds instead would put exact copies of a row's text, its
    label included, beside it: the leak whole-text folds exist to prevent."""
    labels, fold = np.asarray(labels), np.asarray(fold)
    seen = np.zeros(len(labels), dtype=bool)
    for k in np.unique(fold):
        held = fold == k
        seen[held] = np.isin(labels[held], np.unique(labels[~held]))
    return seen


def _group_folds(groups: list[str], folds: int) -> np.ndarray:
    from sklearn.model_selection import GroupKFold

    fold = np.zeros(len(groups), dtype=int)
    for k, (_, held) in enumerate(GroupKFold(n_splits=folds).split(np.zeros(len(groups)), groups=groups)):
        fold[held] = k
    return fold


def load_backbone(nlu_cfg: DictConfig, nlu_dir: Path, seed: int,
                  device: torch.device | str = "cpu") -> tuple[Any, Any, int]:
    """(encoder, tokenizer, max_length): the run's NLU tokenizer, and its backbone before fine-tuning
    on `device` (`review.device`, where the ASR model of the review runs too)."""
    from transformers import AutoConfig, AutoModel

    from pipeline.nlu.model import load_tokenizer
    from pipeline.nlu.model import resolve_backbone

    try:
        config = AutoConfig.from_pretrained(str(nlu_dir))
    except (OSError, ValueError, KeyError) as err:  # a damaged config.json (load_tokenizer names its own files)
        raise PipelineError(f"{nlu_dir}: its config or tokenizer does not load ({type(err).__name__}: {first_line(err)}); "
                            "re-run the `nlu` stage (stages=[nlu]) to write the folder again") from None
    tokenizer = load_tokenizer(nlu_dir, config)
    max_length = int(getattr(config, "nlu_max_length", 64))
    kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta") else {}
    encoder_config = OmegaConf.select(nlu_cfg, "encoder_config", default=None)
    if encoder_config:  # a randomly initialised encoder (smoke runs): the same one for the same seed
        fields = OmegaConf.to_container(encoder_config, resolve=True)
        torch.manual_seed(seed)
        encoder = AutoModel.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields), **kwargs)
    else:
        name = OmegaConf.select(nlu_cfg, "model_name_or_path", default=None)
        if not name:
            raise PipelineError("the run's config has no nlu.model_name_or_path; the review needs the NLU's backbone")
        backbone = resolve_backbone(str(name), OmegaConf.select(nlu_cfg, "model_sha256", default=None))
        encoder = AutoModel.from_pretrained(backbone, **kwargs)
    return encoder.eval().to(device), tokenizer, max_length


@torch.inference_mode()
def embed(encoder: Any, tokenizer: Any, words: list[list[str]], max_length: int, batch_size: int = 64) -> TextEmbeddings:
    from pipeline.nlu.model import encode_words

    started = time.perf_counter()
    device = next(encoder.parameters()).device
    pooled = np.zeros((len(words), encoder.config.hidden_size), dtype=np.float32)
    per_word: list[np.ndarray] = [np.zeros((0, 0))] * len(words)
    order = sorted(range(len(words)), key=lambda i: len(words[i]))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        enc, firsts = encode_words(tokenizer, [words[i] for i in idx], max_length)
        # The batch goes to the encoder's device (review.device); what is kept comes back to the CPU.
        hidden = encoder(**{name: value.to(device) for name, value in enc.items()}).last_hidden_state.float().cpu()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        mean = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).numpy()
        for row, i in enumerate(idx):
            pooled[i] = mean[row]
            first = torch.tensor([max(p, 0) for p in firsts[row]], dtype=torch.long)
            vectors = hidden[row, first].numpy() if len(first) else np.zeros((0, hidden.shape[-1]), np.float32)
            vectors[[p < 0 for p in firsts[row]]] = 0.0  # words past max_length: nothing known
            per_word[i] = vectors
    return TextEmbeddings(pooled, per_word, time.perf_counter() - started)


def out_of_fold_probs(x: np.ndarray, y: np.ndarray, fold: np.ndarray, n_classes: int, c: float) -> np.ndarray:
    """P(class | x) for each row from a logistic regression fitted on the other folds' rows.

    Multinomial, L2-penalised as scikit-learn's (`c` is its C), fitted full-batch with L-BFGS in
    torch: the per-word tagger has tens of classes and thousands of rows, which scikit-learn's
    solver takes minutes over on two cores. A class missing from the other folds gets a small
    floor, so an annotation of a class seen nowhere else reads as very doubtful, not impossible;
    the text kinds leave such rows unjudged (seen_elsewhere says why).
    """
    probs = np.zeros((len(y), n_classes))
    for k in np.unique(fold):
        train, held = fold != k, fold == k
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        weight, bias = _fit_softmax(torch.from_numpy((x[train] - mean) / std).float(), torch.from_numpy(y[train]),
                                    n_classes, c)
        logits = torch.from_numpy((x[held] - mean) / std).float() @ weight + bias
        probs[held] = logits.softmax(-1).numpy()
    probs = np.maximum(probs, 1e-6)
    return probs / probs.sum(1, keepdims=True)


def _fit_softmax(x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float, iterations: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    present = torch.zeros(n_classes, dtype=torch.bool)
    present[y.unique()] = True
    absent = torch.where(present, 0.0, -30.0)  # never seen in these folds: never predicted from them
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias + absent, y, reduction="sum")
        loss = loss + 0.5 / c * (weight**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weight.detach(), (bias + absent).detach()
