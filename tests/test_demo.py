"""`cps3d demo` in a reduced mode: the whole system runs and writes a well-formed report; a second run reuses it."""

import re

import pytest

from cps3d.cli import main

pytestmark = pytest.mark.slow


def test_demo_reduced_mode_writes_report_and_reuses_work(tmp_path, capsys):
    work = tmp_path / "demo"
    args = ["demo", "--workdir", str(work), "--minutes", "1", "--size", "small", "--labeled", "3", "--unlabeled",
            "3", "--test", "2", "--device", "cpu", "-np", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"Report: {work / 'report.md'}" in out
    report = (work / "report.md").read_text()
    assert "synthetic" in report.lower()

    # the per-organ table: 13 FLARE organs and the mean, DSC and NSD for the three runs, numbers in [0, 1]
    rows = [line for line in report.splitlines() if line.startswith("| ") and "Organ" not in line
            and "Run" not in line and "---" not in line]
    organ_rows = [r for r in rows if r.split("|")[1].strip() in {
        "liver", "right_kidney", "spleen", "pancreas", "aorta", "inferior_vena_cava", "right_adrenal_gland",
        "left_adrenal_gland", "gallbladder", "esophagus", "stomach", "duodenum", "left_kidney", "**mean**"}]
    assert len(organ_rows) == 14
    for r in organ_rows:
        values = [float(v.strip(" *")) for v in r.split("|")[2:-1]]
        assert len(values) == 6 and all(0.0 <= v <= 1.0 for v in values)
    header = next(line for line in report.splitlines() if line.startswith("| Organ"))
    for run in ("Baseline DSC", "CPS DSC", "CPS + forced spacing DSC", "Baseline NSD", "CPS NSD"):
        assert run in header

    # efficiency: measured times, RSS and CPU areas; no GPU here, and it says so
    eff = [line for line in report.splitlines() if line.startswith(("| Baseline |", "| CPS |", "| CPS + forced"))]
    assert len(eff) == 3
    for line in eff:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1] == "2" and float(cells[2]) > 0 and float(cells[3]) > 0 and float(cells[4]) > 100
        assert float(cells[5]) > 0 and cells[6] == "no GPU" and cells[7] == "no GPU"

    # figures exist and are PNG files of some size
    for fig in ("report/training_curves.png", "report/qualitative.png"):
        data = (work / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, fig
        assert f"]({fig})" in report

    # both models train with the demo's protocol: the short-run optimizer and its final decay, the same for both
    from cps3d.demo import FINAL_DECAY, SHORT_RUN_OPTIMIZER
    from cps3d.files import read_json

    for trainer in ("CPSTrainer", "SupervisedTrainer"):
        saved = read_json(work / "results" / "Dataset900_Phantoms" / f"{trainer}__cps3dPlans__2d" / "fold_all" /
                          "cps3d_config.json")["train_config"]
        assert saved["lr_final_decay"] == FINAL_DECAY > 0
        assert (saved["initial_lr"], saved["momentum"]) == tuple(SHORT_RUN_OPTIMIZER.values())

    # a second run reuses everything: no training, no prediction
    ckpt = work / "results" / "Dataset900_Phantoms" / "CPSTrainer__cps3dPlans__2d" / "fold_all" / \
        "checkpoint_final.pth"
    before = ckpt.stat().st_mtime_ns
    pred = next((work / "predictions" / "cps").glob("*.nii.gz"))
    pred_before = pred.stat().st_mtime_ns
    assert main(args) == 0
    assert ckpt.stat().st_mtime_ns == before and pred.stat().st_mtime_ns == pred_before
    assert re.search(r"mean DSC: [+-]\d\.\d{4}", (work / "report.md").read_text())
