"""`distinception data ...` and `model summary` as a user types them: the installed entry point
in a subprocess, on a small real image tree with a broken file in it."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from as_typed import distinception
from PIL import Image

pytestmark = pytest.mark.integration

TABLE1 = Path(__file__).parents[1] / "data" / "reference" / "googlenet_table1.csv"


def _image_tree(root: Path) -> Path:
    """Two class folders of PNGs and JPEGs of odd sizes, one file that is not an image."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = (rng.random((20 + i, 24, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(root / label / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "dog" / "notes.jpg").write_bytes(b"not an image")
    return root


def test_import_then_inspect_a_folder_tree(tmp_path):
    src = _image_tree(tmp_path / "src")
    out = tmp_path / "shards"
    proc = distinception("data", "import", str(src), "--out", str(out), "--val-fraction", "0.25")
    report = proc.stdout
    assert "files read: 13" in report
    assert "train: 8 images written" in report and "val: 4 images written" in report
    assert "skipped: 1" in report and "not an image: 1" in report  # counted, not fatal
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["cat", "dog"]

    grid = tmp_path / "grid.png"
    text = distinception("data", "inspect", str(out), "--grid", str(grid)).stdout
    assert "2 classes" in text and "train: 8 images" in text and "val: 4 images" in text
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A tree that is not there is one line and exit 2, and nothing is written.
    proc = distinception(
        "data", "import", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), code=2
    )
    assert proc.stderr.count("\n") == 1 and "nope" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_generate_writes_the_built_in_set_it_says(tmp_path):
    out = tmp_path / "gen"
    args = ("--classes", "3", "--per-class", "5", "--val-per-class", "2", "--size", "32")
    proc = distinception("data", "generate", "--out", str(out), *args)
    # A progress bar on stderr (a 256-px set takes minutes), counting every image to the last.
    assert "generating" in proc.stderr and "21/21" in proc.stderr, proc.stderr
    text = distinception("data", "inspect", str(out)).stdout
    assert "3 classes" in text and "train: 15 images" in text and "val: 6 images" in text


def test_model_summary_matches_table1_in_the_shell(tmp_path):
    summary = json.loads(distinception("model", "summary", "--json").stdout)
    assert (summary["variant"], summary["input_size"]) == ("faithful", 224)
    with TABLE1.open() as f:
        paper = list(csv.DictReader(line for line in f if not line.startswith("#")))
    rows = {r["name"]: r for r in summary["rows"]}
    assert list(rows) == [p["name"] for p in paper]  # every Table 1 row, in order
    for p in paper:  # measured on the built model, equal to the dense count of each row
        assert rows[p["name"]]["params"] == int(p["exact_params"]), p["name"]
        assert rows[p["name"]]["macs"] == int(p["exact_macs"]), p["name"]
        assert rows[p["name"]]["out_hw"] == int(p["out_hw"]), p["name"]
    text = distinception(
        "model", "summary", "--variant", "bn", "--input-size", "64", "--width", "0.25"
    )
    assert "conv1" in text.stdout and "5b" in text.stdout
    proc = distinception("model", "summary", "--width", "0", code=2)
    assert proc.stderr.count("\n") == 1 and "width=0.0" in proc.stderr
    # Any other arch: params and multiply-adds per top-level block, measured the same way.
    resnet = distinception(
        *("model", "summary", "--arch", "torchvision:resnet18", "--input-size", "32"),
        *("--num-classes", "10"),
    ).stdout
    assert resnet.startswith("torchvision:resnet18, 32x32 input, width 1, 10 classes")
    total = resnet.splitlines()[-1].split()
    assert total[:2] == ["total", "11,181,642"]  # torchvision's ResNet-18 with 10 outputs
    assert "layer4" in resnet and "fc" in resnet
    proc = distinception("model", "summary", "--arch", "torchvision:resnet81", code=2)
    assert proc.stderr.count("\n") == 1 and "(close: resnet18," in proc.stderr
    assert os.listdir(tmp_path) == []  # printing a summary writes nothing
