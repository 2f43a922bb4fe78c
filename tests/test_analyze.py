"""`genkit analyze`: association rules on planted patterns, the k-NN probe and anomaly scores, progress lines and notes."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from sklearn.exceptions import ConvergenceWarning

from genkit.analysis import Stages
from genkit.association import binary_codes, class_rules, format_rules, plot_rules, rules_to_records, save_rules
from genkit.cli import main
from genkit.engine import train
from genkit.latents import anomaly_auroc, knn_distances, knn_probe


def test_planted_co_activation_gives_the_rule_with_hand_computed_measures(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)  # 100 images, 25 per class
    codes = np.zeros((100, 10), dtype=bool)
    codes[:, [0, 1, 2, 4, 5]] = rng.random((100, 5)) < 0.3  # background units, never with 3 or 7
    codes[:, [0, 1, 2, 4, 5]] &= ~np.isin(np.arange(100), np.r_[0:5, 50:70])[:, None]
    codes[50:70, 3] = codes[50:70, 7] = True  # units 3 and 7 fire together in 20 of the 25 images of class 2 ...
    codes[0:5, 3] = codes[0:5, 7] = True  # ... and in 5 images of class 0
    rules = class_rules(codes, labels, ["zero", "one", "two", "three"], min_support=0.05, min_confidence=0.6)
    rule = rules[rules["units"].map(lambda u: u == [3, 7])].iloc[0]
    # support = P({3,7} and class 2) = 20/100; confidence = P(class 2 | {3,7}) = 20/25; lift = 0.8 / P(class 2) = 0.8 / 0.25
    assert rule["class"] == "two" and rule["images"] == 20
    assert rule["support"] == pytest.approx(0.20) and rule["confidence"] == pytest.approx(0.80) and rule["lift"] == pytest.approx(3.2)
    assert rule["units_support"] == pytest.approx(0.25)
    assert not (rules["class"] == "zero").any()  # {3,7} -> zero has confidence 5/25, below 0.6
    assert list(rules["lift"]) == sorted(rules["lift"], reverse=True)

    csv_path, json_path = save_rules(rules, tmp_path)
    table = pd.read_csv(csv_path)
    assert len(table) == len(rules) and "3 7" in set(table["units"])
    assert json.loads(json_path.read_text()) == rules_to_records(rules)
    assert "u3 & u7" in format_rules(rules_to_records(rules)) and plot_rules(rules, tmp_path / "rules.png").is_file()
    assert class_rules(codes, labels, ["zero", "one", "two", "three"], min_support=0.5).empty
    assert binary_codes(np.array([[0.2, 0.7]])).tolist() == [[False, True]]


def test_knn_probe_chooses_k_on_validation_and_distances_flag_outliers():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 4)) * 5
    train_y, test_y = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
    train_z, test_z = centers[train_y] + rng.normal(size=(300, 4)), centers[test_y] + rng.normal(size=(100, 4))
    probe = knn_probe(train_z, train_y, test_z, test_y, ks=(1, 5, 400))
    assert probe["accuracy"] > 0.95 and probe["validation_images"] == 60
    assert set(probe["validation_accuracy"]) == {"1", "5"}  # k above the 240 fitting latents is skipped
    noisy = np.where(rng.random(300) < 0.3, rng.integers(0, 3, 300), train_y)  # label noise: averaging many neighbours pays
    assert knn_probe(train_z, noisy, test_z, test_y, ks=(1, 25))["k"] == 25
    x = rng.uniform(0, 10, (600, 1))  # classes alternate every 0.5: only close neighbours agree
    checker = (x[:, 0] * 2).astype(int) % 2
    assert knn_probe(x[:500], checker[:500], x[500:], checker[500:], ks=(1, 99))["k"] == 1
    shuffled = knn_probe(train_z, rng.permutation(train_y), test_z, test_y)
    assert shuffled["accuracy"] < 0.6  # labels unrelated to the latents: near chance (1/3)
    far = rng.normal(size=(20, 4)) * 5 + 30
    scores = knn_distances(train_z, np.concatenate([test_z, far]))
    assert anomaly_auroc(scores, np.r_[np.zeros(100), np.ones(20)], [1]) == 1.0


def test_stages_report_progress_and_turn_convergence_warnings_into_notes(capsys):
    stage = Stages(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # anything that escapes the stage fails the test
        with stage("fitting"):
            warnings.warn("FastICA did not converge.", ConvergenceWarning)
            warnings.warn("FastICA did not converge.", ConvergenceWarning)
        with stage("quiet"):
            pass
    err = capsys.readouterr().err
    assert "[1/2] fitting" in err and "[2/2] quiet" in err and "did not converge" not in err
    assert stage.notes == ["fitting: FastICA did not converge. (its result is used as it stands)"] and set(stage.seconds) == {"fitting", "quiet"}


def test_analyze_rbm_run_with_unseen_class(tiny_idx, tmp_path, capsys):
    from genkit.latents import encode
    from genkit.runs import load_family

    run = tmp_path / "rbm"
    train(tiny_config(tiny_idx, run, family="rbm", model={"hidden": 16}, data={"exclude_labels": [9]}, max_steps=40, batch_size=64,
                      learning_rate=1e-2, eval_every=40, checkpoint_every=40))
    capsys.readouterr()
    assert main(["analyze", str(run), "--num-images", "64", "--train-images", "192", "--min-support", "0.05", "--min-confidence", "0.3"]) == 0
    captured = capsys.readouterr()
    report = json.loads((run / "analysis.json").read_text())
    assert "analyze [1/11] encoding" in captured.err and "association rules" in captured.err and "t-SNE of 64 latents" in captured.err
    summary = captured.out.split("strongest rules")[0].strip().splitlines()  # a summary; the whole report is the file
    assert len(summary) <= 10 and f"full report: {run / 'analysis.json'}" in summary[0] and "k-NN probe: accuracy" in captured.out
    assert "AUROC on the unseen classes [9]" in captured.out and not captured.out.lstrip().startswith("{")
    assert 0.1 < report["knn_probe"]["accuracy"] <= 1 and report["knn_probe"]["train_images"] == 192
    anomaly = report["knn_anomaly"]
    assert anomaly["unseen_classes"] == [9] and 0 <= anomaly["auroc_knn_distance"] <= 1 and 0 <= anomaly["auroc_reconstruction_error"] <= 1
    assert len(pd.read_csv(anomaly["scores_csv"])) == 64

    rules = report["association"]
    assert rules["codes"] == "RBM hidden probabilities > 0.5" and rules["rules"] == len(pd.read_csv(rules["csv"])) > 0
    assert "strongest rules units -> class" in captured.out and "u" in captured.out.split("strongest rules")[1]
    family = load_family(str(run))  # every reported measure, recomputed from the codes themselves
    from genkit.evaluation import real_images, to_unit

    test = real_images(family.config.data, "test", 64)
    codes, labels = encode(family, to_unit(test)) > 0.5, test.labels.numpy()
    names = family.info.class_names
    for rule in rules["top_rules"]:
        fires = codes[:, rule["units"]].all(1)
        is_class = labels == names.index(rule["class"])
        assert rule["support"] == pytest.approx((fires & is_class).mean())
        assert rule["confidence"] == pytest.approx((fires & is_class).sum() / fires.sum())
        assert rule["lift"] == pytest.approx(rule["confidence"] / is_class.mean())


def test_only_the_units_most_informative_about_the_class_are_mined():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    codes = rng.random((200, 60)) < 0.5  # dense, class-blind units: every pair is frequent
    codes[:, 3] = codes[:, 7] = labels == 2  # units 3 and 7: exactly class 2
    rules = class_rules(codes, labels, ["a", "b", "c", "d"], min_support=0.05, max_items=2)
    assert set(map(tuple, rules["units"])) == {(3,), (7,), (3, 7)} and (rules["lift"] == 4.0).all()


def test_which_codes_are_binary_and_where_a_sparse_unit_counts_as_active():
    from types import SimpleNamespace

    from genkit.analysis import binary_code_source, default_code_threshold

    def family(model, options):
        return SimpleNamespace(models={"model": model}, config=SimpleNamespace(family="autoencoder", model=options), option=lambda key: 0.1)

    codes = np.random.default_rng(0).random((500, 20))
    kl, l1, dense = family(object(), {"sparsity": "kl"}), family(object(), {"sparsity": "l1"}), family(object(), {})
    assert (codes > default_code_threshold(kl, codes)).mean() == pytest.approx(0.10, abs=1e-3)  # the KL target: 10 % active
    assert (codes > default_code_threshold(l1, codes)).mean() == pytest.approx(0.05, abs=1e-3)
    rbm = family(SimpleNamespace(hidden_probs=None), {})
    assert default_code_threshold(rbm, codes) == 0.5 and binary_code_source(rbm) == "RBM hidden probabilities"
    assert binary_code_source(kl).startswith("sparse (kl)") and binary_code_source(dense) is None
