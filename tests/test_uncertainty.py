"""Measured uncertainty: calibration error, temperature scaling, MC-dropout statistics, mistake
detection, risk-coverage, and the report, plots and markdown built from them."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from penultimate.uncertainty import (
    calibration_metrics,
    fit_temperature,
    logits_to_probabilities,
    mc_statistics,
    misclassification_detection,
    plot_reliability,
    plot_risk_coverage,
    risk_coverage,
    uncertainty_markdown,
    uncertainty_report,
)

pytestmark = pytest.mark.library

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def binary_probabilities(
    confidence: np.ndarray, correct: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and [n, 2] probabilities that give the predicted class `confidence` and are right
    where `correct` says."""
    rng = np.random.default_rng(seed)
    predicted = rng.integers(0, 2, len(confidence))
    probabilities = np.empty((len(confidence), 2))
    probabilities[np.arange(len(confidence)), predicted] = confidence
    probabilities[np.arange(len(confidence)), 1 - predicted] = 1 - confidence
    return np.where(correct, predicted, 1 - predicted), probabilities


def calibrated_logits(
    classes: int, rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ([n, 1] sigmoid for 2 classes, [n, C] softmax otherwise) and labels drawn from the
    probabilities they give: a perfectly calibrated predictor."""
    logits = rng.normal(0, 2 if classes == 2 else 1.5, size=(rows, 1 if classes == 2 else classes))
    cumulative = logits_to_probabilities(logits).cumsum(axis=1)
    y = np.minimum((cumulative < rng.random(rows)[:, None]).sum(axis=1), classes - 1)
    return logits, y


def test_ece_is_near_zero_when_calibrated_and_large_when_over_confident() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    y, probabilities = binary_probabilities(confidence, rng.random(20_000) < confidence, seed=1)
    calibrated = calibration_metrics(y, probabilities)
    assert calibrated["ece"] < 0.02
    assert calibrated["mean_confidence"] == pytest.approx(0.75, abs=0.01)

    y, probabilities = binary_probabilities(np.full(20_000, 0.99), rng.random(20_000) < 0.7, seed=2)
    over = calibration_metrics(y, probabilities)
    assert over["ece"] > 0.25
    assert over["accuracy"] == pytest.approx(0.7, abs=0.02)
    # Every row is in the (0.933, 1] bin, whose gap is the whole ECE.
    (only,) = over["reliability"]
    assert only["count"] == 20_000 and only["lower"] < 0.99 <= only["upper"] == 1.0
    assert over["ece"] == pytest.approx(abs(only["confidence"] - only["accuracy"]))
    json.dumps(over)


def test_brier_and_nll_agree_with_scikit_learn() -> None:
    from sklearn.metrics import brier_score_loss, log_loss

    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 500)
    probabilities = np.column_stack([1 - p, p])
    y = (rng.random(500) < p).astype(int)
    metrics = calibration_metrics(y, probabilities)
    assert metrics["brier"] == pytest.approx(2 * brier_score_loss(y, p))
    assert metrics["nll"] == pytest.approx(log_loss(y, probabilities))
    # A confident mistake costs -log(1e-12), not infinity.
    assert calibration_metrics([0], [[0.0, 1.0]])["nll"] == pytest.approx(-np.log(1e-12))


def test_bins_are_open_below_closed_above_with_exact_edges() -> None:
    # A confidence of exactly k / 15 is in the bin (k - 1) / 15 < c <= k / 15, certainty in the
    # last one, and the edges are k / 15 as Python computes it (not linspace's off-by-an-ulp).
    for k in range(8, 16):
        (only,) = calibration_metrics([0], [[k / 15, 1 - k / 15]])["reliability"]
        assert (only["lower"], only["upper"]) == ((k - 1) / 15, k / 15), k
    metrics = calibration_metrics([0, 0, 1], [[0.6, 0.4], [0.8, 0.2], [0.0, 1.0]], bins=5)
    assert [(b["lower"], b["upper"], b["count"]) for b in metrics["reliability"]] == [
        (0.4, 0.6, 1),
        (0.6, 0.8, 1),
        (0.8, 1.0, 1),
    ]


@pytest.mark.parametrize("classes", [2, 3])
def test_temperature_scaling_undoes_over_confidence(classes: int) -> None:
    rng = np.random.default_rng(classes)
    val_logits, y_val = calibrated_logits(classes, 5_000, rng)
    test_logits, y_test = calibrated_logits(classes, 5_000, rng)
    temperature = fit_temperature(3 * val_logits, y_val)
    assert temperature == pytest.approx(3, abs=0.3)
    before = calibration_metrics(y_test, logits_to_probabilities(3 * test_logits))
    after = calibration_metrics(y_test, logits_to_probabilities(3 * test_logits, temperature))
    assert before["ece"] > 0.1
    assert after["ece"] < before["ece"] / 3
    assert after["nll"] < before["nll"]
    assert after["accuracy"] == before["accuracy"]  # dividing by T > 0 keeps every argmax


def test_temperature_is_one_without_two_classes_to_calibrate_on() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    assert fit_temperature(np.ones((10, 1)), np.ones(10, dtype=int)) == 1.0


def test_mc_statistics_of_agreeing_and_disagreeing_draws() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    same = mc_statistics(np.stack([probabilities] * 5))
    assert np.allclose(same["mutual_information"], 0)
    assert np.allclose(same["std"], 0)
    assert np.allclose(same["mean"], probabilities)
    expected = [-(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)), np.log(3), 0.0]
    assert np.allclose(same["entropy"], expected)

    draws = np.array([[[1.0, 0.0]]] * 4 + [[[0.0, 1.0]]] * 4)  # [8, 1, 2]
    split = mc_statistics(draws)
    assert np.allclose(split["mean"], [[0.5, 0.5]])
    assert np.allclose(split["std"], [[0.5, 0.5]])
    assert split["entropy"] == pytest.approx([np.log(2)])
    assert split["mutual_information"] == pytest.approx([np.log(2)])

    single = mc_statistics(np.random.default_rng(0).dirichlet([1, 1, 1], size=(1, 20)))
    assert single["entropy"].shape == single["mutual_information"].shape == (20,)
    assert np.all(single["mutual_information"] == 0)


def test_misclassification_detection() -> None:
    rng = np.random.default_rng(4)
    correct = rng.random(20_000) < 0.8
    perfect = misclassification_detection(correct, (~correct).astype(float))
    assert perfect["auroc"] == 1.0 and perfect["aupr"] == 1.0
    assert perfect["error_rate"] == pytest.approx(1 - correct.mean())
    inverted = misclassification_detection(correct, correct.astype(float))
    assert inverted["auroc"] == 0.0

    random = misclassification_detection(correct, rng.random(20_000))
    assert random["auroc"] == pytest.approx(0.5, abs=0.05)
    # Average precision of a random ranking is about the share of errors.
    assert random["aupr"] == pytest.approx(1 - correct.mean(), abs=0.05)

    assert misclassification_detection(np.ones(50, bool), rng.random(50)) == {
        "auroc": None,
        "aupr": None,
        "error_rate": 0.0,
    }
    assert misclassification_detection(np.zeros(50, bool), rng.random(50))["auroc"] is None


def test_risk_coverage_of_a_perfect_ranking_and_a_random_one() -> None:
    rng = np.random.default_rng(5)
    correct = rng.permutation(np.arange(1_000) < 800)  # accuracy 0.8
    # Every correct row is more confident than every wrong one.
    perfect = risk_coverage(correct, correct + rng.uniform(0, 0.5, 1_000))
    random = risk_coverage(correct, rng.random(1_000))
    coverage, risk = np.array(perfect["coverage"]), np.array(perfect["risk"])
    assert len(coverage) == len(risk) <= 101
    assert coverage[0] == pytest.approx(1 / 1_000) and coverage[-1] == 1.0
    assert np.all(risk[coverage <= 0.8] == 0) and np.all(risk[coverage > 0.8] > 0)
    assert perfect["risk_at_coverage"] == {"0.5": 0.0, "0.8": 0.0, "0.9": pytest.approx(100 / 900)}
    for curve in (perfect, random):
        assert curve["risk"][-1] == pytest.approx(0.2)
    assert perfect["aurc"] < random["aurc"] / 3
    json.dumps(random)


def test_risk_coverage_by_hand_with_ties_in_given_order() -> None:
    curve = risk_coverage([True, False, True, True], [0.9, 0.5, 0.5, 0.1])
    # Kept order: rows 0, 1, 2 (the tie in its given order), 3 -> risks 0, 1/2, 1/3, 1/4.
    assert curve["risk"] == pytest.approx([0, 1 / 2, 1 / 3, 1 / 4])
    assert curve["coverage"] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert curve["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert curve["risk_at_coverage"] == pytest.approx({"0.5": 1 / 2, "0.8": 1 / 4, "0.9": 1 / 4})


def test_logits_to_probabilities_is_stable_and_divides_by_the_temperature() -> None:
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        extreme = logits_to_probabilities(np.array([[1000.0], [-1000.0], [0.0]]))
        wide = logits_to_probabilities(np.array([[1000.0, -1000.0, 0.0]]))
    assert extreme.dtype == np.float64
    assert np.array_equal(extreme, [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    assert np.array_equal(wide, [[1.0, 0.0, 0.0]])

    logits = np.random.default_rng(6).normal(0, 4, size=(100, 5))
    probabilities = logits_to_probabilities(logits)
    assert np.allclose(probabilities.sum(axis=1), 1)
    assert np.allclose(logits_to_probabilities(logits, 2.5), logits_to_probabilities(logits / 2.5))
    sigmoid = logits_to_probabilities(logits[:, :1])
    assert np.allclose(sigmoid[:, 1], 1 / (1 + np.exp(-logits[:, 0])))
    assert np.allclose(
        logits_to_probabilities(logits[:, :1], 3.0)[:, 1], 1 / (1 + np.exp(-logits[:, 0] / 3))
    )

    with pytest.raises(ValueError, match="temperature"):
        logits_to_probabilities(logits, 0.0)
    with pytest.raises(ValueError, match=r"\[n, 1\]"):
        logits_to_probabilities(logits[:, 0])


def synthetic_report(rows: int = 900, draws: tuple[int, ...] = (1, 10, 30)) -> dict[str, Any]:
    """An uncertainty_report of an over-confident 3-class classifier with made-up MC draws."""
    rng = np.random.default_rng(7)
    val_logits, y_val = calibrated_logits(3, rows, rng)
    test_logits, y_test = calibrated_logits(3, rows, rng)
    mc_draws = {
        t: (
            logits_to_probabilities(
                (test_logits + rng.normal(0, 1, size=(t, rows, 3))).reshape(-1, 3)
            ).reshape(t, rows, 3),
            0.02 * t,
        )
        for t in draws
    }
    return uncertainty_report(
        y_test, 2 * test_logits, y_val, 2 * val_logits, mc_draws, ["a", "b", "c"], 0.02
    )


def test_uncertainty_report_plots_and_markdown(tmp_path: Path) -> None:
    report = synthetic_report()
    text = json.dumps(report)
    assert json.loads(text)["rows"] == 900
    assert report["classes"] == ["a", "b", "c"]
    assert report["temperature"] == pytest.approx(2, abs=0.5)
    assert report["temperature_scaled"]["ece"] < report["max_softmax"]["ece"]
    assert set(report["detection"]) == {
        "max_softmax",
        *(f"mc_{t}_{m}" for t in (1, 10, 30) for m in ("entropy", "mutual_information")),
    }
    assert report["detection"]["mc_1_mutual_information"]["auroc"] == 0.5  # all zero: no ranking
    assert set(report["mc"]) == {"1", "10", "30"}
    assert report["mc"]["30"]["seconds"] == pytest.approx(0.6)
    assert set(report["mc"]["10"]) == {"seconds", "accuracy", "ece", "nll", "brier"}
    assert set(report["risk_coverage"]) == {"max_softmax", "mc_30"}
    assert (
        "T=30" in report["verdict"] and "0.60 s of draws on top of the 0.02 s" in report["verdict"]
    )
    assert f"{report['detection']['mc_30_entropy']['auroc']:.3f}" in report["verdict"]

    reliability, curves = tmp_path / "reliability.png", tmp_path / "risk_coverage.png"
    plot_reliability(report, reliability)
    plot_risk_coverage(report, curves)
    for png in (reliability, curves):
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000

    markdown = "\n".join(uncertainty_markdown(report))
    assert "ECE" in markdown and "AUROC" in markdown
    assert str(round(report["temperature"], 4)) in markdown
    assert report["verdict"] in markdown
    assert "MC dropout T=30, mutual information" in markdown


def test_verdict_says_when_there_are_no_mistakes_to_find() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 200)
    logits = 10 * np.eye(3)[y]  # every row right, with confidence
    draws = np.stack([logits_to_probabilities(logits)] * 5)
    report = uncertainty_report(y, logits, y, logits, {5: (draws, 0.1)}, ["a", "b", "c"])
    assert report["detection"]["max_softmax"]["auroc"] is None
    assert report["verdict"].startswith("Neither max-softmax nor MC dropout (T=5) makes a mistake")
    # MC dropout alone making mistakes: the sentence names who has none to find.
    noisy = draws.copy()
    noisy[:, :3] = np.roll(draws[:, :3], 1, axis=2)  # the MC mean gets the first three rows wrong
    verdict = uncertainty_report(y, logits, y, logits, {5: (noisy, 0.1)}, "abc")["verdict"]
    assert "max-softmax makes no mistakes" in verdict and "MC dropout (T=5)" in verdict
    json.dumps(report)
    assert "n/a" in "\n".join(uncertainty_markdown(report))


def test_report_refuses_draws_that_do_not_match_their_count() -> None:
    y = np.array([0, 1, 2])
    logits = np.eye(3)
    with pytest.raises(ValueError, match="T=4"):
        uncertainty_report(y, logits, y, logits, {4: (np.full((2, 3, 3), 1 / 3), 1.0)}, "abc")


def test_importing_the_module_imports_no_tensorflow() -> None:
    code = (
        "import sys, penultimate.uncertainty; "
        "print(sorted(m for m in ('tensorflow', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
