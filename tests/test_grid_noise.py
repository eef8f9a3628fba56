"""bot/grid/noise.py against figures worked out by hand: the standard error of a delta of two
means, the 2-standard-error mark at its edge, the seed counts and the legend's words.

tests/test_ablate.py checks the same marks in rendered tables, where every std is 1.
"""

from __future__ import annotations

import math

import pytest

from bot.grid.noise import delta_se, delta_text, legend, seeds_suffix, within_noise


def row(std, seeds, delta=None, se=None, within=None):
    return {"top1_std": std, "seeds": seeds, "delta_top1": delta, "delta_top1_se": se, "delta_within_noise": within}


def test_standard_error_of_a_delta_of_means():
    # sqrt(0.3² / 2 + 0.4² / 3) = sqrt(0.045 + 0.053333) = 0.313581
    assert delta_se(row(0.3, 2), row(0.4, 3)) == pytest.approx(0.313581, abs=1e-6)
    assert delta_se(row(0.4, 3), row(0.3, 2)) == pytest.approx(0.313581, abs=1e-6)
    assert delta_se(row(2.0, 4), row(0.0, 2)) == pytest.approx(1.0)  # sqrt(4 / 4)
    assert delta_se(row(None, 1), row(0.4, 3)) is None and delta_se(row(0.4, 3), row(None, 1)) is None


def test_the_mark_is_strictly_under_two_standard_errors():
    assert within_noise(0.99, 0.5) is True
    assert within_noise(-0.99, 0.5) is True
    assert within_noise(1.0, 0.5) is False  # exactly 2 standard errors: not within
    assert within_noise(-1.5, 0.5) is False
    assert within_noise(None, 0.5) is None and within_noise(0.1, None) is None


def test_delta_text():
    assert delta_text(row(1, 3, 0.4, 0.3, True)) == "+0.40 ± 0.30 ~"
    assert delta_text(row(1, 3, -1.25, 0.3, False)) == "-1.25 ± 0.30"
    assert delta_text(row(1, 3, 0.4, 0.3, True), with_se=False) == "+0.40 ~"
    assert delta_text(row(None, 1, 0.4, None, None)) == "+0.40"
    assert delta_text(row(1, 3)) == ""


@pytest.mark.parametrize("seeds, most, text", [(1, 3, " (n=1)"), (2, 3, " (n=2)"), (3, 3, ""), (0, 3, "")])
def test_fewer_seeds_than_the_fullest_row_are_said(seeds, most, text):
    assert seeds_suffix({"seeds": seeds}, most) == text


def test_legend_words_for_the_seeds_a_table_has():
    one = ("One seed: the noise of each figure is unknown and no delta is marked; "
           "run more (--seeds 3) to see which deltas stand out from it.")
    assert legend([]) == one
    assert legend([{"seeds": 1}, {"seeds": 0}]) == one
    two = ("Mean ± std over 2 seeds. Δ ± its standard error √(s₁²/n₁ + s₂²/n₂); ~ marks a Δ smaller than "
           "2 standard errors: within the seeds' noise, not an effect.")
    assert legend([{"seeds": 2}, {"seeds": 2}]) == two
    assert legend([{"seeds": 2}, {"seeds": 0}]) == two  # a row not started is not "fewer"
    assert legend([{"seeds": 3}, {"seeds": 2}]) == two.replace("over 2 seeds.", "over 3 seeds (n=k: a row with fewer "
                                                                               "finished).")
    assert math.isclose(2.0, float(two.split(" standard errors")[0].rsplit(" ", 1)[1]))
