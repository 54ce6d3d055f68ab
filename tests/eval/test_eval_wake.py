"""The CTC keyword scorer on hand-built posteriors, and the detection metrics on hand-worked scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.eval.wake import describe_tuning, equal_error_rate, evaluate_wake, keyword_scores, tune_threshold

VOCAB = ["<pad>", "<unk>", "|", "a", "l", "e", "x", "n", "d", "r", "p", "y", "c", "t", "i", "o"]
ID = {t: i for i, t in enumerate(VOCAB)}
KEYWORD = [ID[c] for c in "alexa|"]
P_TOP = 0.9
TOP = math.log(P_TOP)  # a frame's log-prob of the token it was built for
OTHER = math.log((1 - P_TOP) / (len(VOCAB) - 1))  # ... and of any other token


def posteriors(frames: str) -> torch.Tensor:
    """One frame per character ('_' = blank), each with P_TOP on that token, the rest shared."""
    probs = torch.full((len(frames), len(VOCAB)), (1 - P_TOP) / (len(VOCAB) - 1))
    for t, ch in enumerate(frames):
        probs[t, ID["<pad>" if ch == "_" else ch]] = P_TOP
    return probs.log()


def score(frames: str, window: int | None = None) -> float:
    lp = posteriors(frames).unsqueeze(0)
    return float(keyword_scores(lp, torch.tensor([lp.shape[1]]), KEYWORD, ID["<pad>"], window)[0])


def test_keyword_on_the_best_path_scores_its_frames() -> None:
    # "a_l_e_x_a_|" covers 11 frames, each matching: 11 * log 0.9; frames around it are free.
    assert score("__a_l_e_x_a_|_p_l_a_y") == pytest.approx(11 * TOP)
    # Repeated frames collapse as in CTC: the shortest segment is "alle" "xxxa|" from frame 1, 9 frames.
    assert score("aallexxxa||play") == pytest.approx(9 * TOP)


def test_near_misses_pay_for_each_substituted_frame() -> None:
    # "alexander": "a_l_e_x_a" matches (9 frames), the boundary takes the blank after it: 1 substitution.
    assert score("_a_l_e_x_a_n_d_e_r") == pytest.approx(9 * TOP + OTHER)
    # "alexa" as the clip's last frame leaves no frame for the boundary: the last "a" moves onto the
    # blank before it and the boundary onto the last "a": 7 matching frames, 2 substitutions.
    assert score("_a_l_e_x_a") == pytest.approx(7 * TOP + 2 * OTHER)
    # "election": cheapest is frames 2-8: a(blank), l, blank, e, x(blank), a(c), |(blank):
    # 3 matching frames, 4 substitutions.
    election = score("_e_l_e_c_t_i_o_n")
    assert election == pytest.approx(3 * TOP + 4 * OTHER)
    assert election < score("_a_l_e_x_a_n_d_e_r") < score("_a_l_e_x_a_|_p_l_a_y")


def test_keyword_anywhere_by_default_or_within_the_window() -> None:
    frames = "p_l_a_y_|_a_l_e_x_a_|"
    assert score(frames) == pytest.approx(11 * TOP)  # no window: the keyword after a word still counts
    assert score(frames, window=len(frames)) == pytest.approx(11 * TOP)
    assert score(frames, window=10) < 11 * TOP + 2 * OTHER  # only a mangled keyword fits
    assert score("alex") == float("-inf")  # too short to hold the keyword at all


def test_padded_frames_are_ignored_in_a_batch() -> None:
    short, long = posteriors("_a_l_e_x_a"), posteriors("_a_l_e_x_a_|_p_l_a_y_")
    # Padding that spells the boundary right after the short clip must not complete its keyword.
    padded = torch.full_like(long, OTHER)
    padded[:, ID["|"]] = TOP
    padded[: short.shape[0]] = short
    batch = torch.stack([padded, long])
    scores = keyword_scores(batch, torch.tensor([short.shape[0], long.shape[0]]), KEYWORD, ID["<pad>"], 100)
    assert float(scores[0]) == pytest.approx(7 * TOP + 2 * OTHER)
    assert float(scores[1]) == pytest.approx(11 * TOP)


def test_the_clip_end_closes_a_keyword_said_last() -> None:
    def at_end(frames: str, window: int = 100) -> float:
        lp = posteriors(frames).unsqueeze(0)
        return float(keyword_scores(lp, torch.tensor([lp.shape[1]]), KEYWORD, ID["<pad>"], window, end_is_boundary=True)[0])

    # A clip of the wake word alone: "a_l_e_x_a" then blanks to the end, every frame matching
    # (without the rule: 7 matching frames and 2 substitutions, see above).
    assert at_end("_a_l_e_x_a") == pytest.approx(9 * TOP)
    assert at_end("_a_l_e_x_a___") == pytest.approx(12 * TOP)
    # A boundary inside the clip still counts, and "alexander" gains nothing: its end is 8 frames on.
    assert at_end("__a_l_e_x_a_|_p_l_a_y") == pytest.approx(11 * TOP)
    assert at_end("_a_l_e_x_a_n_d_e_r") == pytest.approx(score("_a_l_e_x_a_n_d_e_r"))
    # The end must lie within the window, and in a batch it is each clip's own, not the padding's.
    assert at_end("p_l_a_y_|_a_l_e_x_a", window=12) < 9 * TOP
    short, long = posteriors("_a_l_e_x_a"), posteriors("_a_l_e_x_a_n_d_e_r")
    batch = torch.stack([torch.cat([short, long[short.shape[0]:]]), long])
    scores = keyword_scores(batch, torch.tensor([short.shape[0], long.shape[0]]), KEYWORD, ID["<pad>"], 100, end_is_boundary=True)
    assert float(scores[0]) == pytest.approx(9 * TOP)
    assert float(scores[1]) == pytest.approx(score("_a_l_e_x_a_n_d_e_r"))


def test_the_reader_lets_the_clip_end_close_only_a_keyword_with_a_boundary(tmp_path: Path, tiny_dataset_path: Path) -> None:
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    from pipeline.eval.run import Reader, keyword_ids
    from tests.eval.test_eval_run import save_tiny_asr

    save_tiny_asr(tiny_dataset_path, tmp_path)
    model, processor = Wav2Vec2ForCTC.from_pretrained(str(tmp_path)), Wav2Vec2Processor.from_pretrained(str(tmp_path))
    with_boundary = keyword_ids(processor, "alexa", True, tmp_path)
    assert Reader.for_model(model, processor, with_boundary, 2.0).end_is_boundary
    assert not Reader.for_model(model, processor, keyword_ids(processor, "alexa", False, tmp_path), 2.0).end_is_boundary


def test_the_reader_scans_the_whole_clip_unless_given_a_window(tmp_path: Path, tiny_dataset_path: Path) -> None:
    """A keyword said late in a long clip: with a window the reader never reaches it."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    from pipeline.eval.run import Reader, keyword_ids
    from tests.eval.test_eval_run import save_tiny_asr

    save_tiny_asr(tiny_dataset_path, tmp_path)
    model, processor = Wav2Vec2ForCTC.from_pretrained(str(tmp_path)), Wav2Vec2Processor.from_pretrained(str(tmp_path))
    keyword = keyword_ids(processor, "alexa", True, tmp_path)
    whole, first_second = Reader.for_model(model, processor, keyword, None), Reader.for_model(model, processor, keyword, 1.0)
    assert whole.window is None and first_second.window is not None
    # Log-probs of a 4 s clip (at the model's frame rate) that say the keyword in its last second only.
    frames = first_second.window * 4
    spelled = "a_l_e_x_a_|"
    lp = torch.full((1, frames, len(processor.tokenizer)), math.log(1e-3))
    lp[0, :, processor.tokenizer.pad_token_id] = math.log(0.9)  # blanks everywhere else
    for t, ch in enumerate(spelled, start=frames - len(spelled)):
        token = processor.tokenizer.pad_token_id if ch == "_" else processor.tokenizer.convert_tokens_to_ids(ch)
        lp[0, t] = math.log(1e-3)
        lp[0, t, token] = math.log(0.9)
    lengths = torch.tensor([frames])
    assert whole.wake_scores(lp, lengths)[0] == pytest.approx(len(spelled) * math.log(0.9))
    assert first_second.wake_scores(lp, lengths)[0] < 4 * math.log(1e-3)  # nothing of the keyword in its window


