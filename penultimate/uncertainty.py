"""How far a classifier's probabilities can be trusted: calibration (ECE, Brier, NLL), temperature
scaling, MC-dropout statistics, finding mistakes, selective prediction and plots; no TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from penultimate.ui import markdown_table

# scipy.optimize, sklearn.metrics and matplotlib are imported inside the functions that need them:
# together they take seconds to import, and this module is imported by flows that may never call
# them.

# Probabilities are clipped here before the log in NLL, so a confident mistake costs ~27.6 nats
# instead of infinity.
NLL_CLIP = 1e-12
# The bounds of fit_temperature's search; outside them the logits are almost certainly broken.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Coverages reported by risk_coverage under "risk_at_coverage".
REPORTED_COVERAGES = (0.5, 0.8, 0.9)
# Where a classifier artifact keeps its report, and the files in it.
UNCERTAINTY_DIR = "uncertainty"
REPORT_FILE = "report.json"
RELIABILITY_PLOT = "reliability.png"
RISK_COVERAGE_PLOT = "risk_coverage.png"
# Probabilities from float32 softmax sum to 1 within ~1e-6; a larger gap means logits were passed.
_SUM_TOLERANCE = 1e-3
_DPI = 120


def _as_logits(logits: np.ndarray) -> np.ndarray:
    """`logits` [n, 1] or [n, C] as float64, checked."""
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"logits must be [n, 1] (sigmoid) or [n, C] (softmax), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("logits hold NaN or infinite values")
    return array


def _as_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """`probabilities` [n, C] (n >= 1, C >= 2) as float64, checked to be distributions."""
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"probabilities must be [n, C] with C >= 2, got {array.shape}")
    if len(array) == 0:
        raise ValueError("no rows")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError("probabilities hold negative, NaN or infinite values")
    if np.any(np.abs(array.sum(axis=1) - 1) > _SUM_TOLERANCE):
        raise ValueError("probability rows do not sum to 1 (were logits passed?)")
    return array


def _labels(y_true: np.ndarray, rows: int, classes: int) -> np.ndarray:
    """Class ids `y_true` [n] (or [n, 1]) as int64, checked against the rows and classes."""
    y = np.asarray(y_true).reshape(-1)
    if len(y) != rows:
        raise ValueError(f"{len(y)} labels for {rows} rows")
    integral = y.dtype.kind in "iub" or (np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    if not integral:
        raise ValueError("labels must be integer class ids")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got [{y.min()}, {y.max()}]")
    return y


def _softmax_logits(logits: np.ndarray, temperature: float) -> np.ndarray:
    """[n, C'] logits -> [n, C] softmax logits divided by `temperature`; a sigmoid logit z becomes
    the pair [0, z], whose softmax is exactly [1 - sigmoid(z), sigmoid(z)]."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = _as_logits(logits) / temperature
    if scaled.shape[1] == 1:
        scaled = np.concatenate([np.zeros_like(scaled), scaled], axis=1)
    # After this shift the largest logit of a row is 0, so exp never overflows.
    return scaled - scaled.max(axis=1, keepdims=True)


def _log_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """log of logits_to_probabilities [n, C], computed without going through probabilities, so
    that fit_temperature's objective stays smooth where a probability underflows."""
    shifted = _softmax_logits(logits, temperature)
    # exp(-1000) underflowing to 0 is the right answer, not an error worth a warning.
    with np.errstate(under="ignore"):
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def logits_to_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """[n, 1] sigmoid logits or [n, C] softmax logits (divided by `temperature`) -> [n, C] class
    probabilities (float64); for [n, 1] the columns are [1 - p, p].

    Numerically stable: |logit| = 1000 gives exact 0 and 1, with no overflow or underflow warning.
    """
    shifted = _softmax_logits(logits, temperature)
    with np.errstate(under="ignore"):
        exponentials = np.exp(shifted)
    # Each row holds a 1 (its largest logit), so the sum is >= 1: no division by zero.
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def calibration_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> dict[str, Any]:
    """Calibration of class probabilities [n, C] against class ids `y_true` [n].

    - `ece`: expected calibration error over `bins` equal-width bins of the max-class confidence,
      bins (lower, upper] (0 falls in the first): sum over bins of count / n times
      |accuracy - mean confidence| of the bin.
    - `brier`: mean over rows of the sum over classes of (p - one-hot)^2, in [0, 2]. For 2 classes
      this is twice scikit-learn's binary `brier_score_loss` (which scores the positive column
      only); this form is the same at every class count.
    - `nll`: mean negative log-likelihood (natural log) of the true class, probabilities clipped
      at 1e-12 (`NLL_CLIP`), so one confident mistake cannot make it infinite.
    - `accuracy` (of the argmax) and `mean_confidence` (mean max-class probability).
    - `reliability`: per non-empty bin, {"lower", "upper", "count", "confidence", "accuracy"}.

    Every value is a plain Python float or int (JSON-serialisable).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p = _as_probabilities(probabilities)
    rows, classes = p.shape
    y = _labels(y_true, rows, classes)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)

    # k / bins rather than linspace, whose edges can be off by an ulp (0.6000000000000001): the
    # edges reported are clean and a confidence of exactly k / bins meets its edge exactly, so
    # searchsorted puts it in the bin that edge closes, and 1.0 in the last bin.
    edges = np.arange(bins + 1) / bins
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    confidence_sums = np.bincount(index, weights=confidence, minlength=bins)
    correct_sums = np.bincount(index, weights=correct, minlength=bins)
    # sum_b (n_b / n) |acc_b - conf_b| with acc_b = correct_sums_b / n_b: the n_b cancel.
    ece = float(np.abs(correct_sums - confidence_sums).sum() / rows)

    true_class = p[np.arange(rows), y]
    squared = (p**2).sum(axis=1) - 2 * true_class + 1  # sum_c (p_c - onehot_c)^2, no [n, C] one-hot
    reliability = [
        {
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": int(counts[b]),
            "confidence": float(confidence_sums[b] / counts[b]),
            "accuracy": float(correct_sums[b] / counts[b]),
        }
        for b in np.flatnonzero(counts)
    ]
    return {
        "rows": int(rows),
        "ece": ece,
        "brier": float(squared.mean()),
        "nll": float(-np.log(np.clip(true_class, NLL_CLIP, 1.0)).mean()),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "reliability": reliability,
    }


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature T > 0 that minimises the validation NLL of
    logits_to_probabilities(`logits` [n, 1] or [n, C], T) against class ids `y_true` [n].

    A bounded scalar search over log T in [log 0.05, log 20] (the NLL is unimodal in it). An empty
    or single-class validation set says nothing about calibration: 1.0 (no scaling).
    """
    array = _as_logits(logits)
    classes = max(array.shape[1], 2)
    y = _labels(y_true, len(array), classes)
    if len(y) == 0 or np.unique(y).size < 2:
        return 1.0
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(y))

    def nll(log_temperature: float) -> float:
        return -float(_log_probabilities(array, float(np.exp(log_temperature)))[rows, y].mean())

    low, high = TEMPERATURE_BOUNDS
    result = minimize_scalar(nll, bounds=(np.log(low), np.log(high)), method="bounded")
    return float(np.exp(result.x))


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy (natural log) over the last axis, 0 log 0 = 0."""
    # log(1) = 0 stands in for log(0): the term is 0 either way, and no divide warning is raised.
    logs = np.log(np.where(probabilities > 0, probabilities, 1.0))
    return -(probabilities * logs).sum(axis=-1)


def mc_statistics(draws: np.ndarray) -> dict[str, np.ndarray]:
    """MC-dropout draws [T, n, C] of class probabilities -> per sample:

    - "mean" [n, C] and "std" [n, C] (population std over the T draws),
    - "entropy" [n]: predictive entropy of the mean (natural log; total uncertainty),
    - "mutual_information" [n]: entropy of the mean minus the mean of each draw's entropy (how
      much the draws disagree; epistemic uncertainty), clipped at >= 0 against rounding.

    One draw (T = 1) gives a mutual information of 0.
    """
    array = np.asarray(draws, dtype=np.float64)
    if array.ndim != 3 or array.shape[0] < 1:
        raise ValueError(f"draws must be [T, n, C] with T >= 1, got {array.shape}")
    mean = array.mean(axis=0)
    entropy = _entropy(mean)
    expected_entropy = _entropy(array).mean(axis=0)
    return {
        "mean": mean,
        "std": array.std(axis=0),
        "entropy": entropy,
        "mutual_information": np.maximum(entropy - expected_entropy, 0.0),
    }


def misclassification_detection(
    correct: np.ndarray, uncertainty: np.ndarray
) -> dict[str, float | None]:
    """How well `uncertainty` [n] (higher = less sure) finds the mistakes among `correct` [n]
    (bool): "auroc" and "aupr" (average precision) with errors as the positive class, and
    "error_rate". Both scores are None when there are no errors or no correct rows (no curve)."""
    right = np.asarray(correct, dtype=bool).reshape(-1)
    score = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    if len(right) != len(score):
        raise ValueError(f"{len(right)} correctness flags for {len(score)} uncertainties")
    if not np.all(np.isfinite(score)):
        raise ValueError("uncertainty holds NaN or infinite values")
    errors = ~right
    if len(errors) == 0:
        return {"auroc": None, "aupr": None, "error_rate": None}
    error_rate = float(errors.mean())
    if errors.all() or not errors.any():
        return {"auroc": None, "aupr": None, "error_rate": error_rate}
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        "auroc": float(roc_auc_score(errors, score)),
        "aupr": float(average_precision_score(errors, score)),
        "error_rate": error_rate,
    }


def risk_coverage(correct: np.ndarray, confidence: np.ndarray, points: int = 101) -> dict[str, Any]:
    """Selective prediction from `correct` [n] (bool) and `confidence` [n] (higher = surer).

    Rows are kept most confident first (ties in their given order); the risk at coverage k / n is
    the error rate of the k rows kept. Returns:

    - "coverage", "risk": lists of at most `points` evenly spaced coverages from 1/n to 1 and their
      risks (for plotting; the last risk is the error rate of the whole split),
    - "aurc": the area under the full curve, the mean risk over every coverage k / n, k = 1..n,
    - "risk_at_coverage": {"0.5": ..., "0.8": ..., "0.9": ...}, the risk of the ceil(c * n) most
      confident rows.
    """
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    right = np.asarray(correct, dtype=bool).reshape(-1)
    score = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if len(right) != len(score):
        raise ValueError(f"{len(right)} correctness flags for {len(score)} confidences")
    if len(right) == 0:
        raise ValueError("no rows")
    if not np.all(np.isfinite(score)):
        raise ValueError("confidence holds NaN or infinite values")
    rows = len(right)
    order = np.argsort(-score, kind="stable")
    kept = np.arange(1, rows + 1)
    risk = np.cumsum(~right[order]) / kept
    # Rounding linspace can repeat a k when n < points; unique keeps each coverage once.
    shown = np.unique(np.rint(np.linspace(1, rows, min(points, rows))).astype(np.int64))
    # round() first: 0.9 * 10 is 9.000000000000002, whose ceiling would be 10.
    at = {
        f"{c}": float(risk[max(int(np.ceil(round(c * rows, 9))), 1) - 1])
        for c in REPORTED_COVERAGES
    }
    return {
        "coverage": (shown / rows).tolist(),
        "risk": risk[shown - 1].tolist(),
        "aurc": float(risk.mean()),
        "risk_at_coverage": at,
    }


def _no_score_reason(correct: np.ndarray, method: str) -> str:
    return f"{method} makes {'no mistakes' if correct.all() else 'no correct prediction'}"


def _verdict(
    correct: np.ndarray,
    detection: Mapping[str, Mapping[str, float | None]],
    mc_correct: Mapping[int, np.ndarray],
    seconds: Mapping[int, float],
    prediction_seconds: float | None,
) -> str:
    """One sentence: MC dropout at the largest T against max-softmax, for finding mistakes."""
    softmax_auroc = detection["max_softmax"]["auroc"]
    if not mc_correct:
        found = "no mistakes to find" if softmax_auroc is None else f"AUROC {softmax_auroc:.3f}"
        return f"No MC dropout draws were given; max-softmax has {found}."
    largest = max(mc_correct)
    mc = f"MC dropout (T={largest})"
    mc_auroc = detection[f"mc_{largest}_entropy"]["auroc"]
    if softmax_auroc is None and mc_auroc is None and correct.all() and mc_correct[largest].all():
        return f"Neither max-softmax nor {mc} makes a mistake on the test split: none to detect."
    if softmax_auroc is None or mc_auroc is None:
        reasons = []
        if softmax_auroc is None:
            reasons.append(_no_score_reason(correct, "max-softmax"))
        if mc_auroc is None:
            reasons.append(_no_score_reason(mc_correct[largest], mc))
        return (
            f"{mc} and max-softmax cannot be compared at finding mistakes: "
            f"{' and '.join(reasons)} on the test split."
        )
    difference = mc_auroc - softmax_auroc
    # Within half a unit of the third decimal shown, the two are reported as equal.
    if difference >= 5e-4:
        how = "better than"
    elif difference <= -5e-4:
        how = "worse than"
    else:
        how = "as well as"
    cost = f"for {seconds[largest]:.2f} s of draws"
    if prediction_seconds:
        cost += f" on top of the {prediction_seconds:.2f} s prediction"
    return (
        f"{mc} detects mistakes {how} max-softmax: AUROC {mc_auroc:.3f} (predictive entropy) "
        f"against {softmax_auroc:.3f} ({difference:+.3f}), {cost}."
    )


def uncertainty_report(
    y_test: np.ndarray,
    test_logits: np.ndarray,
    y_val: np.ndarray,
    val_logits: np.ndarray,
    mc_draws: Mapping[int, tuple[np.ndarray, float]],
    names: Sequence[str],
    prediction_seconds: float | None = None,
) -> dict[str, Any]:
    """The JSON-serialisable uncertainty report of one classifier on its test split.

    `test_logits` [n, 1] or [n, C] and class ids `y_test` [n]; `val_logits`, `y_val` the
    validation split the temperature is fitted on; `mc_draws` maps T to (MC-dropout class
    probabilities [T, n, C] on the test split, the seconds they took); `names` the C class names;
    `prediction_seconds` what the deterministic test prediction took, for the verdict's cost.

    Keys: "rows", "classes" (the names), "max_softmax" and "temperature_scaled"
    (calibration_metrics at T = 1 and at the fitted "temperature"), "detection"
    (misclassification_detection of 1 - max probability as "max_softmax", and of the MC mean's
    predictive entropy and mutual information as "mc_{T}_entropy", "mc_{T}_mutual_information";
    MC mistakes are those of the MC mean's argmax), "mc" ({str(T): seconds, accuracy, ece, nll,
    brier of the MC mean}), "risk_coverage" (risk_coverage of max probability as "max_softmax" and
    of minus the predictive entropy at the largest T as "mc_{T}") and "verdict" (one sentence).
    """
    probabilities = logits_to_probabilities(test_logits)
    rows, classes = probabilities.shape
    if rows == 0:
        raise ValueError("the test split has no rows")
    if classes != len(names):
        raise ValueError(f"{classes} classes in the logits, {len(names)} names")
    y = _labels(y_test, rows, classes)
    temperature = fit_temperature(val_logits, y_val)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y

    detection: dict[str, dict[str, float | None]] = {
        "max_softmax": misclassification_detection(correct, 1.0 - confidence)
    }
    mc: dict[str, dict[str, float]] = {}
    mc_correct: dict[int, np.ndarray] = {}
    mc_entropy: dict[int, np.ndarray] = {}
    seconds: dict[int, float] = {}
    for draws_count in sorted(mc_draws):
        draws, spent = mc_draws[draws_count]
        shape = np.shape(draws)
        if shape != (draws_count, rows, classes):
            raise ValueError(f"MC draws for T={draws_count} are {shape}, not [T, n, C]")
        statistics = mc_statistics(draws)
        mean = _as_probabilities(statistics["mean"])
        right = mean.argmax(axis=1) == y
        for measure in ("entropy", "mutual_information"):
            detection[f"mc_{draws_count}_{measure}"] = misclassification_detection(
                right, statistics[measure]
            )
        calibration = calibration_metrics(y, mean)
        mc[str(draws_count)] = {
            "seconds": float(spent),
            **{k: calibration[k] for k in ("accuracy", "ece", "nll", "brier")},
        }
        mc_correct[draws_count] = right
        mc_entropy[draws_count] = statistics["entropy"]
        seconds[draws_count] = float(spent)

    curves = {"max_softmax": risk_coverage(correct, confidence)}
    if mc_draws:
        # Only the largest T: every curve is ~100 points per method in the JSON.
        largest = max(mc_draws)
        curves[f"mc_{largest}"] = risk_coverage(mc_correct[largest], -mc_entropy[largest])
    return {
        "rows": int(rows),
        "classes": [str(name) for name in names],
        "max_softmax": calibration_metrics(y, probabilities),
        "temperature": temperature,
        "temperature_scaled": calibration_metrics(
            y, logits_to_probabilities(test_logits, temperature)
        ),
        "detection": detection,
        "mc": mc,
        "risk_coverage": curves,
        "prediction_seconds": prediction_seconds,
        "verdict": _verdict(correct, detection, mc_correct, seconds, prediction_seconds),
    }


def plot_reliability(report: Mapping[str, Any], path: Path) -> None:
    """Reliability diagram PNG of an uncertainty_report: per confidence bin, the accuracy of
    max-softmax and of the temperature-scaled probabilities as bars beside the diagonal (perfect
    calibration), and below, the rows per bin on a log scale; ECE before and after and T in the
    title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("max-softmax", report["max_softmax"], "#d62728"),
        (
            f"temperature-scaled (T = {report['temperature']:.2f})",
            report["temperature_scaled"],
            "#1f77b4",
        ),
    ]
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 5), dpi=_DPI, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lowest = 1.0
    for offset, (label, metrics, colour) in zip((-0.25, 0.25), series, strict=True):
        bins = metrics["reliability"]
        if not bins:
            continue
        width = bins[0]["upper"] - bins[0]["lower"]
        centres = np.array([(b["lower"] + b["upper"]) / 2 for b in bins]) + offset * width
        lowest = min(lowest, bins[0]["lower"])
        top.bar(
            centres,
            [b["accuracy"] for b in bins],
            width=0.45 * width,
            color=colour,
            edgecolor="black",
            linewidth=0.4,
            label=f"{label}: ECE {metrics['ece']:.3f}",
        )
        bottom.bar(
            centres, [b["count"] for b in bins], width=0.45 * width, color=colour, alpha=0.45
        )
    # Max-class confidence is >= 1 / C, so bins below the lowest non-empty one would be blank.
    left = max(0.0, lowest - 0.02)
    top.plot(
        [left, 1], [left, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration"
    )
    top.set_xlim(left, 1.0)
    # Headroom above accuracy 1 holds the legend, which would otherwise hide the tallest bars.
    top.set_ylim(0, 1.35)
    top.set_yticks(np.linspace(0, 1, 6))
    top.set_ylabel("accuracy in bin")
    top.legend(loc="upper left", fontsize=9, framealpha=0.9)
    top.grid(alpha=0.3)
    bottom.set_yscale("log")
    bottom.set_ylabel("rows (log)")
    bottom.set_xlabel("confidence (max class probability), 15 equal-width bins")
    bottom.grid(alpha=0.3)
    before, after = report["max_softmax"]["ece"], report["temperature_scaled"]["ece"]
    top.set_title(
        f"Reliability on {report['rows']:,} test rows: ECE {before:.3f} → {after:.3f} "
        f"with T = {report['temperature']:.2f}",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def _method_label(key: str) -> str:
    """A readable name for a "detection" or "risk_coverage" key of an uncertainty_report."""
    if key == "max_softmax":
        return "max-softmax"
    _, draws, *measure = key.split("_", 2)
    name = f"MC dropout T={draws}"
    if not measure:
        return name
    return f"{name}, {'predictive entropy' if measure[0] == 'entropy' else 'mutual information'}"


def plot_risk_coverage(report: Mapping[str, Any], path: Path) -> None:
    """Risk-coverage PNG of an uncertainty_report: the error rate among the most confident rows
    against the share of rows kept, max-softmax against MC dropout at the largest T (ranked by
    predictive entropy), AURC (lower is better) in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5), dpi=_DPI)
    highest = 0.0
    for key, curve in report["risk_coverage"].items():
        colour = "#d62728" if key == "max_softmax" else "#1f77b4"
        label = _method_label(key) + (", predictive entropy" if key != "max_softmax" else "")
        axes.plot(
            curve["coverage"],
            curve["risk"],
            color=colour,
            linewidth=1.8,
            label=f"{label} (AURC {curve['aurc']:.4f})",
        )
        highest = max(highest, *curve["risk"])
    axes.set_xlim(0, 1)
    axes.set_ylim(0, max(highest * 1.1, 0.01))
    axes.set_xlabel("coverage (share of test rows kept, most confident first)")
    axes.set_ylabel("risk (error rate among kept rows)")
    axes.set_title(f"Risk-coverage on {report['rows']:,} test rows (lower is better)", fontsize=11)
    axes.legend(loc="upper left", fontsize=9, frameon=False)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def _or_na(value: float | None) -> float | str:
    return "n/a" if value is None else value


def uncertainty_markdown(report: Mapping[str, Any]) -> list[str]:
    """Markdown lines of an uncertainty_report (no images; the caller inlines the PNGs): the
    verdict, a calibration table (max-softmax, temperature-scaled with T, MC dropout at each T
    with its seconds) and a mistake-detection table (AUROC, AUPR per method), numbers to 4
    decimals."""
    temperature = round(report["temperature"], 4)
    calibration_rows: list[list[Any]] = [
        ["max-softmax", "", report["max_softmax"]],
        [f"temperature-scaled (T = {temperature})", "", report["temperature_scaled"]],
        *([f"MC dropout T={t}", m["seconds"], m] for t, m in report["mc"].items()),
    ]
    detection = report["detection"]
    return [
        f"**Uncertainty.** {report['verdict']}",
        "",
        *markdown_table(
            ["probabilities", "seconds", "ECE", "Brier", "NLL", "accuracy"],
            [
                [name, spent, m["ece"], m["brier"], m["nll"], m["accuracy"]]
                for name, spent, m in calibration_rows
            ],
        ),
        "",
        "Finding the mistakes (errors are the positives; higher uncertainty should mean an error):",
        "",
        *markdown_table(
            ["uncertainty", "AUROC", "AUPR", "error rate"],
            [
                [
                    _method_label(key)
                    if key != "max_softmax"
                    else "max-softmax (1 - max probability)",
                    _or_na(scores["auroc"]),
                    _or_na(scores["aupr"]),
                    _or_na(scores["error_rate"]),
                ]
                for key, scores in detection.items()
            ],
        ),
    ]


def write_uncertainty_report(
    report: Mapping[str, Any], mc_dropout_layers: Sequence[str], folder: Path
) -> dict[str, Any]:
    """Write `report.json` (with the dropout layers MC dropout keeps on) and both plots into
    `folder`; return the headline that goes into metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        **report,
        "mc_dropout_layers": list(mc_dropout_layers),
        # The encoder's own dropout would need T encoder passes, not T head passes.
        "mc_encoder_dropout": False,
    }
    (folder / REPORT_FILE).write_text(json.dumps(written, indent=2))
    plot_reliability(report, folder / RELIABILITY_PLOT)
    plot_risk_coverage(report, folder / RISK_COVERAGE_PLOT)
    largest = max((int(t) for t in report["mc"]), default=None)
    return {
        "ece": report["max_softmax"]["ece"],
        "temperature": report["temperature"],
        "ece_temperature_scaled": report["temperature_scaled"]["ece"],
        "error_auroc_max_softmax": report["detection"]["max_softmax"]["auroc"],
        "error_auroc_mc": None
        if largest is None
        else report["detection"][f"mc_{largest}_entropy"]["auroc"],
        "verdict": report["verdict"],
    }
