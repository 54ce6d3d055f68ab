"""Batches built by padded audio seconds, grouped by length, the same on every run and resume.

Why not a fixed number of clips per batch: short commands and long requests differ several-fold in
length, so a fixed batch size either wastes memory on short clips or runs out on long ones, and
random batches spend much of their compute on padding. Here an epoch's plays of the train split
(played_clips: each clip once, or as `asr.source_weights` repeats or thins them) are shuffled (by seed
and epoch), cut into groups of `bucket_batches` batches, each group is sorted by duration and
cut so that `clips x longest clip <= max_batch_seconds`, then the batch order is shuffled again.
Because the batches of an epoch depend only on (seed, epoch), a resumed run can skip exactly the
batches it had already trained on.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

from pipeline.runtime import PipelineError


def pack_by_seconds(order: Sequence[int], durations: Sequence[float], max_batch_seconds: float) -> list[list[int]]:
    """Cut `order` (already sorted by length) into batches whose padded seconds fit the budget."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for idx in order:
        dur = float(durations[idx])
        if current and max(longest, dur) * (len(current) + 1) > max_batch_seconds:
            batches.append(current)
            current, longest = [], 0.0
        current.append(idx)
        longest = max(longest, dur)
    if current:
        batches.append(current)
    return batches


def over_budget_warning(durations: Sequence[float], longest_s: float, max_batch_seconds: float) -> str | None:
    """Why a batch may exceed the padded-seconds budget, or None: pack_by_seconds puts a clip (or a
    spliced play, see longest_play) longer than the budget in a batch of its own, which exceeds it
    (and may not fit the memory the budget was chosen for)."""
    clips = sum(float(d) > max_batch_seconds for d in durations)
    if clips:
        return (f"{clips} training clip(s) are longer than max_batch_seconds={max_batch_seconds:g}; each goes in "
                "a batch of its own that exceeds the budget (raise asr.max_batch_seconds)")
    if longest_s > max_batch_seconds:
        return (f"spliced plays (asr.splice) last up to {longest_s:.1f} s, longer than max_batch_seconds="
                f"{max_batch_seconds:g}; such a play goes in a batch of its own that exceeds the budget (raise "
                "asr.max_batch_seconds)")
    return None


def _known_sources(key: str, named: set[str], sources: Sequence[str] | None, where: str) -> Sequence[str]:
    """The train split's `source` column, when it has one and holds every source a setting names."""
    if sources is None:
        raise PipelineError(f"{key}: {where} has no `source` column to choose clips by; rebuild it with the data stage")
    present = sorted(set(sources))
    unknown = sorted(named - set(present))
    if unknown:
        raise PipelineError(f"{key}: {unknown} is no source of {where}'s train split (its sources: {present})")
    return sources


def source_plays(weights: Mapping[str, float] | None, sources: Sequence[str] | None, where: str) -> list[float] | None:
    """Per training clip, how often an epoch plays it (`asr.source_weights`); None = each once.

    Why: corpora differ in size, and in a fixed time budget a large one takes most of the steps. A
    weight below 1 plays a fresh seeded share of a source each epoch (every clip is still heard
    across epochs); above 1 repeats it. The human-voices recipe plays people twice and half of the
    demo on its own, the demo being heard again in spliced plays (spliced_plays, conf/data/demo_speech.yaml)."""
    if not weights:
        return None
    sources = _known_sources("asr.source_weights", set(weights), sources, where)
    plays = [float(weights.get(s, 1.0)) for s in sources]
    if not any(plays):
        raise PipelineError(f"asr.source_weights={dict(weights)}: every training clip of {where} would get weight 0")
    return plays


def balanced_plays(plays: list[float] | None, balance: Mapping | None, sources: Sequence[str] | None,
                   texts: Sequence[str] | None, where: str) -> list[float] | None:
    """`plays` (source_plays) with each clip of `balance`'s sources played min(max_plays, n_top / n)
    times as often, n being how many training clips of its source say its transcript and n_top how
    many say the source's commonest one.

    Why (`asr.word_balance`): Speech Commands has ~200 training clips of each of its ten core words
    and ~10 of each other word, so the model learns the core words from many people and the digits
    from a few, and hears a digit said by someone new as a core word ("two" as "go", "nine" as
    "right"). Played more often, the rare words weigh as much as the core words in the loss. On the
    human-voices recipe 4x did not help: the same few people heard more often (off there; see
    conf/data/demo_speech.yaml)."""
    if not balance:
        return plays
    chosen = set(balance["sources"])
    sources = _known_sources("asr.word_balance", chosen, sources, where)
    if texts is None or len(texts) != len(sources):
        raise PipelineError(f"asr.word_balance: {where} has no transcript per training clip to count")
    counts = Counter((s, t) for s, t in zip(sources, texts) if s in chosen)
    top: dict[str, int] = {}
    for (source, _), n in counts.items():
        top[source] = max(top.get(source, 0), n)
    cap = float(balance["max_plays"])
    base = plays if plays is not None else [1.0] * len(sources)
    return [w * min(cap, top[s] / counts[s, t]) if s in chosen else w for w, s, t in zip(base, sources, texts)]