def test_detection_metrics_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    labels = np.array([True, True, True, False, False, False])
    durations = np.array([1.0, 1.0, 1.0, 1200.0, 1200.0, 1200.0])  # one hour of negative audio
    result = evaluate_wake(scores, labels, durations, threshold=0.5)
    assert result.frr == pytest.approx(1 / 3)  # 0.4 is rejected
    assert result.fa_per_hour == pytest.approx(1.0)  # 0.7 is accepted, in one hour
    assert result.auc == pytest.approx(8 / 9)  # 8 of the 9 positive/negative pairs are ordered
    # At threshold 0.7: FAR 1/3 (0.7) and FRR 1/3 (0.4): the rates cross there.
    assert result.eer == pytest.approx(1 / 3)
    assert equal_error_rate(labels, -scores) == pytest.approx(2 / 3)


def test_threshold_tuned_for_target_false_accepts_per_hour() -> None:
    scores = np.array([0.9, 0.6, 0.7, 0.5, 0.1])
    labels = np.array([True, True, False, False, False])
    durations = np.array([1.0, 1.0, 1200.0, 1200.0, 1200.0])  # one hour of negatives
    # One false accept per hour allowed: 0.7 may pass, 0.5 must not; halfway to the next score (0.6).
    assert tune_threshold(scores, labels, durations, 1.0) == pytest.approx(0.55)
    # None allowed: reject 0.7 too; halfway to 0.9.
    assert tune_threshold(scores, labels, durations, 0.0) == pytest.approx(0.8)
    # More allowed than there are negatives: accept everything.
    assert tune_threshold(scores, labels, durations, 10.0) == pytest.approx(0.1)
    # ... but a clip too short to hold the keyword (-inf), as the per-clip counts behind the intervals
    # see it: never a detection, so the stage's FRR and the bootstrap's agree.
    short = np.append(scores, -np.inf)
    both = np.append(labels, True)
    threshold = tune_threshold(short, both, np.append(durations, 0.5), 10.0)
    assert threshold == pytest.approx(0.1)
    assert evaluate_wake(short, both, np.append(durations, 0.5), threshold).frr == pytest.approx(1 / 3)


