"""The wake-word detector run as a stream over long background recordings, and false accepts per hour.

A recording is read block by block and cut into overlapping windows of `window_s` seconds every
`hop_s`; equal-length windows go through the ASR model in batches (no padding), and the keyword
score of `pipeline.eval.wake` gives, for every 20 ms frame, the score of the best keyword ending
there. Each window is trusted only away from its edges (the model needs context on both sides to
decide the word boundary after "alexa" in "alexander"): its middle `hop_s` seconds, which tile the
recording, so every frame is scored by exactly one window with at least (window_s - hop_s) / 2
seconds of context either side (the recording's first such stretch is not scored, and not counted
in its hours; its last has only what follows). Memory stays that of one batch of windows, whatever
the length.

A detection is the first frame at or above the threshold; frames within `refractory_s` after it
are ignored, as a deployed detector ignores them. The count of detections can only fall as the
threshold rises (the greedy scan finds the most frames that lie `refractory_s` apart), so the
threshold for a target rate is found by bisection over the scores seen.

Only frames at or above `floor` are kept, as (frame, score) pairs: a threshold below every positive
clip's score is never chosen, so the caller passes the lowest positive score of both splits as the
floor (the test's DET needs its frames; the tuning looks only above the validation positives).

Each recording's decoded samples also get a digest (at 16-bit resolution), written beside its count
of false accepts: two runs' counts are paired (pipeline.ops.compare, the retraining gate) only on
recordings of the same audio, not on two folders whose files merely share names and lengths.
Recordings are named by their keyed pseudonyms and positions (pipeline.data.background), never by
the names their files or export give them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.asr.model import log_probs_of, output_lengths, samples_per_frame
from pipeline.data.background import (
    DEMO_DIR, Recording, background_knobs, ensure_demo_background, ffmpeg_blocks, without_path,
)
from pipeline.data.audio import needs_polyphase, resample_polyphase
from pipeline.data.features import FFMPEG_EXTENSIONS, SAMPLING_RATE
from pipeline.eval.config import check_stream
from pipeline.eval.coverage import FA_RATES
from pipeline.eval.wake import NEG_INF, WakeResult, keyword_trace, permitted_false_accepts
from pipeline.run_folder import BUILD_REPORT
from pipeline.runtime import PipelineError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class StreamSettings:
    window_s: float = 6.0
    hop_s: float = 4.0
    batch_size: int = 8  # windows per forward pass
    refractory_s: float = 1.0
    block_s: float = 30.0  # audio read (and resampled) per step; only speed depends on it


@dataclass
class Trace:
    """The kept keyword scores of one recording: frame index (20 ms frames) and score."""

    name: str  # the recording's pseudonym (Recording.name): what every output calls it
    split: str
    seconds: float
    frames: np.ndarray
    scores: np.ndarray
    digest: str | None = None  # of the decoded samples (`audio_digest`)
    position: str = ""  # where it sits in the background source (Recording.position)


@dataclass
class StreamStats:
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    windows: int = 0
    traces: list[Trace] = field(default_factory=list)


def _blocks(recording: Recording, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """Mono 16 kHz samples, block by block. Another rate is resampled per block with half a second
    of the neighbouring audio on each side, trimmed off again, so the blocks join without seams."""
    if recording.row is None and recording.path.suffix.lower() in FFMPEG_EXTENSIONS:
        yield from ffmpeg_blocks(recording.path, block_s, recording.label)
        return
    with recording.open() as f:
        rate = f.samplerate
        if rate == SAMPLING_RATE:
            while True:
                block = f.read(int(block_s * rate), dtype="float32", always_2d=True)
                if not len(block):
                    return
                yield block.mean(axis=1)
        import torchaudio.functional as AF

        g = math.gcd(rate, SAMPLING_RATE)
        unit_in, unit_out = rate // g, SAMPLING_RATE // g
        step = max(1, round(block_s * rate / unit_in)) * unit_in
        context = max(1, math.ceil(0.5 * rate / unit_in)) * unit_in
        pos = 0
        while pos < f.frames:
            start = max(0, pos - context)
            f.seek(start)
            chunk = f.read(min(f.frames, pos + step + context) - start, dtype="float32", always_2d=True).mean(axis=1)
            out = (resample_polyphase(chunk, rate) if needs_polyphase(rate)  # a kernel of gigabytes otherwise
                   else AF.resample(torch.from_numpy(chunk), rate, SAMPLING_RATE).numpy())
            lead = (pos - start) // unit_in * unit_out
            keep = math.ceil(min(step, f.frames - pos) * SAMPLING_RATE / rate)
            yield out[lead : lead + keep]
            pos += step


def _windows(blocks: Iterator[np.ndarray], window: int, hop: int, stride: int) -> Iterator[tuple[int, np.ndarray, bool]]:
    """(start sample, samples, is_last) of windows every `hop` samples; the last one ends at the
    recording's end (within a frame), and a recording shorter than a window is one short window.
    Only the samples a coming window still needs are held."""
    buf = np.zeros(0, dtype=np.float32)
    buf_start, next_start = 0, 0
    pending: tuple[int, np.ndarray] | None = None  # held back until we know whether it is the last
    for block in blocks:
        buf = np.concatenate([buf, block.astype(np.float32, copy=False)])
        while next_start + window <= buf_start + len(buf):
            if pending is not None:
                yield pending[0], pending[1], False
            off = next_start - buf_start
            pending = (next_start, buf[off : off + window].copy())
            next_start += hop
        # Keep what the next window needs, and the last window's worth in case the stream ends here.
        keep_from = max(buf_start, min(next_start, buf_start + len(buf) - window - stride))
        buf, buf_start = buf[keep_from - buf_start :], keep_from
    total = buf_start + len(buf)
    if pending is None:
        if total > 0:
            yield 0, buf.copy(), True
        return
    if pending[0] + window >= total:
        yield pending[0], pending[1], True
        return
    yield pending[0], pending[1], False
    start = (total - window) // stride * stride
    yield start, buf[start - buf_start : start - buf_start + window].copy(), True


@torch.inference_mode()
def stream_background(
    model: Any, processor: Any, recordings: Sequence[Recording], keyword: list[int], blank: int,
    settings: StreamSettings, floor: float = NEG_INF,
) -> StreamStats:
    """Keyword scores over every frame of every recording (kept where >= `floor`)."""
    stride = samples_per_frame(model)
    window = max(1, round(settings.window_s * SAMPLING_RATE / stride)) * stride
    hop = max(1, round(settings.hop_s * SAMPLING_RATE / stride)) * stride
    check_stream(settings.window_s, settings.hop_s, settings.refractory_s)
    margin = (window - hop) // 2 // stride  # frames of each window's edges left to its neighbours
    stats = StreamStats()
    started = time.perf_counter()
    for rec in recordings:
        if not rec.name:  # a name as written would reach eval_details.json and the report
            raise ValueError(f"background recording at {rec.position or rec.split} has no pseudonym: load it with "
                             "pipeline.data.background.load_background")
        kept_frames: list[np.ndarray] = []
        kept_scores: list[np.ndarray] = []
        # Frames already scored by an earlier window. The recording's first `margin` frames are not
        # scored: without left context the model says what most training clips start with (the wake
        # word), and a recording's start is a cut that a device listening all day does not have.
        covered = margin
        batch: list[tuple[int, np.ndarray, bool]] = []

        def flush() -> None:
            nonlocal covered
            if not batch:
                return
            # Windows of one batch have one length, except a recording's single short window.
            groups: dict[int, list[tuple[int, np.ndarray, bool]]] = {}
            for item in batch:
                groups.setdefault(len(item[1]), []).append(item)
            results = {}
            for items in groups.values():
                log_probs, _ = log_probs_of(model, processor, [w for _, w, _ in items])  # one length: no padding
                emissions = log_probs.numpy()
                lengths = np.full(len(items), emissions.shape[1])
                trace = keyword_trace(emissions, lengths, keyword, blank)
                for (start, _, _), row in zip(items, trace):
                    results[start] = row
            for start, _, last in batch:
                row = results[start]
                first_frame = start // stride
                begin = max(covered, first_frame)
                end = first_frame + len(row) - (0 if last else margin)
                if end <= begin:
                    continue
                segment = row[begin - first_frame : end - first_frame]
                keep = np.flatnonzero(segment >= floor) if math.isfinite(floor) else np.flatnonzero(np.isfinite(segment))
                kept_frames.append((keep + begin).astype(np.int64))
                kept_scores.append(segment[keep].astype(np.float32))
                covered = end
            stats.windows += len(batch)
            batch.clear()

        streamed = 0  # samples decoded: a file cut short counts what was heard, not what its header says
        digest = audio_digest()

        def counted(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
            nonlocal streamed
            try:
                for block in blocks:
                    streamed += len(block)
                    digest.update(as_pcm16(block))
                    yield block
            except sf.LibsndfileError as err:  # a damaged or truncated file, found only when read
                raise PipelineError(
                    f"background recording {rec.label}: cannot decode it past "
                    f"{streamed / SAMPLING_RATE:.0f} s of the {rec.seconds:.0f} s its header gives "
                    f"({without_path(err, rec.path)}); "
                    "re-encode it or take it out") from err

        for start, samples, last in _windows(counted(_blocks(rec, settings.block_s)), window, hop, stride):
            if len(samples) < window and int(output_lengths(model, [len(samples)])[0]) <= margin:
                continue  # a recording shorter than its context: no frame to score (and too short for the model)
            batch.append((start, samples, last))
            if len(batch) >= settings.batch_size:
                flush()
        flush()
        seconds = streamed / SAMPLING_RATE
        stats.audio_seconds += seconds  # streamed (the scored seconds are the trace's)
        stats.traces.append(Trace(
            rec.name, rec.split, max(0.0, seconds - margin * stride / SAMPLING_RATE),
            np.concatenate(kept_frames) if kept_frames else np.zeros(0, np.int64),
            np.concatenate(kept_scores) if kept_scores else np.zeros(0, np.float32),
            digest.hexdigest(), rec.position,
        ))
    stats.compute_seconds = time.perf_counter() - started
    return stats


def audio_digest() -> Any:
    """The hash of a recording's samples (blake2b over 16-bit PCM: 0.7 s for the demo's 4.4 h, about 1.5% of streaming them)."""
    return hashlib.blake2b(digest_size=16)


def as_pcm16(samples: np.ndarray) -> bytes:
    """Samples as 16-bit PCM bytes: two decoders that differ in a float's last bits give the same digest."""
    scaled = np.asarray(samples, dtype=np.float32) * np.float32(32767.0)
    np.clip(scaled, -32768, 32767, out=scaled)
    return np.rint(scaled, out=scaled).astype("<i2").tobytes()


