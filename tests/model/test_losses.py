"""Loss functions vs torch.nn.functional / hand values, and RETURNN's score key names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from returnn_ray.errors import DataError
from returnn_ray.model.losses import (
    ce_sums,
    ctc_greedy_decode,
    ctc_sums,
    edit_distance,
    learning_rate_file_keys,
    mse_sums,
    seq_mask,
)


def _padded_batch(seed=0, lens=(5, 3, 1), classes=4):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens)
    logits = torch.randn(len(lens), int(lens.max()), classes, generator=g)
    target = torch.randint(0, classes, (len(lens), int(lens.max())), generator=g)
    return logits, target, lens


def test_ce_matches_torch_on_real_frames_only():
    logits, target, lens = _padded_batch()
    mask = seq_mask(lens, logits.shape[1])
    loss, err = ce_sums(logits, target, mask, scores_are_logits=True)
    want = F.cross_entropy(logits[mask], target[mask], reduction="sum")
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert err.item() == (logits[mask].argmax(-1) != target[mask]).sum().item()
    # Garbage in the padding (even an out-of-range class index) changes nothing.
    logits2, target2 = logits.clone(), target.clone()
    logits2[~mask] = 1e4
    target2[~mask] = 99
    loss2, err2 = ce_sums(logits2, target2, mask, scores_are_logits=True)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6) and err2.item() == err.item()


def test_ce_on_probabilities_is_minus_log_prob():
    probs = torch.tensor([[[0.25, 0.75], [0.5, 0.5]]])
    loss, err = ce_sums(probs, torch.tensor([[1, 0]]), torch.tensor([[True, True]]), scores_are_logits=False)
    assert loss.item() == pytest.approx(-math.log(0.75) - math.log(0.5))
    assert err.item() == 0  # argmax ties go to index 0


def test_ce_label_smoothing_like_returnn():
    # RETURNN: soft target 1-ls on the label, ls/(C-1) elsewhere, minus the best achievable value.
    logits = torch.tensor([[[1.0, 2.0, 0.5]]])
    ls, c = 0.3, 3
    lp = torch.log_softmax(logits[0, 0], -1)
    soft = torch.tensor([ls / 2, 1 - ls, ls / 2])
    best = -((1 - ls) * math.log(1 - ls) + (c - 1) * (ls / 2) * math.log(ls / 2 + 1e-20))
    want = -(soft * lp).sum().item() - best
    loss, _ = ce_sums(logits, torch.tensor([[1]]), torch.tensor([[True]]), scores_are_logits=True, label_smoothing=ls)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    # A perfect prediction of the soft target scores 0.
    perfect = torch.log(soft).view(1, 1, 3)
    loss0, _ = ce_sums(perfect, torch.tensor([[1]]), torch.tensor([[True]]), scores_are_logits=True, label_smoothing=ls)
    assert loss0.item() == pytest.approx(0.0, abs=1e-5)


def test_ce_dense_soft_target():
    logits = torch.tensor([[[0.0, 1.0]]])
    target = torch.tensor([[[0.2, 0.8]]])
    loss, err = ce_sums(logits, target, torch.tensor([[True]]), scores_are_logits=True)
    want = -(target[0, 0] * torch.log_softmax(logits[0, 0], -1)).sum()
    assert loss.item() == pytest.approx(want.item()) and err.item() == 0


def test_mse_mean_over_features_sum_over_frames():
    out = torch.tensor([[[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], [[0.0, 1.0, 0.0], [7.0, 7.0, 7.0]]])
    lens = torch.tensor([2, 1])
    mask = seq_mask(lens, 2)
    # Sparse target = one-hot. Seq 0: frame 0 exact, frame 1 vs class 2; seq 1: frame 0 vs class 0.
    loss, err = mse_sums(out, torch.tensor([[0, 2], [0, 5]]), mask)
    want = (0.2**2 + 0.3**2 + 0.5**2) / 3 + (1 + 1) / 3
    assert loss.item() == pytest.approx(want) and err.item() == 1
    dense = F.one_hot(torch.tensor([[0, 2], [0, 0]]), 3).float()
    assert mse_sums(out, dense, mask)[0].item() == pytest.approx(want)


def test_ctc_matches_torch_with_blank_last():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 5, generator=g)
    lens = torch.tensor([6, 4])
    target = torch.tensor([[0, 1, 2], [3, 3, 0]])  # the second seq is padded after 2 labels
    target_lens = torch.tensor([3, 2])
    loss, _ = ctc_sums(logits, lens, target, target_lens, blank=4, layer="output")
    log_probs = torch.log_softmax(logits, -1).transpose(0, 1)
    want = F.ctc_loss(log_probs, target, lens, target_lens, blank=4, reduction="sum")
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # Padding frames of the output change nothing.
    logits2 = logits.clone()
    logits2[1, 4:] = 100.0
    assert ctc_sums(logits2, lens, target, target_lens, blank=4, layer="output")[0].item() == pytest.approx(loss.item())


def test_ctc_label_errors_by_greedy_decoding():
    # Best path of seq 0: 0 0 _ 1 -> "0 1", target "0 1": no error.
    # Seq 1: 2 _ 2 -> "2 2", target "1 2": one substitution.
    path = torch.tensor([[0, 0, 3, 1], [2, 3, 2, 0]])
    logits = F.one_hot(path, 4).float() * 10
    lens = torch.tensor([4, 3])
    _, errors = ctc_sums(logits, lens, torch.tensor([[0, 1], [1, 2]]), torch.tensor([2, 2]), blank=3, layer="o")
    assert errors.item() == 1


def test_ctc_too_few_frames_is_a_data_error():
    logits = torch.zeros(1, 3, 3)
    with pytest.raises(DataError, match=r"network layer 'out'.*seq 0.*3 output frames.*at least 4"):
        # "0 1 1" needs a blank between the repeated labels: 4 frames.
        ctc_sums(logits, torch.tensor([3]), torch.tensor([[0, 1, 1]]), torch.tensor([3]), blank=2, layer="out")


def _levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_edit_distance_matches_reference():
    g = torch.Generator().manual_seed(3)
    hyp = torch.randint(0, 3, (20, 7), generator=g)
    ref = torch.randint(0, 3, (20, 5), generator=g)
    hyp_lens = torch.randint(0, 8, (20,), generator=g)
    ref_lens = torch.randint(0, 6, (20,), generator=g)
    got = edit_distance(hyp, hyp_lens, ref, ref_lens).tolist()
    want = [_levenshtein(hyp[b, : hyp_lens[b]].tolist(), ref[b, : ref_lens[b]].tolist()) for b in range(20)]
    assert got == want


def test_greedy_decode_merges_repeats_then_drops_blanks():
    path = torch.tensor([[1, 1, 0, 1, 0, 0, 2, 9]])  # blank 0; the last frame is padding
    hyp, n = ctc_greedy_decode(F.one_hot(path, 10).float(), torch.tensor([7]), blank=0)
    assert hyp[0, : n[0]].tolist() == [1, 1, 2]


def test_learning_rate_file_keys_match_returnn():
    # RETURNN TF hands {"dev_score": {"cost:<layer>": ..}, "dev_error": {"error:<layer>": ..}} to set_epoch_error.
    lrc_mod = pytest.importorskip("returnn.learning_rate_control")
    for layers in (["output"], ["ctc", "output"]):
        names = [f"{kind}:{layer}" for layer in layers for kind in ("cost", "error")]
        control = lrc_mod.ConstantLearningRate(default_learning_rate=1.0)
        control.set_epoch_error(
            1,
            {
                "dev_score": {n: 1.0 for n in names if n.startswith("cost:")},
                "dev_error": {n: 0.5 for n in names if n.startswith("error:")},
            },
        )
        assert sorted(control.epoch_data[1].error) == sorted(learning_rate_file_keys("dev", names).values())
