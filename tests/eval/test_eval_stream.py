"""The streaming wake-word detector: detections with a refractory period, the threshold for a rate
of false accepts per hour (by hand), the stream against the clip scorer, and the eval stage with
background recordings (a few seconds of them here; the demo's hours run only in `make train`)."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.data.background import Recording
from pipeline.data.privacy import recording_pseudonym
from pipeline.eval import bootstrap as B
from pipeline.eval.stream import (
    StreamSettings, Trace, as_pcm16, audio_digest, background_wake, count_detections, detections, evaluate_background,
    stream_background, threshold_for_rate, tune_on_background,
)
from pipeline.eval.wake import keyword_trace
from pipeline.runtime import PipelineError
from tests.conftest import espeak_wave
from tests.eval.test_eval_run import eval_cfg, save_tiny_asr, save_tiny_nlu
from tests.recording import RecordingTracker


KEY = b"test key"
KEY_ENV = "PIPELINE_TEST_BACKGROUND_KEY"


def with_key(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """The eval config's `privacy` block, its key (KEY) in an environment variable."""
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    return {"privacy.key_env": KEY_ENV, "privacy.key_file": None}


def audio_digest_of(samples: np.ndarray) -> str:
    digest = audio_digest()
    digest.update(as_pcm16(samples))
    return digest.hexdigest()


def trace(frames: list[int], scores: list[float], seconds: float = 1800.0, split: str = "test") -> Trace:
    return Trace("rec", split, seconds, np.array(frames, dtype=np.int64), np.array(scores, dtype=np.float32))


def test_a_detection_silences_the_detector_for_the_refractory_period() -> None:
    t = trace([10, 11, 12, 100, 130, 300], [-1.0, -0.5, -1.0, -2.0, -1.0, -3.0])
    # 50 frames (1 s of 20 ms frames): 11 and 12 fall within 10's period, 130 within 100's.
    assert detections(t, -5.0, 50).tolist() == [10, 100, 300]
    # Above -1.5, 100 and 300 are gone, so 130 is a detection of its own.
    assert detections(t, -1.5, 50).tolist() == [10, 130]
    assert detections(t, -0.7, 50).tolist() == [11]
    assert count_detections([t, t], -5.0, 50) == 6


def test_no_refractory_period_counts_each_frame_at_or_above_the_threshold() -> None:
    """Before the fix: with eval.refractory_s=0 (which the settings accept) the scan looked for the
    next detection from the frame it had just counted, found that frame again, and never ended,
    its list of detections growing until memory ran out."""
    t = trace([10, 11, 12, 100], [-1.0, -0.5, -3.0, -2.0])
    assert detections(t, -2.5, 0).tolist() == [10, 11, 100]
    assert count_detections([t], -5.0, 0.0) == 4


def test_threshold_for_a_rate_of_false_accepts_by_hand() -> None:
    # Two half-hour validation recordings: one hour, so 1 per hour allows one detection.
    background = [trace([100, 5000], [-2.0, -6.0], split="validation"), trace([70], [-4.0], split="validation")]
    positives = np.array([-1.0, -3.0, -5.0, -8.0])
    # The highest background event (-2) may pass; -4 must not: halfway to the next score above it (-3).
    threshold = tune_on_background(positives, background, 1.0, 1.0, 50)
    assert threshold == pytest.approx(-3.5)
    assert count_detections(background, threshold, 50) == 1
    # None allowed: reject -2 too, halfway to -1; every event allowed: down to the lowest positive.
    assert tune_on_background(positives, background, 1.0, 0.0, 50) == pytest.approx(-1.5)
    assert tune_on_background(positives, background, 1.0, 5.0, 50) == -8.0
    # The DET's reading at a rate is the lowest threshold that keeps to it.
    assert threshold_for_rate(background, 1.0, 2.0, 50) == pytest.approx(np.nextafter(np.float32(-6.0), np.inf))
    assert threshold_for_rate(background, 1.0, 1.0, 50) > -4.0

    result = evaluate_background(positives, background, 1.0, threshold, 50, frame_s=0.02)
    assert (result.false_accepts, result.fa_per_hour, result.frr) == (1, 1.0, 0.5)  # -5 and -8 are rejected
    assert result.errors == [{"recording": "rec", "position": "", "time_s": 2.0, "score": -2.0}]
    assert result.frr_at[1.0] == 0.5 and result.frr_at[2.0] == 0.25 and result.frr_at[5.0] == 0.0
    assert result.frr_at[0.5] == 0.75  # no detection allowed: above -2, only -1 is accepted
    # Each DET point: FRR and false accepts per hour at a positive's score.
    assert {(p["threshold"], p["fa_per_hour"], p["frr"]) for p in result.det} >= {(-8.0, 3.0, 0.0), (-1.0, 0.0, 0.75)}


