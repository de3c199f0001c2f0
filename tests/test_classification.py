"""Classification report against a hand-computed example (and scikit-learn when installed)."""

from __future__ import annotations

import math

import pytest
import torch

from falign.analysis.classification import classification_report

# true 0 -> predicted 0, 1, 0; true 1 -> 1, 1; true 2 -> 2, 2, 1
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 1, 0, 1, 1, 2, 2, 1]


def test_hand_computed_three_class_example() -> None:
    rep = classification_report(torch.tensor(Y_TRUE), torch.tensor(Y_PRED))
    assert rep.confusion.dtype == torch.int64
    assert rep.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 2]]
    # Column sums (predictions) 2, 4, 2; row sums (support) 3, 2, 3.
    torch.testing.assert_close(rep.precision, torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(rep.recall, torch.tensor([2 / 3, 1.0, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(rep.f1, torch.tensor([0.8, 2 / 3, 0.8], dtype=torch.float64))
    assert rep.support.tolist() == [3, 2, 3]
    assert rep.accuracy == pytest.approx(6 / 8)
    assert rep.macro_precision == pytest.approx(2.5 / 3)
    assert rep.macro_recall == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert rep.macro_f1 == pytest.approx((0.8 + 2 / 3 + 0.8) / 3)
    assert rep.weighted_precision == pytest.approx(7 / 8)
    assert rep.weighted_f1 == pytest.approx((3 * 0.8 + 2 * 2 / 3 + 3 * 0.8) / 8)


def test_text_table_layout() -> None:
    text = classification_report(Y_TRUE, Y_PRED).to_text()
    expected = (
        "              precision    recall  f1-score   support\n"
        "\n"
        "           0       1.00      0.67      0.80         3\n"
        "           1       0.50      1.00      0.67         2\n"
        "           2       1.00      0.67      0.80         3\n"
        "\n"
        "    accuracy                           0.75         8\n"
        "   macro avg       0.83      0.78      0.76         8\n"
        "weighted avg       0.88      0.75      0.77         8\n"
    )
    assert text == expected


def test_class_names_and_scores_as_predictions() -> None:
    scores = torch.nn.functional.one_hot(torch.tensor(Y_PRED), 3).float() * 5.0 - 1.0
    rep = classification_report(Y_TRUE, scores, class_names=["cat", "dog", "very long name"])
    assert rep.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 2]]
    lines = rep.to_text().splitlines()
    assert lines[2].startswith("           cat ")
    assert lines[4].startswith("very long name ")


def test_classes_never_predicted_or_absent_give_zero_not_nan() -> None:
    # Class 2 occurs but is never predicted; class 3 neither occurs nor is predicted.
    rep = classification_report([0, 1, 2, 2], [0, 1, 0, 1], num_classes=4)
    for values in (rep.precision, rep.recall, rep.f1):
        assert not torch.isnan(values).any()
    assert rep.precision[2] == 0 and rep.recall[2] == 0 and rep.f1[3] == 0
    assert rep.support.tolist() == [1, 1, 2, 0]
    assert rep.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 0 + 0) / 4)
    assert not any(math.isnan(v) for v in (rep.weighted_f1, rep.accuracy))


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        classification_report([0, 1], [0])
    with pytest.raises(ValueError):
        classification_report([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError):
        classification_report([0, 1], [0, 1], num_classes=2, class_names=["a"])


def test_agrees_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 5, (300,), generator=g)
    y_pred = torch.where(torch.rand(300, generator=g) < 0.6, y_true, torch.randint(0, 5, (300,), generator=g))
    y_pred[y_pred == 4] = 3  # class 4 is never predicted
    labels = list(range(6))  # class 5 never occurs
    rep = classification_report(y_true, y_pred, num_classes=6)
    p, r, f, s = metrics.precision_recall_fscore_support(
        y_true.numpy(), y_pred.numpy(), labels=labels, zero_division=0
    )
    torch.testing.assert_close(rep.precision, torch.from_numpy(p).double())
    torch.testing.assert_close(rep.recall, torch.from_numpy(r).double())
    torch.testing.assert_close(rep.f1, torch.from_numpy(f).double())
    assert rep.support.tolist() == s.tolist()
    assert (
        rep.confusion.tolist()
        == metrics.confusion_matrix(y_true.numpy(), y_pred.numpy(), labels=labels).tolist()
    )
    expected = metrics.classification_report(y_true.numpy(), y_pred.numpy(), labels=labels, zero_division=0)
    assert rep.to_text() == expected