def played_clips(count: int, seed: int, epoch: int, plays: Sequence[float] | None = None) -> list[int]:
    """The clips an epoch plays, one entry per play: each of the `count` clips once (plays None), or
    clip i int(plays[i]) times and once more with the chance of the fraction left over (source_plays).
    Batches are made of positions in this list, so a clip played twice is two plays with their own
    augmentation draws (plan_augmentation is per play)."""
    if plays is None:
        return list(range(count))
    rng = random.Random(f"plays/{seed}/{epoch}")
    order: list[int] = []
    for i, weight in enumerate(plays):
        whole = int(weight)
        order.extend([i] * (whole + (rng.random() < weight - whole)))
    return order


def spliced_plays(clips: list[int], sources: Sequence[str] | None, splice: Mapping | None, seed: int, epoch: int,
                  where: str = "the dataset") -> list[int | tuple[int, int]]:
    """An epoch's plays (played_clips) with a share of some sources' plays joined to a random clip of
    other sources, in a random order: one play of two clips, e.g. a person's word and a synthetic command.

    Why (`asr.splice`): when every human clip is a word of a small vocabulary and every synthetic clip
    an open command, the model can learn "a human voice says one of these words" and never hear a
    word it only heard synthesised (the held-out "computer" clips decode as human words). Joined,
    one clip carries both voices and one room, so the voice no longer tells the vocabulary."""
    if not splice:
        return list(clips)
    chosen, partners = set(splice["sources"]), set(splice["partners"])
    sources = _known_sources("asr.splice", chosen | partners, sources, where)
    pool = [i for i, s in enumerate(sources) if s in partners]
    rng = random.Random(f"splice/{seed}/{epoch}")
    out: list[int | tuple[int, int]] = []
    for clip in clips:
        if sources[clip] in chosen and rng.random() < float(splice["prob"]):
            other = pool[rng.randrange(len(pool))]
            out.append((clip, other) if rng.random() < 0.5 else (other, clip))
        else:
            out.append(clip)
    return out


def longest_play(durations: Sequence[float], sources: Sequence[str] | None, splice: Mapping | None,
                 where: str = "the dataset") -> float:
    """Seconds of the longest play an epoch can hold: its longest clip, or a spliced play of the
    longest clip of the spliced sources, the gap and the longest partner (spliced_plays), whichever
    is longer. The compile buckets and the GPU memory probe must fit it: sized on the clips alone, a
    spliced play past the largest bucket was padded to twice that bucket (a new compiled graph, and
    a batch the probe had not measured)."""
    longest = max(durations, default=0.0)
    if not splice or float(splice["prob"]) <= 0:
        return longest
    chosen, partners = set(splice["sources"]), set(splice["partners"])
    sources = _known_sources("asr.splice", chosen | partners, sources, where)
    first = max((d for d, s in zip(durations, sources) if s in chosen), default=None)
    second = max((d for d, s in zip(durations, sources) if s in partners), default=None)
    if first is None or second is None:
        return longest
    return max(longest, first + float(splice["gap_s"]) + second)


def epoch_batches(
    durations: Sequence[float], max_batch_seconds: float, bucket_batches: int, seed: int, epoch: int,
    rank: int = 0, world_size: int = 1,
) -> list[list[int]]:
    """This process's training batches for `epoch` as positions in `durations` (one per play, see
    played_clips); every rank gets the same number of them, none when there are fewer batches than
    ranks (one rank training alone would wait for the others for good)."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(durations)))
    rng.shuffle(order)
    mean = max(sum(durations) / max(len(durations), 1), 1e-3)
    group = max(1, int(bucket_batches * max_batch_seconds / mean))
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: durations[i])
        batches.extend(pack_by_seconds(chunk, durations, max_batch_seconds))
    rng.shuffle(batches)
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


def eval_batches(durations: Sequence[float], max_batch_seconds: float) -> list[list[int]]:
    """Validation/test batches: everything sorted by length, so padding is minimal."""
    order = sorted(range(len(durations)), key=lambda i: durations[i])
    return pack_by_seconds(order, durations, max_batch_seconds)