@pytest.fixture(scope="module")
def tiny_model(tiny_dataset_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from pipeline.asr.model import load_asr
    from pipeline.eval.run import keyword_ids

    folder = tmp_path_factory.mktemp("asr")
    save_tiny_asr(tiny_dataset_path, folder)
    model, processor = load_asr(folder)
    return model, processor, keyword_ids(processor, "alexa", True, folder)


def _recording(path: Path, wave: np.ndarray, rate: int = 16000) -> Recording:
    sf.write(path, wave, rate)
    return Recording(path.name, "test", path, len(wave) / rate, name=recording_pseudonym(KEY, path.name),
                     position="audio file 1")


def test_the_stream_scores_every_frame_once_whatever_the_block_size(tiny_model: tuple, tmp_path: Path) -> None:
    model, processor, keyword = tiny_model
    speech = np.concatenate([espeak_wave("the weather is mild today, alexander is at school"), np.zeros(8000)])
    wave = np.tile(speech, 4).astype(np.float32)  # ~ 20 s: several windows
    rec = _recording(tmp_path / "long.wav", wave)
    settings = StreamSettings(window_s=3.0, hop_s=2.0, batch_size=3)
    blank = processor.tokenizer.pad_token_id
    one = stream_background(model, processor, [rec], keyword, blank, settings).traces[0]
    small = stream_background(model, processor, [rec], keyword, blank, StreamSettings(3.0, 2.0, 2, block_s=0.37)).traces[0]
    np.testing.assert_array_equal(one.frames, small.frames)
    np.testing.assert_allclose(one.scores, small.scores, rtol=1e-5)
    assert np.all(np.diff(one.frames) == 1)  # each frame once, none skipped
    n_frames = len(wave) // 320
    # From the end of the first window's left margin ((3 - 2) / 2 s = 25 frames) to the end.
    assert one.frames[0] == 25 and one.frames[-1] >= n_frames - 3
    assert one.seconds == pytest.approx(len(wave) / 16000 - 0.5)

    # A recording shorter than a window is one window: past its margin, the clip scorer's trace.
    short = _recording(tmp_path / "short.wav", speech)
    streamed = stream_background(model, processor, [short], keyword, blank, StreamSettings(window_s=6.0, hop_s=4.0))
    inputs = processor.feature_extractor([speech], sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        log_probs = model(inputs["input_values"]).logits.log_softmax(-1).numpy()
    clip = keyword_trace(log_probs, np.array([log_probs.shape[1]]), keyword, blank)[0]
    assert streamed.traces[0].frames[0] == 50
    np.testing.assert_allclose(streamed.traces[0].scores, clip[50:][np.isfinite(clip[50:])], atol=0.01)

    # Another sampling rate is resampled block by block without seams: the same frames are scored.
    import torchaudio.functional as AF

    resampled = AF.resample(torch.from_numpy(wave), 16000, 22050).numpy()
    other = _recording(tmp_path / "long22k.wav", resampled, 22050)
    at22k = stream_background(model, processor, [other], keyword, blank, StreamSettings(3.0, 2.0, 3, block_s=1.3)).traces[0]
    assert abs(len(at22k.frames) - len(one.frames)) <= 2
    # A rate sharing few factors with 16 kHz (an old Mac's 11,127 Hz) is resampled polyphase: the
    # kernel torchaudio builds for it takes 0.7 GB, and 28 GB at 44,101 Hz.
    from scipy.signal import resample_poly

    mac = _recording(tmp_path / "long11k.wav", resample_poly(wave, 11127, 16000).astype(np.float32), 11127)
    at11k = stream_background(model, processor, [mac], keyword, blank, StreamSettings(3.0, 2.0, 3, block_s=1.3)).traces[0]
    assert abs(len(at11k.frames) - len(one.frames)) <= 2
    assert np.corrcoef(at11k.scores[:len(one.scores)][:400], one.scores[:len(at11k.scores)][:400])[0, 1] > 0.9

    # The hours are those heard: a recording whose header promises more than it holds (a file cut
    # short) counts the audio decoded, not the header's length, so false accepts per hour are not
    # divided by time nobody listened to.
    promised = replace(rec, seconds=rec.seconds * 2)
    heard = stream_background(model, processor, [promised], keyword, blank, settings)
    assert heard.audio_seconds == pytest.approx(len(wave) / 16000) and heard.traces[0].seconds == one.seconds


def _background_folder(root: Path, seconds: dict[str, float]) -> Path:
    speech = espeak_wave("the election results are out tonight. alex is coming home at six")
    for split, total in seconds.items():
        (root / split).mkdir(parents=True)
        reps = max(1, int(total * 16000 / len(speech)))
        sf.write(root / split / "room.flac", np.tile(speech, reps), 16000)
    return root


def test_eval_stage_measures_false_accepts_on_background_recordings(
    tiny_dataset_path: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.eval.run import run_eval_stage

    run = tmp_path_factory.mktemp("streamrun")
    save_tiny_asr(tiny_dataset_path, run / "asr")
    save_tiny_nlu(tiny_dataset_path, run / "nlu")
    folder = _background_folder(tmp_path / "bg", {"validation": 20.0, "test": 30.0})
    models = {"asr_model": str(run / "asr"), "nlu_model": str(run / "nlu")}
    # A random model puts its keyword scores anywhere: a target of 300 per hour keeps some detections.
    cfg = eval_cfg(**models, **{"eval.background": str(folder), "eval.target_fa_per_hour": 300.0,
                                "eval.stream_window_s": 3.0, "eval.stream_hop_s": 2.0}, **with_key(monkeypatch))
    out = tmp_path / "eval"
    metrics = run_eval_stage(cfg, out, tiny_dataset_path, RecordingTracker())
    details = json.loads((out / "eval_details.json").read_text())["wake_background"]
    test_hours = (sf.info(str(folder / "test/room.flac")).duration - 0.5) / 3600  # less the unscored first margin
    assert metrics["wake/background_hours"] == pytest.approx(test_hours)
    assert details["recordings"] == {"validation": 1, "test": 1}
    # Rates are counts over hours, and the tuned threshold keeps validation within the target.
    assert metrics["wake/fa_per_hour"] == pytest.approx(details["false_accepts"] / test_hours)
    # Per recording, for pairing two models over the same background (pipeline.eval.bootstrap).
    [recording] = details["per_recording"]
    assert recording["false_accepts"] == details["false_accepts"] and recording["seconds"] == pytest.approx(test_hours * 3600)
    # ... and only over the same audio: the digest of the decoded samples, whatever the file's format.
    samples, _ = sf.read(folder / "test/room.flac", dtype="float32")
    assert recording["digest"] == audio_digest_of(samples)
    assert details["tune_false_accepts"] <= 300.0 * details["hours"]["validation"]
    assert metrics["wake/threshold"] == details["threshold"]
    for rate in ("0.5", "1", "2", "5"):
        assert 0.0 <= metrics[f"wake/frr_at_{rate}_fa_per_hour"] <= 1.0
    # Under a minute of background: said in the report, with the hours it had.
    report = (out / "report.md").read_text()
    assert "Caution: background audio below eval.min_background_hours=1 h per split" in report
    assert f"test {test_hours:.2f} h" in report and "`wake/frr_at_1_fa_per_hour`" in report
    assert (out / "plots/wake_det.png").stat().st_size > 1000

    # Without background the clips stand in, and the report says so.
    metrics = run_eval_stage(eval_cfg(**models, **{"eval.background": "none"}), tmp_path / "none", tiny_dataset_path,
                             RecordingTracker())
    assert "wake/background_hours" not in metrics and "wake/frr_at_1_fa_per_hour" not in metrics
    not_computed = json.loads((tmp_path / "none/eval_details.json").read_text())["not_computed"]
    assert not_computed["wake/background_hours"].startswith("no background recordings were streamed")
    assert "come from the negative clips instead" in (tmp_path / "none/report.md").read_text()

    # A background transcript with the wake word is an error that names the recording (by pseudonym and position).
    (folder / "test/room.txt").write_text("Alexa, what's the weather")
    with pytest.raises(PipelineError, match=rf"{recording_pseudonym(KEY, 'test/room.flac')} \(audio file 1\)"):
        run_eval_stage(cfg, tmp_path / "bad", tiny_dataset_path, RecordingTracker())


SERIAL = "DSN12345"  # a device serial, as users name their recordings after their devices


def _serial_background(root: Path, layout: str) -> tuple[Path, dict[str, str]]:
    """Background whose file names and export ids carry SERIAL, as a folder or an export; with the
    name as written of each split's recording."""
    wave = np.tile(espeak_wave("the election results are out tonight. alex is coming home"), 4)
    speech = {"validation": wave, "test": wave}
    if layout == "folder":
        for split in ("validation", "test"):
            (root / split).mkdir(parents=True)
            sf.write(root / split / f"kitchen-{SERIAL}.flac", speech[split], 16000)
        return root, {s: f"{s}/kitchen-{SERIAL}.flac" for s in ("validation", "test")}
    (root / "audio").mkdir(parents=True)
    lines = []
    for split in ("validation", "test"):
        sf.write(root / "audio" / f"{split}-{SERIAL}.flac", speech[split], 16000)
        lines.append({"audio": f"audio/{split}-{SERIAL}.flac", "split": split, "recording_id": f"{split}-den-{SERIAL}"})
    (root / "annotations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, {s: f"{s}-den-{SERIAL}" for s in ("validation", "test")}


@pytest.mark.parametrize("layout", ["folder", "export"])
def test_a_serial_in_a_background_recordings_name_reaches_no_output(
    layout: str, tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before the fix: eval_details.json (per_recording, errors) and the report's table of false
    accepts named each background recording by its file path or export recording_id, and with it the
    device serial a user had put in the file's name. Now every output names it by a keyed pseudonym
    and its position in the source; two evaluations under the same key give the same names, so their
    false accepts per hour still pair recording by recording."""
    import pipeline.eval.stream as stream
    from pipeline.eval.run import run_eval_stage
    from pipeline.ops.gate import load_background_counts

    folder, written = _serial_background(tmp_path / "bg", layout)
    # The tiny model scores background just below its positives: raised, its false accepts fill the
    # report's table, which names each recording.
    raw_trace = stream.keyword_trace
    monkeypatch.setattr(stream, "keyword_trace", lambda *args: raw_trace(*args) + 100.0)
    cfg = eval_cfg(asr_model=str(tiny_models / "asr"), nlu_model=str(tiny_models / "nlu"),
                   **{"eval.background": str(folder), "eval.target_fa_per_hour": 3000.0, "eval.min_background_hours": 0.0,
                      "eval.stream_window_s": 3.0, "eval.stream_hop_s": 2.0}, **with_key(monkeypatch))
    runs, trackers = [tmp_path / "first", tmp_path / "second"], []
    with caplog.at_level("DEBUG"):
        for out in runs:
            trackers.append(RecordingTracker())
            run_eval_stage(cfg, out, tiny_dataset_path, trackers[-1])
    for out in runs:
        for path in (p for p in out.rglob("*") if p.is_file()):
            assert SERIAL.encode() not in path.read_bytes(), path
    assert SERIAL not in caplog.text
    for tracker in trackers:
        assert SERIAL not in repr((tracker.summary, tracker.tables, tracker.metrics, tracker.artifacts))

    details = [json.loads((out / "eval_details.json").read_text())["wake_background"] for out in runs]
    [test] = details[0]["per_recording"]
    position = "audio file 1" if layout == "folder" else "annotations.jsonl line 2"
    assert (test["recording"], test["position"]) == (recording_pseudonym(KEY, written["test"]), position)
    assert details[0]["per_recording"] == details[1]["per_recording"]  # stable: the same names in both runs
    assert all(e["recording"] == test["recording"] and e["position"] == position for e in details[0]["errors"])
    assert details[0]["errors"], "a target of 3000 an hour keeps false accepts for the report to name"
    assert f"| {test['recording']} | {position} |" in (runs[0] / "report.md").read_text()
    # The two runs pair over their recordings, as compare and the retraining gate pair them.
    paired = B.paired_rate_difference(load_background_counts(runs[0]), load_background_counts(runs[1]))
    assert paired.left_out == (0, 0) and paired.difference == 0.0


@pytest.mark.parametrize(("seconds", "warning"), [
    pytest.param({"validation": 0.4, "test": 20.0}, r"the background recordings of split\(s\) \['validation'\] are too "
                 r"short to score \(about 0\.5 s at the start of each is context\)", id="shorter-than-the-context"),
    pytest.param({"test": 20.0}, r"no background recording in split\(s\) \['validation'\] of .*validation/\)",
                 id="no-validation-folder"),
])
def test_background_that_cannot_be_scored_is_said_not_crashed_on(
    seconds: dict[str, float], warning: str, tiny_models: Path, tiny_dataset_path: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.eval.run import run_eval_stage

    folder = tmp_path / "bg"
    for split, total in seconds.items():
        (folder / split).mkdir(parents=True)
        sf.write(folder / split / "room.wav", espeak_wave("the results are out tonight")[: int(total * 16000)], 16000)
    cfg = eval_cfg(asr_model=str(tiny_models / "asr"), nlu_model=str(tiny_models / "nlu"),
                   **{"eval.background": str(folder), "eval.min_background_hours": 0.0,
                      "eval.stream_window_s": 3.0, "eval.stream_hop_s": 2.0}, **with_key(monkeypatch))
    metrics = run_eval_stage(cfg, tmp_path / "eval", tiny_dataset_path, RecordingTracker())
    details = json.loads((tmp_path / "eval" / "eval_details.json").read_text())
    assert re.search(warning, details["wake_background"]["warning"]), details["wake_background"]["warning"]
    assert "wake/background_hours" not in metrics and metrics["wake/fa_per_hour"] is not None  # from the clips


def test_auto_background_is_the_demos_only_for_a_demo_build(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from pipeline.data.background import load_background
    from pipeline.eval.stream import resolve_background

    repo = Path(__file__).resolve().parents[2]
    cfg = OmegaConf.create({"eval": OmegaConf.load(repo / "conf/eval/default.yaml"),
                            "data": OmegaConf.load(repo / "conf/data/demo.yaml"), "cache_dir": str(tmp_path / "cache")})
    total = sum(1 for line in (repo / "data/demo/utterances.jsonl").open() if line.strip())

    def build(name: str, report: dict) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "build_report.json").write_text(json.dumps(report))
        return tmp_path / name

    # A build that read 16 of the corpus' utterances gets 16/total of the 2.2 h per split, whatever its
    # records count: with data.demo.extra_takes=2 they are three times the utterances (before the fix).
    cfg.data.demo.max_utterances = 16
    smoke = build("smoke", {"source": "demo", "records_in": 48})
    recordings = load_background(resolve_background(cfg, smoke), ("validation", "test"), "alexa", b"test key")
    for split in ("validation", "test"):
        seconds = sum(r.seconds for r in recordings if r.split == split)
        assert seconds == pytest.approx(2.2 * 3600 * 16 / total, abs=0.01)
    assert resolve_background(cfg, build("other", {"source": "jsonl", "records_in": 16})) is None
    assert resolve_background(cfg, tmp_path) is None  # no build report: not known to be the demo's
    cfg.eval.background = "none"
    assert resolve_background(cfg, smoke) is None
    cfg.eval.background = str(tmp_path / "mine")
    assert resolve_background(cfg, smoke) == tmp_path / "mine"


def test_auto_background_reaches_the_demo_inside_data_sources(tmp_path: Path) -> None:
    """data=demo_speech reads the demo as one entry of data.sources: its report's "alexa" threshold
    and false accepts per hour come from the demo's background too, not from a few minutes of clips."""
    from omegaconf import OmegaConf

    from pipeline.data.background import load_background
    from pipeline.eval.stream import _demo_share, resolve_background

    repo = Path(__file__).resolve().parents[2]
    recipe = OmegaConf.load(repo / "conf/data/demo_speech.yaml")
    cfg = OmegaConf.create({"eval": OmegaConf.load(repo / "conf/eval/default.yaml"),
                            "data": recipe.data, "cache_dir": str(tmp_path / "cache")})
    total = sum(1 for line in (repo / "data/demo/utterances.jsonl").open() if line.strip())
    names = ["speech_commands", "fsdd", "mycroft", "demo", "lone_words"]
    # The demo's records in such a build count its extra takes, so the share comes from its entry.
    assert _demo_share(cfg.data, {"source": names, "records_in": 13516}) == 1.0
    assert _demo_share(cfg.data, {"source": ["speech_commands", "fsdd", "mycroft"]}) is None  # the wake-word build

    demo_entry = next(e for e in cfg.data.sources if e.source == "demo")
    demo_entry.demo.max_utterances = 16
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "build_report.json").write_text(json.dumps({"source": names, "records_in": 900}))
    recordings = load_background(resolve_background(cfg, tmp_path / "build"), ("validation", "test"), "alexa", b"test key")
    for split in ("validation", "test"):
        seconds = sum(r.seconds for r in recordings if r.split == split)
        assert seconds == pytest.approx(2.2 * 3600 * 16 / total, abs=0.01)


def test_the_threshold_tuned_on_validation_does_not_follow_the_test_positives() -> None:
    """The stream keeps background frames down to the lowest positive of both splits (the test's DET
    needs them); a low test positive keeps a validation frame at -9 that validation's own lowest
    positive (-8) would not. It must not move the threshold: 3 events above -8 fit the 3 allowed."""
    positives = np.array([-1.0, -3.0, -5.0, -8.0])
    kept_for_validation = [trace([100, 5000], [-2.0, -6.0], split="validation"), trace([70], [-4.0], split="validation")]
    kept_for_a_low_test_positive = [*kept_for_validation, trace([900], [-9.0], split="validation")]
    for target in (3.0, 5.0):
        assert tune_on_background(positives, kept_for_a_low_test_positive, 1.0, target, 50) == -8.0
        assert tune_on_background(positives, kept_for_validation, 1.0, target, 50) == -8.0


def test_a_tuned_threshold_rejects_the_float32_frame_it_was_set_above() -> None:
    """Frame scores are stored as float32; a threshold halfway to the next score, or the next float
    above a score, must not round back onto it when compared."""
    trace = Trace("bg", "validation", 3600.0, np.array([100]), np.array([-0.8], np.float32))
    assert count_detections([trace], tune_on_background(np.array([-1.0, -2.0]), [trace], 1.0, 0.0, 50.0), 50.0) == 0
    assert count_detections([trace], threshold_for_rate([trace], 1.0, 0.0, 50.0), 50.0) == 0
    close = np.array([float(np.float32(-0.8)) + 1e-9, -2.0])  # a positive just above the frame: the midpoint branch
    assert count_detections([trace], tune_on_background(close, [trace], 1.0, 0.0, 50.0), 50.0) == 0


def test_one_spoken_keyword_followed_by_silence_is_one_detection() -> None:
    """Before the fix: a frame's keyword score took the best alignment ending on the keyword's last
    token or on any blank after it, so through the silence after one "alexa" the score stayed near
    the keyword's and the stream counted the same word again after every refractory period."""
    vocab = ["<pad>", "<unk>", "|", "a", "l", "e", "x", "p", "y"]
    frames = "_" * 60 + "a_l_e_x_a_|" + "_" * 200 + "p_l_a_y" + "_" * 60  # 20 ms frames: 4 s of silence after it
    probs = np.full((len(frames), len(vocab)), 0.01 / (len(vocab) - 1))
    for t, ch in enumerate(frames):
        probs[t, vocab.index("<pad>" if ch == "_" else ch)] = 0.99
    keyword = [vocab.index(c) for c in "alexa|"]
    scores = keyword_trace(np.log(probs)[None], np.array([len(frames)]), keyword, 0)[0]
    kept = np.flatnonzero(np.isfinite(scores))
    t = Trace("rec", "test", 10.0, kept, scores[kept].astype(np.float32))
    assert detections(t, float(scores.max()) - 1.0, 50).tolist() == [60 + frames[60:].index("|")]


def test_a_recording_of_a_few_samples_is_streamed_without_a_score(tiny_model: tuple, tmp_path: Path) -> None:
    """Before the fix: a recording shorter than the model's receptive field (100 samples here, a
    few milliseconds) went through the model as a window of its own, and the convolution's error
    stopped the evaluation after the whole ASR pass; it has no frame past its context to score."""
    model, processor, keyword = tiny_model
    blank = processor.tokenizer.pad_token_id
    tiny = _recording(tmp_path / "click.wav", np.full(100, 0.1, dtype=np.float32))
    stats = stream_background(model, processor, [tiny], keyword, blank, StreamSettings(3.0, 2.0, 2))
    assert stats.traces[0].seconds == 0.0 and stats.traces[0].frames.size == 0
    assert stats.audio_seconds == pytest.approx(100 / 16000)


def test_a_recording_damaged_past_its_header_is_named_when_streaming_fails(tiny_model: tuple, tmp_path: Path) -> None:
    """Before the fix: a FLAC cut short (its header promising more than it holds) was listed by its
    header, and streaming it stopped on libsndfile's "flac decoder lost sync", naming no file, after
    the whole ASR pass."""
    model, processor, keyword = tiny_model
    path = tmp_path / "cut.flac"
    sf.write(path, (np.random.default_rng(0).standard_normal(16000 * 20) * 0.1).astype(np.float32), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rec = Recording("living-room/cut.flac", "test", path, sf.info(str(path)).duration,
                    name=recording_pseudonym(KEY, "living-room/cut.flac"), position="audio file 1")
    with pytest.raises(PipelineError, match=rf"background recording {rec.name} \(audio file 1\): cannot decode it past "
                                            r"\d+ s of the 20 s its header gives .*re-encode it or take it out") as caught:
        stream_background(model, processor, [rec], keyword, processor.tokenizer.pad_token_id, StreamSettings(3.0, 2.0, 2))
    assert "cut" not in str(caught.value)  # the pseudonym names it, not the file name


def test_min_background_hours_is_judged_on_the_hours_scored_not_the_headers(tiny_model: tuple, tmp_path: Path) -> None:
    """Before the fix: eval.min_background_hours was checked against the hours the recordings'
    headers give, before streaming, so recordings whose headers promise two hours but hold seconds
    (a file cut short, a header written wrong) passed without a caution, while the threshold and
    false accepts per hour rested on those seconds."""
    from omegaconf import OmegaConf

    model, processor, keyword = tiny_model
    wave = np.tile(espeak_wave("the election results are out tonight"), 3).astype(np.float32)
    recordings = []
    for split in ("validation", "test"):
        sf.write(tmp_path / f"{split}.wav", wave, 16000)
        recordings.append(Recording(f"{split}.wav", split, tmp_path / f"{split}.wav", 2 * 3600.0,  # the header's hours
                                    name=recording_pseudonym(KEY, f"{split}.wav"), position=split))
    ecfg = OmegaConf.create({"tune_split": "validation", "split": "test", "min_background_hours": 1.0,
                             "refractory_s": 1.0, "stream_window_s": 3.0, "stream_hop_s": 2.0, "stream_batch_size": 4,
                             "target_fa_per_hour": 300.0, "worst_n": 3})
    positives = np.array([-1.0, -3.0], dtype=np.float32)
    result, details = background_wake(ecfg, tmp_path, recordings, model, processor, keyword, positives, positives)
    scored = (len(wave) / 16000 - 0.5) / 3600  # less each recording's unscored first margin
    assert result is not None and result.hours == pytest.approx(scored)
    assert details["hours"] == {"validation": pytest.approx(scored), "test": pytest.approx(scored)}
    assert details["warning"] is not None and details["warning"].startswith(
        "background audio below eval.min_background_hours=1 h per split (scored: validation 0.00 h, test 0.00 h; "
        f"source: {tmp_path}); the threshold and false accepts per hour rest on little audio")


def test_a_positive_too_short_for_the_keyword_is_rejected_at_every_rate() -> None:
    """A clip too short to hold the keyword scores -inf and is never a detection. Before the fix: where
    a rate permitted every kept background frame, threshold_for_rate returned -inf, and the FRR read
    at that rate counted such a clip as accepted (0.0 here instead of 0.25)."""
    background = [trace([100, 5000], [-2.0, -6.0], split="validation")]
    positives = np.array([-1.0, -3.0, -5.0, -np.inf])
    assert np.isfinite(threshold_for_rate(background, 1.0, 5.0, 50))
    result = evaluate_background(positives, background, 1.0, -3.5, 50, frame_s=0.02)
    assert result.frr_at[5.0] == 0.25 and result.frr_at[2.0] == 0.25
    # Scores as float32 (as a model's are): the threshold is no -inf to them either.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate_background(positives.astype(np.float32), background, 1.0, -3.5, 50, frame_s=0.02)
    assert result.frr_at[5.0] == 0.25 and result.frr_at[2.0] == 0.25
