"""The learning test: a small model trained for about a minute on real CIFAR-100 images must be far above
chance on held-out validation images."""

import json


def test_learns_real_cifar100(real_run):
    history = json.loads((real_run / "history.json").read_text())
    final = history[-1]
    assert final["eval_split"] == "val"
    # Chance is 1% (100 balanced classes). On 2,000 validation images the number a guessing model gets
    # right is Binomial(2000, 0.01): mean 20, standard deviation 4.45. The threshold, 6% = 120 images, is
    # more than 22 standard deviations above that: it cannot pass by luck. (This run reaches ~11%.)
    assert final["val_top1"] >= 0.06, history
    # Top-5 by chance is 5%: Binomial(2000, 0.05), mean 100 images, standard deviation 9.7. 15% = 300 images is
    # 20 standard deviations above, and above what top-1 reaches here: a top-5 that counted only the first
    # guess, or guessed, fails. (This run reaches ~29%.)
    assert final["val_top5"] >= 0.15, history
    assert history[-1]["val_loss"] < history[0]["val_loss"]