def frame_seconds(model: Any) -> float:
    return samples_per_frame(model) / SAMPLING_RATE


def detections(trace: Trace, threshold: float, refractory_frames: float) -> np.ndarray:
    """The frames where a detector with this threshold fires: the first frame at or above it, then
    nothing for `refractory_frames`."""
    # In float64: the scores are stored as float32, and a threshold just above one of them (the
    # tuning's midpoint or next float) would round back onto it and accept the frame it must reject.
    frames = trace.frames[trace.scores.astype(np.float64, copy=False) >= threshold]
    fired = []
    i = 0
    while i < frames.size:
        fired.append(frames[i])
        # At least the next frame: with no refractory period each frame at or above it is a detection.
        i = max(i + 1, int(np.searchsorted(frames, frames[i] + refractory_frames, side="left")))
    return np.array(fired, dtype=np.int64)


def count_detections(traces: Sequence[Trace], threshold: float, refractory_frames: float) -> int:
    return sum(len(detections(t, threshold, refractory_frames)) for t in traces)


def lowest_threshold(traces: Sequence[Trace], allowed: int, refractory_frames: float) -> tuple[float | None, float | None]:
    """(the highest background score the threshold must reject, the lowest one it may accept) for
    at most `allowed` detections; (None, lowest score) when every frame may be accepted, and
    (highest score, None) when none may. The count only falls as the threshold rises: bisection."""
    values = np.unique(np.concatenate([t.scores for t in traces])) if traces else np.zeros(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    lo, hi = 0, values.size  # index `values.size` stands for a threshold above every score (0 detections)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_detections(traces, float(values[mid]), refractory_frames) <= allowed:
            hi = mid
        else:
            lo = mid + 1
    rejected = float(values[lo - 1]) if lo > 0 else None
    accepted = float(values[lo]) if lo < values.size else None
    return rejected, accepted


def threshold_for_rate(traces: Sequence[Trace], hours: float, rate: float, refractory_frames: float) -> float:
    """The lowest threshold whose false accepts per hour stay within `rate` (accept: score >= it).
    When the rate permits every background frame, the lowest finite float32: not -inf, which a clip
    too short for the keyword scores (pipeline.eval.wake) and would then count as accepted, and not
    float64's, which a float32 array of scores compared with it reads as -inf (an overflow)."""
    allowed = permitted_false_accepts(rate, hours)
    rejected, _ = lowest_threshold(traces, allowed, refractory_frames)
    return float(np.finfo(np.float32).min) if rejected is None else float(np.nextafter(rejected, np.inf))


def tune_on_background(
    positives: np.ndarray, traces: Sequence[Trace], hours: float, target: float, refractory_frames: float,
) -> float:
    """The most permissive threshold (lowest FRR on the positives) whose detections on the
    background stay within `target` per hour; it sits halfway between the highest background score
    it must reject and the next score above (positive or background), like the clip-level tuning.

    Only background frames at or above the lowest positive count, and when the target permits all
    of them the threshold is that positive's score: a lower one would accept more and reject no
    positive fewer. The traces may hold lower frames (they are kept down to the lowest positive of
    every split, for the test's DET), and those must not move a threshold tuned on these positives."""
    finite_pos = positives[np.isfinite(positives)]
    floor = float(finite_pos.min()) if finite_pos.size else NEG_INF
    traces = [replace(t, frames=t.frames[t.scores >= floor], scores=t.scores[t.scores >= floor]) for t in traces]
    allowed = permitted_false_accepts(target, hours)
    rejected, _ = lowest_threshold(traces, allowed, refractory_frames)
    if rejected is None:
        if math.isfinite(floor):
            return floor
        candidates = np.concatenate([t.scores for t in traces]) if traces else np.zeros(0)
        candidates = candidates[np.isfinite(candidates)]
        return float(candidates.min()) if candidates.size else 0.0
    above = np.unique(np.concatenate([finite_pos] + [t.scores[t.scores > rejected] for t in traces]))
    above = above[above > rejected]
    if above.size == 0:
        return float(np.nextafter(rejected, np.inf))
    return float((rejected + above[0]) / 2.0)


@dataclass(frozen=True)
class BackgroundResult:
    threshold: float
    frr: float
    fa_per_hour: float
    false_accepts: int
    hours: float
    recordings: int
    frr_at: dict[float, float]  # FRR at each rate of FA_RATES, read off the DET
    det: list[dict[str, float]]  # points of the DET: threshold, fa_per_hour, frr
    errors: list[dict[str, Any]]  # the false accepts: recording (its pseudonym), position, time, score
    # Each recording's scored seconds and false accepts: what a paired comparison of two models on
    # the same background resamples (pipeline.eval.bootstrap.paired_rate_difference).
    per_recording: list[dict[str, Any]] = field(default_factory=list)


def evaluate_background(
    positives: np.ndarray, traces: Sequence[Trace], hours: float, threshold: float, refractory_frames: float,
    frame_s: float, max_errors: int = 20,
) -> BackgroundResult:
    """FRR on the positive clips and false accepts per hour on the background at `threshold`, and
    the DET (FRR against false accepts per hour) with the FRR at fixed rates read off it."""
    if positives.size == 0:
        raise ValueError("no positive clips to measure the false reject rate on")
    rate = lambda th: count_detections(traces, th, refractory_frames) / hours  # noqa: E731
    frr = lambda th: float(np.mean(positives < th))  # noqa: E731
    det = [{"threshold": float(p), "fa_per_hour": rate(float(p)), "frr": frr(float(p))}
           for p in np.unique(positives[np.isfinite(positives)])]
    top = max([float(t.scores.max()) for t in traces if t.scores.size] + [float(np.max(positives))])
    det.append({"threshold": float(np.nextafter(top, np.inf)), "fa_per_hour": 0.0, "frr": 1.0})
    frr_at = {r: frr(threshold_for_rate(traces, hours, r, refractory_frames)) for r in FA_RATES}
    errors, per_recording = [], []
    for t in traces:
        fired = detections(t, threshold, refractory_frames)
        per_recording.append({"recording": t.name, "position": t.position, "seconds": t.seconds,
                              "false_accepts": len(fired), "digest": t.digest})
        for f in fired:
            score = float(t.scores[np.searchsorted(t.frames, f)])
            errors.append({"recording": t.name, "position": t.position, "time_s": round(float(f) * frame_s, 2),
                           "score": score})
    count = len(errors)
    errors.sort(key=lambda e: -e["score"])
    return BackgroundResult(
        threshold=float(threshold), frr=frr(threshold), fa_per_hour=count / hours, false_accepts=count,
        hours=hours, recordings=len(traces), frr_at=frr_at, det=det, errors=errors[:max_errors],
        per_recording=per_recording,
    )


def _warn_below_min_hours(details: dict[str, Any], min_hours: float, source: Path | None, which: str,
                          consequence: str) -> None:
    """The warning for a split with less background than eval.min_background_hours (`which`: whose hours)."""
    had = ", ".join(f"{s} {h:.2f} h" for s, h in details["hours"].items())
    _warn(details, f"background audio below eval.min_background_hours={min_hours:g} h per split ({which}{had}; "
                   f"source: {source or 'none'}); {consequence}")


def background_wake(
    ecfg: Any, source: Path | None, recordings: Sequence[Recording], model: Any, processor: Any, keyword: list[int],
    val_positives: np.ndarray, test_positives: np.ndarray,
) -> tuple[BackgroundResult | None, dict[str, Any]]:
    """The wake-word operating point from background recordings (`recordings`, read from `source` by
    pipeline.data.background.load_background): the threshold
    tuned on validation positives + validation background to `eval.target_fa_per_hour`, then FRR,
    false accepts per hour and the DET on the test split. None (and a warning in the details) when
    either split has no background audio: the caller keeps the clip-level figures."""
    splits = (str(ecfg.tune_split), str(ecfg.split))
    min_hours = float(ecfg.min_background_hours)
    refractory_s = float(ecfg.refractory_s)
    settings = StreamSettings(
        window_s=float(ecfg.stream_window_s), hop_s=float(ecfg.stream_hop_s),
        batch_size=int(ecfg.stream_batch_size), refractory_s=refractory_s,
    )
    details: dict[str, Any] = {
        "source": str(source) if source else None, "refractory_s": refractory_s, "window_s": settings.window_s,
        "hop_s": settings.hop_s, "min_hours": min_hours, "hours": {s: 0.0 for s in splits},
        "recordings": {s: 0 for s in splits}, "warning": None,
    }
    for rec in recordings:
        details["hours"][rec.split] += rec.seconds / 3600.0
        details["recordings"][rec.split] += 1
    if min(details["hours"].values()) == 0:  # nothing to stream in a split
        if min_hours > 0:
            _warn_below_min_hours(details, min_hours, source, "",
                                  "false accepts per hour and the threshold come from the negative clips instead, a "
                                  "few seconds of audio that cannot measure a rate of a few per hour")
        elif source is not None:
            empty = [s for s, h in details["hours"].items() if h == 0]
            _warn(details, f"no background recording in split(s) {empty} of {source} (a folder's recordings go "
                           f"under {'/, '.join(empty)}/); false accepts per hour come from the negative clips")
        return None, details

    if not np.isfinite(val_positives).any():  # nothing to tune on: the test's positives must not stand in
        _warn(details, f"split {splits[0]} has no wake-word positive to tune the threshold on; false accepts per "
                       "hour come from the negative clips")
        return None, details
    all_pos = np.concatenate([val_positives, test_positives])
    finite = all_pos[np.isfinite(all_pos)]
    floor = float(finite.min()) if finite.size else NEG_INF
    stats = stream_background(model, processor, recordings, keyword, int(processor.tokenizer.pad_token_id), settings, floor)
    frame_s = frame_seconds(model)
    refractory_frames = refractory_s / frame_s
    traces = {s: [t for t in stats.traces if t.split == s] for s in splits}
    details["hours"] = {s: sum(t.seconds for t in traces[s]) / 3600.0 for s in splits}  # the scored hours
    unscored = [s for s, h in details["hours"].items() if h == 0]
    if unscored:  # each recording's first window is context, not scored: a clip of a second has none
        _warn(details, f"the background recordings of split(s) {unscored} are too short to score (about "
                       f"{(settings.window_s - settings.hop_s) / 2:g} s at the start of each is context); give "
                       "recordings of minutes, not seconds; false accepts per hour come from the negative clips")
        return None, details
    # Judged on the hours scored, not those the files' headers give: a file cut short, and each
    # recording's first seconds (context), are not heard.
    if min(details["hours"].values()) < min_hours:
        _warn_below_min_hours(details, min_hours, source, "scored: ",
                              "the threshold and false accepts per hour rest on little audio")
    target = float(ecfg.target_fa_per_hour)
    threshold = tune_on_background(val_positives, traces[splits[0]], details["hours"][splits[0]], target,
                                   refractory_frames)
    tuned_on = count_detections(traces[splits[0]], threshold, refractory_frames)
    result = evaluate_background(test_positives, traces[splits[1]], details["hours"][splits[1]], threshold,
                                 refractory_frames, frame_s, int(ecfg.worst_n))
    details.update({
        "threshold": result.threshold, "target_fa_per_hour": target,
        "tune_false_accepts": tuned_on, "tune_fa_per_hour": tuned_on / details["hours"][splits[0]],
        "tune_frr": float(np.mean(val_positives < threshold)) if val_positives.size else None,
        "false_accepts": result.false_accepts, "fa_per_hour": result.fa_per_hour, "frr": result.frr,
        "frr_at": {f"{r:g}": v for r, v in result.frr_at.items()}, "det": result.det, "errors": result.errors,
        "per_recording": result.per_recording,
        "audio_seconds": stats.audio_seconds, "compute_seconds": stats.compute_seconds,
        "x_real_time": stats.audio_seconds / max(stats.compute_seconds, 1e-9),
    })
    log.info("eval: streamed %.2f h of background at %.0fx real time; threshold %.3f: %d false accepts in %.2f h "
             "of %s background, FRR %.3f", stats.audio_seconds / 3600, details["x_real_time"], threshold,
             result.false_accepts, result.hours, splits[1], result.frr)
    return result, details


def _warn(details: dict[str, Any], warning: str) -> None:
    """The background's caution: logged, and kept in eval_details.json for the report."""
    details["warning"] = warning
    log.warning("eval: %s", warning)




def background_metrics(details: dict[str, Any] | None, split: str) -> dict[str, Any]:
    """The metrics.json keys of the streamed evaluation; none when it did not run (no recordings, or
    no wake metrics at all), so that 0 hours never reads as a measurement (the caller says why)."""
    if not details or "threshold" not in details:
        return {}
    frr_at = details.get("frr_at") or {}
    return {**{f"wake/frr_at_{r:g}_fa_per_hour": frr_at.get(f"{r:g}") for r in FA_RATES},
            "wake/background_hours": details["hours"][split]}


def with_background(wake: WakeResult, result: BackgroundResult | None) -> WakeResult:
    """The clip-level result with threshold, FRR and false accepts per hour from the background."""
    if result is None:
        return wake
    return replace(wake, threshold=result.threshold, frr=result.frr, fa_per_hour=result.fa_per_hour,
                   background_hours=result.hours, background_false_accepts=result.false_accepts)


def resolve_background(cfg: Any, dataset_path: Path | None = None) -> Path | None:
    """`eval.background`: a path; `none`; or `auto`: when the evaluated dataset was built from the
    demo, alone or as an entry of `data.sources` (its build_report.json says so), the demo's
    background from `data.background`, synthesised and cached like its clips, in proportion to the
    share of the corpus the build read (a `data.demo.max_utterances` smoke run gets a smaller one);
    otherwise none."""
    if OmegaConf.select(cfg, "eval", default=None) is None:
        return None
    value = cfg.eval.get("background", "auto")
    if value is None or str(value).lower() in ("none", "null", ""):
        return None
    if str(value) != "auto":
        return Path(str(value)).expanduser().resolve()
    block = (cfg.get("data") or {}).get("background")
    report = Path(dataset_path) / BUILD_REPORT if dataset_path else None
    if block is None or report is None or not report.exists():
        return None
    share = _demo_share(cfg.get("data"), json.loads(report.read_text()))
    if share is None:
        return None
    cache_dir = cfg.get("cache_dir")
    if not cache_dir:
        raise PipelineError("eval.background=auto with the demo's data.background needs cache_dir in the config")
    knobs = background_knobs(_to_dict(block))
    knobs = replace(knobs, hours=knobs.hours * share)
    splits = (str(cfg.eval.tune_split), str(cfg.eval.split))
    return ensure_demo_background(knobs, Path(str(cache_dir)), splits)


def _demo_share(data: Any, build: dict[str, Any]) -> float | None:
    """The share of the demo corpus a build read, or None when it read no demo: its
    `demo.max_utterances` over the corpus. Not the build's records: they include the extra takes
    and keyword copies (three times the utterances with data.demo.extra_takes=2)."""
    total = sum(1 for line in (DEMO_DIR / "utterances.jsonl").open() if line.strip())
    source = build.get("source")
    names = set(source) if isinstance(source, list) else set()
    demos = ([data.get("demo") or {}] if source == "demo" else
             [entry.get("demo") or {} for entry in data.get("sources") or []
              if entry.get("source") == "demo" and (entry.get("name") or "demo") in names])
    if not demos:
        return None
    limit = demos[0].get("max_utterances")
    return min(1.0, int(limit) / total) if limit else 1.0


def _to_dict(block: Any) -> dict[str, Any]:
    return OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else dict(block)