def test_tuning_names_the_negative_the_threshold_rejects_and_whether_the_target_is_measurable() -> None:
    scores = np.array([0.9, 0.6, 0.7, 0.5, 0.1])
    labels = np.array([True, True, False, False, False])
    hour = np.array([1.0, 1.0, 1200.0, 1200.0, 1200.0])  # one hour of negatives
    one = describe_tuning(scores, labels, hour, 1.0)
    # One false accept allowed: 0.7 (index 2) may pass, 0.5 (index 3) is the one rejected.
    assert (one.negatives, one.allowed_false_accepts, one.resolvable, one.bounding_index) == (3, 1, True, 3)
    assert one.negative_hours == pytest.approx(1.0)
    # 60 s of negatives cannot measure 1 per hour: nothing allowed, the hardest negative (0.7) bounds it.
    minute = np.array([1.0, 1.0, 20.0, 20.0, 20.0])
    short = describe_tuning(scores, labels, minute, 1.0)
    assert (short.allowed_false_accepts, short.resolvable, short.bounding_index) == (0, False, 2)
    assert tune_threshold(scores, labels, minute, 1.0) > scores[short.bounding_index]
    # Every negative allowed: nothing bounds the threshold.
    assert describe_tuning(scores, labels, hour, 10.0).bounding_index is None


@pytest.mark.parametrize("target", [1.1, 0.55, 2.0])  # 1.1, 0.55: the product falls short of 1 in floats
def test_tuning_says_resolvable_exactly_when_it_permits_a_false_accept(target: float) -> None:
    """Negatives lasting 1 / target hours permit exactly one false accept. For 1.1 and 0.55 per hour
    the product target x hours comes out as 0.9999999999999999 in floating point: before the fix
    one false accept was allowed (the threshold let the hardest negative pass) while the split was
    reported as unable to hold one. Just below that much audio: none; just above: one."""
    scores = np.array([0.9, 0.7, 0.5, 0.3])
    labels = np.array([True, False, False, False])
    whole = 3600.0 / target  # seconds of negatives for exactly one permitted false accept
    for seconds, allowed in ((whole, 1), (whole * (1 - 1e-6), 0), (whole * (1 + 1e-6), 1)):
        durations = np.array([1.0] + [seconds / 3] * 3)  # three negatives, a third each
        t = describe_tuning(scores, labels, durations, target)
        assert (t.allowed_false_accepts, t.resolvable) == (allowed, allowed >= 1), (seconds, t)
        # The threshold rejects the negative the tuning names, and lets the permitted ones pass.
        threshold = tune_threshold(scores, labels, durations, target)
        assert scores[t.bounding_index] < threshold
        assert int(np.sum(scores[~labels] >= threshold)) == allowed


def test_negative_clips_of_no_seconds_give_no_false_accept_rate() -> None:
    """Before the fix: NaN, which json.dumps writes as a bare NaN into metrics.json."""
    result = evaluate_wake(np.array([-0.1, -5.0]), np.array([True, False]), np.array([1.0, 0.0]), -1.0)
    assert result.fa_per_hour is None and result.frr == 0.0
