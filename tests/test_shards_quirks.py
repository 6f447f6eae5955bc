"""The native-layout quirks of DESIGN section 4, each checked on its own."""

from __future__ import annotations

import csv
import gzip
import json
import shutil

from conftest import run_shards


def _inspect(source, root):
    code, out, err = run_shards("inspect", "--source", source, "--root", root, "--json")
    assert code == 0, err
    return json.loads(out)


def test_nih_bracketed_header_and_older_trailing_comma_file(raw_copy):
    root = raw_copy("chestxray14")
    header = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()[0]
    assert len(header.split(",")) == 11 and "OriginalImage[Width,Height]" in header
    old = (root / "Data_Entry_2017.csv").read_text().splitlines()
    assert all(line.endswith(",") for line in old)
    newer = _inspect("chestxray14", root)
    (root / "Data_Entry_2017_v2020.csv").unlink()
    assert _inspect("chestxray14", root) == newer


def test_nih_box_list_split_header_is_optional_and_checked(raw_copy):
    root = raw_copy("chestxray14")
    path = root / "BBox_List_2017.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,," and all(len(r.split(",")) == 6 for r in lines[1:])
    with_boxes = _inspect("chestxray14", root)
    assert sum(sum(s["boxes"].values()) for s in with_boxes["splits"].values()) == len(lines) - 1 > 0
    image, label, *rest = lines[1].split(",")
    path.write_text("\n".join([lines[0], ",".join([image, "Infiltration", *rest]), *lines[2:]]) + "\n")
    code, _, err = run_shards("inspect", "--source", "chestxray14", "--root", root)
    assert code == 2 and f"{path}:2: column 'Finding Label' has 'Infiltration'" in err and len(err.splitlines()) == 1
    path.write_text("\n".join([lines[0], ",".join(["99999999_000.png", label, *rest])]) + "\n")
    code, _, err = run_shards("inspect", "--source", "chestxray14", "--root", root)
    assert code == 2 and "99999999_000.png has boxes but no row" in err
    path.unlink()  # the box list is optional: without it, no boxes and the same labels
    without = _inspect("chestxray14", root)
    assert all(s["boxes"] == {} for s in without["splits"].values())
    assert [s["classes"] for s in without["splits"].values()] == [s["classes"] for s in with_boxes["splits"].values()]


def test_chexpert_prefixes_values_and_valid_file(synth_root):
    root = synth_root / "chexpert"
    train = (root / "train.csv").read_text()
    valid = (root / "valid.csv").read_text()
    assert "CheXpert-v1.0-small/train/" in train and "CheXpert-v1.0/valid/" in valid
    assert ",-1.0," in train and ",," in train
    report = _inspect("chexpert", root)
    assert all(s["num_missing_images"] == 0 for s in report["splits"].values()), "both prefixes resolve"
    test = report["splits"]["test"]["classes"]  # valid.csv: only 0/1
    assert all(c["uncertain"] == 0 and c["missing"] == 0 for c in test.values())
    train_counts = report["splits"]["train"]["classes"]
    assert sum(c["uncertain"] for c in train_counts.values()) > 0
    assert sum(c["missing"] for c in train_counts.values()) > 0


def test_mimic_alphabetical_columns_blank_views_and_unlabelled_studies(synth_root):
    root = synth_root / "mimic_cxr"
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt") as f:
        header = next(csv.reader(f))
    assert header[2:] == sorted(header[2:])
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        views = [row["ViewPosition"] for row in csv.DictReader(f)]
    assert "" in views
    code, _, err = run_shards("inspect", "--source", "mimic_cxr", "--root", root)
    assert code == 0 and "without a row" in err


def test_vindr_three_readers_and_consensus_test(synth_root):
    root = synth_root / "vindr_cxr"
    with open(root / "annotations" / "image_labels_train.csv") as f:
        rows = list(csv.DictReader(f))
    per_image = {}
    for row in rows:
        per_image.setdefault(row["image_id"], []).append(row["rad_id"])
    assert all(len(set(r)) == 3 for r in per_image.values())
    with open(root / "annotations" / "image_labels_test.csv") as f:
        header = next(csv.reader(f))
    assert "rad_id" not in header and "Other disease" in header and "Other diseases" not in header


def test_vindr_blank_test_cells_are_not_mentioned(raw_copy):
    root = raw_copy("vindr_cxr")
    path = root / "annotations" / "image_labels_test.csv"
    lines = path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[lines[0].split(",").index("Other disease")] = ""
    path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    counts = _inspect("vindr_cxr", root)["splits"]["test"]["classes"]["Other diseases"]
    assert counts["missing"] == 1


def test_vindr_boxes_per_reader_and_the_kaggle_layout(raw_copy):
    """PhysioNet's annotations_*.csv: a reader who saw nothing has one `No finding` row with empty
    coordinates. Kaggle's VinBigData train.csv (the same rows plus class_id, 14 local labels) is
    read too: a reader's votes are the classes it boxed, and the heads are its 15 classes."""
    root = raw_copy("vindr_cxr")
    with open(root / "annotations" / "annotations_train.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r["class_name"] == "No finding" and r["x_min"] == "" for r in rows)
    kaggle_classes = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
                      "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
                      "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding"]
    kept = [r for r in rows if r["class_name"] in kaggle_classes]
    header = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in kept:
            writer.writerow([r["image_id"], r["class_name"], kaggle_classes.index(r["class_name"]), r["rad_id"],
                             r["x_min"], r["y_min"], r["x_max"], r["y_max"]])
    shutil.rmtree(root / "annotations")
    report = _inspect("vindr_cxr", root)
    boxes = {}
    for r in kept:
        if r["class_name"] != "No finding":
            boxes[r["class_name"]] = boxes.get(r["class_name"], 0) + 1
    found = {}
    for split in report["splits"].values():
        for label, n in split["boxes"].items():
            found[label] = found.get(label, 0) + n
    assert found == boxes and list(next(iter(report["splits"].values()))["classes"]) == kaggle_classes
    assert set(report["splits"]) <= {"train", "val"}  # no labelled test set
    store = root.parent / "store"
    code, _, err = run_shards("build", "--source", "vindr_cxr", "--root", root, "--out", store, "--quiet",
                              "--workers", "1")
    assert code == 0, err
    assert json.loads((store / "manifest.json").read_text())["datasets"]["vindr_cxr"]["labels"] == kaggle_classes
    lines = (root / "train.csv").read_text().splitlines()
    first = lines[1].split(",")
    first[2] = "3" if first[2] != "3" else "4"  # a class_id that contradicts the class_name
    (root / "train.csv").write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    code, _, err = run_shards("inspect", "--source", "vindr_cxr", "--root", root)
    assert code == 2 and f"{root / 'train.csv'}:2: column 'class_id'" in err


def test_rsna_box_rows_and_slash_class(synth_root):
    root = synth_root / "rsna_pneumonia"
    with open(root / "stage_2_train_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > len({r["patientId"] for r in rows}), "one row per box"
    classes = (root / "stage_2_detailed_class_info.csv").read_text()
    assert "No Lung Opacity / Not Normal" in classes
    report = _inspect("rsna_pneumonia", root)
    assert "No Lung Opacity / Not Normal" in report["splits"]["train"]["classes"]


def test_shenzhen_label_from_file_name(raw_copy):
    root = raw_copy("shenzhen")
    (root / "CXR_png" / "Thumbs.db").write_bytes(b"x")
    report = _inspect("shenzhen", root)
    positives = sum(s["classes"]["Tuberculosis"]["positive"] for s in report["splits"].values())
    assert positives == len(list((root / "CXR_png").glob("*_1.png")))
