"""The direct pathway's maths as pure functions (falign.layers.pathways.direct.signal), each
against the same quantity computed another way: loops over samples and positions, einsum."""

from __future__ import annotations

import pytest
import torch

from falign.layers.pathways.direct.signal import (
    IGNORE_INDEX,
    batch_axis,
    feedback_rows,
    feedback_shape,
    labels_counted,
    one_hot_targets,
    project,
)

DT = torch.float64


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("x, e, op, recurrent, expected", [
    ((4, 5, 3), (4, 5, 7), "linear", False, (3, 7)),  # token-wise: each position its own error
    ((4, 6, 3), (4, 7), "linear", False, (3, 7)),  # one error a sample, broadcast to positions
    ((4, 3), (4, 7), "linear", False, (3, 7)),  # an MLP layer
    ((4, 2, 5, 5), (4, 7), "conv", False, (2, 5, 5, 7)),  # a whole map times e
    ((4, 3), (4, 6, 7), "linear", True, (3, 7)),  # a recurrent weight: one step's state and error
])
def test_feedback_shape(x, e, op, recurrent, expected):
    assert feedback_shape(x, e, op=op, recurrent=recurrent) == expected


def test_batch_axis_finds_the_batch_of_a_sequence_input():
    assert batch_axis((4, 6, 3), (4, 7)) == 0
    assert batch_axis((6, 4, 3), (5, 4, 7)) == 1  # time-major, an encoder's positions and a decoder's
    assert batch_axis((6, 4, 3), (4, 7)) is None  # a sample's error is batch-first
    assert batch_axis((6, 5, 3), (4, 7)) is None


def test_one_hot_targets_zeroes_the_positions_that_count_in_no_loss():
    error = torch.zeros(2, 3, 4, dtype=DT)
    labels = torch.tensor([[1, IGNORE_INDEX, 3], [0, 2, IGNORE_INDEX]])
    hot = one_hot_targets(labels, error)
    expected = torch.zeros(2, 3, 4, dtype=DT)
    for n in range(2):
        for t in range(3):
            if labels[n, t] != IGNORE_INDEX:
                expected[n, t, labels[n, t]] = 1
    assert torch.equal(hot, expected)
    floats = _randn(2, 3, 4)
    assert torch.equal(one_hot_targets(floats, error), floats)


def test_a_steps_targets_and_label_count_are_made_once_however_many_layers_ask():
    """StepState keeps the one-hot targets (in e's shape and dtype) and the label count it made
    for the step; a new step (set_step makes a new StepState) makes them again."""
    from falign.layers.pathways.direct.state import StepState

    labels = torch.tensor([[1, IGNORE_INDEX, 3], [0, 2, IGNORE_INDEX]])
    error = torch.zeros(2, 3, 4, dtype=DT)
    step = StepState(labels)
    hot = step.targets_like(error)
    assert torch.equal(hot, one_hot_targets(labels, error)) and step.targets_like(error) is hot
    assert step.targets_like(error.float()).dtype == torch.float32  # another dtype: made again
    assert step.labels(error) == 4 == labels_counted(labels, error)
    assert StepState(labels[:1]).labels(error[:1]) == 2


def test_a_counted_step_makes_its_one_hot_targets_from_the_count():
    """Once the labels are counted, the one-hot targets come from the count's mask, or without a
    mask where every label counts: the same values as made from the labels alone."""
    from falign.layers.pathways.direct.state import StepState

    error = torch.zeros(3, 4, dtype=DT)
    for labels in (torch.tensor([2, 0, 3]), torch.tensor([2, IGNORE_INDEX, 3]),
                   torch.tensor([IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX])):
        expected = torch.zeros(3, 4, dtype=DT)
        for n, label in enumerate(labels.tolist()):
            if label != IGNORE_INDEX:
                expected[n, label] = 1
        step = StepState(labels)
        assert step.labels(error) == labels_counted(labels, error)
        assert torch.equal(step.targets_like(error), expected)
        assert torch.equal(one_hot_targets(labels, error), expected)
    one = StepState(torch.tensor([IGNORE_INDEX]))  # counted as 1 (never a division by 0), all zeros
    assert one.labels(error[:1]) == 1
    assert torch.equal(one.targets_like(error[:1]), torch.zeros(1, 4, dtype=DT))


def test_labels_counted_is_what_a_mean_loss_averages_over():
    error2, error3 = torch.zeros(5, 4), torch.zeros(2, 3, 4)
    assert labels_counted(None, error2) == 5
    assert labels_counted(None, error3) == 6
    assert labels_counted(torch.tensor([[1, IGNORE_INDEX, 3], [0, 2, IGNORE_INDEX]]), error3) == 4
    assert labels_counted(torch.full((2,), IGNORE_INDEX), error2) == 1  # never a division by 0
    assert labels_counted(torch.zeros(5, 4), error2) == 5  # float targets: one a sample


def test_project_token_wise_and_broadcast_are_the_per_position_products():
    b = _randn(3, 7, seed=1)
    s = _randn(4, 5, 7, seed=2)
    g = project(s, b, (4, 5, 3), DT, op="linear")
    for n in range(4):
        for t in range(5):
            torch.testing.assert_close(g[n, t], b @ s[n, t], rtol=1e-12, atol=1e-12)
    s2 = _randn(4, 7, seed=3)  # one error a sample: every position receives its projection
    g2 = project(s2, b, (4, 6, 3), DT, op="linear")
    for n in range(4):
        for t in range(6):
            torch.testing.assert_close(g2[n, t], b @ s2[n], rtol=1e-12, atol=1e-12)
    s3 = _randn(5, 4, 7, seed=6)  # time-major, other positions: each receives the sample's mean
    g3 = project(s3, b, (6, 4, 3), DT, op="linear")
    for n in range(4):
        torch.testing.assert_close(g3[2, n], b @ s3[:, n].mean(0), rtol=1e-12, atol=1e-12)


def test_project_onto_a_whole_map():
    b = _randn(2, 3, 3, 7, seed=4)
    s = _randn(4, 7, seed=5)
    g = project(s, b, (4, 2, 3, 3), DT, op="conv")
    torch.testing.assert_close(g, torch.einsum("chwk,nk->nchw", b, s), rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="batch size 4 but the layer input has 5"):
        project(s, b, (5, 2, 3, 3), DT, op="conv")


def test_feedback_rows_pairs_inputs_with_errors():
    x, e = _randn(4, 5, 3), _randn(4, 5, 7, seed=1)
    h, err = feedback_rows(x, e, (3, 7))
    assert torch.equal(h, x.reshape(20, 3)) and torch.equal(err, e.reshape(20, 7))
    e2 = _randn(4, 7, seed=2)  # one error a sample: positions summed against it
    h2, err2 = feedback_rows(x, e2, (3, 7))
    torch.testing.assert_close(h2, x.sum(1))
    torch.testing.assert_close(err2, e2)
    xm = _randn(4, 2, 3, 3)
    h3, err3 = feedback_rows(xm, e2, (2, 3, 3, 7))
    assert h3.shape == (4, 18) and torch.equal(err3, e2)
