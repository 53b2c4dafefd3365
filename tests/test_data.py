import json

import numpy as np
import pytest
import torch
from PIL import Image

from cfx.core.data import (Batch, DataSourceError, FlatFolder, ImageFolder, Manifest, TensorSource, decode_image,
                      iter_batches, open_source)


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


# ---------------------------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("mode, make, expected", [
    ("L", lambda: Image.new("L", (4, 3), 128), (128 / 255,) * 3),
    ("1", lambda: Image.new("1", (4, 3), 1), (1.0, 1.0, 1.0)),
    ("RGB", lambda: Image.new("RGB", (4, 3), (10, 200, 30)), (10 / 255, 200 / 255, 30 / 255)),
    # Alpha is composited over white: fully transparent → white, half transparent → halfway to white.
    ("RGBA", lambda: Image.new("RGBA", (4, 3), (0, 0, 0, 0)), (1.0, 1.0, 1.0)),
    ("LA", lambda: Image.new("LA", (4, 3), (0, 255)), (0.0, 0.0, 0.0)),
    ("CMYK", lambda: Image.new("CMYK", (4, 3), (0, 255, 255, 0)), (1.0, 0.0, 0.0)),  # pure red
    ("YCbCr", lambda: Image.new("RGB", (4, 3), (200, 200, 200)).convert("YCbCr"), (200 / 255,) * 3),
    ("I;16", lambda: Image.fromarray(np.full((3, 4), 65535, dtype=np.uint16)), (1.0, 1.0, 1.0)),
    ("I", lambda: Image.fromarray(np.full((3, 4), 32768, dtype=np.int32)), (32768 / 65535,) * 3),
    ("F", lambda: Image.fromarray(np.full((3, 4), 0.25, dtype=np.float32)), (0.25, 0.25, 0.25)),
])
def test_every_pil_mode_decodes_to_rgb(tmp_path, mode, make, expected):
    img = make()
    assert img.mode == mode
    x = decode_image(img)
    assert x.shape == (3, 3, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 1, 1], torch.tensor(expected), atol=1.5 / 255, rtol=0)
    # Through a file as well, for the modes files can hold.
    suffix = {"CMYK": ".jpg", "YCbCr": ".jpg", "I": ".tif", "F": ".tif"}.get(mode, ".png")
    if mode != "YCbCr":
        path = tmp_path / f"img{suffix}"
        img.save(path, quality=100) if suffix == ".jpg" else img.save(path)
        y = decode_image(path)
        torch.testing.assert_close(y[:, 1, 1], torch.tensor(expected), atol=4 / 255, rtol=0)


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (2, 2))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    x = decode_image(p)
    assert x[:, 0, 0].tolist() == [0.0, 0.0, 1.0] and x[:, 1, 1].tolist() == [1.0, 0.0, 0.0]
    p.info["transparency"] = 0  # index 0 (red) is transparent → white
    x = decode_image(p)
    assert x[:, 1, 1].tolist() == [1.0, 1.0, 1.0] and x[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    path = tmp_path / "p.png"
    p.save(path, transparency=0)
    assert decode_image(path)[:, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    assert decode_image(path).shape == (3, 4, 2)


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    good = _png(folder / "good.png", np.full((6, 6, 3), 90, dtype=np.uint8))
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    return good


def test_bad_files_become_error_records_and_iteration_goes_on(tmp_path):
    _bad_files(tmp_path / "flat")
    _png(tmp_path / "flat" / "z_last.png", np.zeros((6, 6, 3), dtype=np.uint8))
    records = list(FlatFolder(tmp_path / "flat"))
    by_id = {r.id: r for r in records}
    assert len(records) == 5
    assert by_id["good.png"].ok and by_id["z_last.png"].ok
    assert "empty" in by_id["empty.png"].error
    assert by_id["truncated.png"].error and by_id["truncated.png"].image is None
    assert "cannot decode" in by_id["notes.jpg"].error
    with pytest.raises(ValueError, match="does not exist"):
        decode_image(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------- sources

def test_image_folder_labels_follow_sorted_subfolders(tmp_path):
    for cls, value in (("dog", 10), ("cat", 20), ("bird", 30)):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", np.full((5, 5, 3), value, dtype=np.uint8))
    (tmp_path / "dog" / "README.txt").write_text("ignored")
    src = ImageFolder(tmp_path)
    assert src.class_names == ["bird", "cat", "dog"] and len(src) == 6
    labels = {r.id: r.label for r in src}
    assert labels["bird/0.png"] == 0 and labels["cat/1.png"] == 1 and labels["dog/0.png"] == 2
    # A model's class order wins when given.
    src = ImageFolder(tmp_path, class_names=["dog", "cat", "bird"])
    assert {r.id: r.label for r in src}["dog/1.png"] == 0
    with pytest.raises(DataSourceError, match="not among the class names"):
        ImageFolder(tmp_path, class_names=["dog", "cat"])
    assert isinstance(open_source(tmp_path), ImageFolder)


def test_flat_folder_has_no_labels(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    _png(tmp_path / "sub" / "b.png", np.zeros((4, 4, 3), dtype=np.uint8))
    src = open_source(tmp_path)
    assert isinstance(src, FlatFolder)
    assert [(r.id, r.label) for r in src] == [("a.png", None), ("sub/b.png", None)]


def test_csv_manifest_with_metadata_and_labels(tmp_path):
    _png(tmp_path / "img" / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    _png(tmp_path / "img" / "b.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (tmp_path / "m.csv").write_text("path,label,site,age\nimg/a.png,cat,north,3\nimg/b.png,dog,south,4.5\n"
                                    "img/a.png,,east,1\nimg/b.png,zebra,west,2\nimg/missing.png,cat,x,0\n")
    src = open_source(tmp_path / "m.csv", class_names=["dog", "cat", "zebra2"])
    recs = list(src)
    assert [r.label for r in recs[:3]] == [1, 0, None]
    assert recs[0].metadata == {"site": "north", "age": 3} and recs[1].metadata["age"] == 4.5
    assert "zebra" in recs[3].error and "class names" in recs[3].error
    assert recs[4].error and "does not exist" in recs[4].error
    # Without class names, string labels map to their sorted unique values.
    assert Manifest(tmp_path / "m.csv").class_names == ["cat", "dog", "zebra"]


def test_integer_folder_names_are_class_indices_not_sorted_positions(tmp_path):
    for name in ("0", "2", "10"):
        _png(tmp_path / name / "x.png", np.zeros((4, 4, 3), dtype=np.uint8))
    src = open_source(tmp_path, num_classes=11)
    assert isinstance(src, ImageFolder) and src.class_names is None
    assert {r.id: r.label for r in src} == {"0/x.png": 0, "2/x.png": 2, "10/x.png": 10}  # sorted: "10" < "2"
    with pytest.raises(DataSourceError, match=r"\['10'\] are not class indices of a 5-class model"):
        open_source(tmp_path, num_classes=5)


def test_sub_folders_that_cannot_be_classes_are_read_without_labels(tmp_path):
    for month in ("2024-01", "2024-02"):
        _png(tmp_path / month / "x.png", np.zeros((4, 4, 3), dtype=np.uint8))
    src = open_source(tmp_path, num_classes=10)  # a 10-class model without class names: dates are not its classes
    assert isinstance(src, FlatFolder) and "without labels" in src.note and src.describe()["note"] == src.note
    assert [(r.id, r.label) for r in src] == [("2024-01/x.png", None), ("2024-02/x.png", None)]
    src = open_source(tmp_path, class_names=[str(i) for i in range(10)])  # none of them is a class name
    assert isinstance(src, FlatFolder) and "class names" in src.note
    assert isinstance(open_source(tmp_path, num_classes=2), ImageFolder)  # as many folders as classes: labels
    with pytest.raises(DataSourceError, match="not among the class names"):  # some are class names: a typo
        open_source(tmp_path, class_names=["2024-01", "2024-03"])
    with pytest.raises(DataSourceError, match="2 class sub-folders but the model has 1 classes"):
        ImageFolder(tmp_path, num_classes=1)


def test_manifest_labels_the_model_cannot_have_are_error_rows(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (tmp_path / "m.csv").write_text("path,label,id\na.png,3,r1\na.png,15,r2\na.png,seven,r3\na.png,-1,r4\n"
                                    "a.png,3.0,r5\na.png,3.5,r6\n")
    recs = {r.id: r for r in open_source(tmp_path / "m.csv", num_classes=10)}
    assert recs["r1"].label == 3 and recs["r5"].label == 3           # 3.0: pandas' integer column with gaps
    assert "not a class of this model" in recs["r2"].error and "0 to 9" in recs["r2"].error
    assert "not a class of this model" in recs["r4"].error
    assert "'seven' is a name" in recs["r3"].error                 # not silently class 0
    assert "not a class index" in recs["r6"].error
    # labels that are all names still map to their sorted values, unless there are more than the model's classes
    (tmp_path / "names.csv").write_text("path,label\na.png,cat\n")
    assert Manifest(tmp_path / "names.csv", num_classes=10).class_names == ["cat"]
    (tmp_path / "many.csv").write_text("path,label,id\na.png,cat,1\na.png,dog,2\na.png,eel,3\n")
    with pytest.raises(DataSourceError, match="3 label names but the model has 2 classes"):
        Manifest(tmp_path / "many.csv", num_classes=2)


def test_manifest_ids_encoding_and_column_errors(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (tmp_path / "bom.csv").write_bytes("path,label\na.png,1\n".encode("utf-8-sig"))  # Excel's "CSV UTF-8"
    assert [r.label for r in Manifest(tmp_path / "bom.csv")] == [1]
    (tmp_path / "semi.csv").write_text("path;label\na.png;1\n")
    with pytest.raises(DataSourceError, match=r"row 1 has the columns \['path;label'\].*comma-separated"):
        Manifest(tmp_path / "semi.csv")
    (tmp_path / "dup.csv").write_text("path,id\na.png,a\na.png,a\na.png,b\n")
    with pytest.raises(DataSourceError, match=r"repeats ids \['a'\]"):
        Manifest(tmp_path / "dup.csv")
    (tmp_path / "again.csv").write_text("path\na.png\na.png\n")  # the same file twice, no ids: no row is lost
    assert [r.id for r in Manifest(tmp_path / "again.csv")] == ["a.png", "a.png#2"]


def test_jsonl_manifest(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    lines = [{"path": "a.png", "label": 2, "id": "first", "tags": ["x"]}, {"path": "a.png"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    recs = list(open_source(tmp_path / "m.jsonl"))
    assert recs[0].id == "first" and recs[0].label == 2 and recs[0].metadata == {"tags": ["x"]}
    assert recs[1].label is None and recs[1].ok
    (tmp_path / "bad.jsonl").write_text('{"path": "a.png"}\n{oops\n')
    with pytest.raises(DataSourceError, match="bad.jsonl:2"):
        Manifest(tmp_path / "bad.jsonl")
    (tmp_path / "nopath.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(DataSourceError, match="'path' column"):
        Manifest(tmp_path / "nopath.csv")


def test_open_source_errors(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        open_source(tmp_path / "nothing")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataSourceError, match="cannot tell"):
        open_source(tmp_path / "x.parquet")
    with pytest.raises(DataSourceError, match="unknown demo data set"):
        open_source("demo:cifar")


def test_tensor_source_layouts():
    hwc = np.zeros((2, 5, 6, 3), dtype=np.uint8)
    hwc[1] = 255
    src = TensorSource(hwc, labels=[0, -1], metadata={"site": ["a", "b"]})
    recs = list(src)
    assert recs[0].image.shape == (3, 5, 6) and recs[1].image.max() == 1.0
    assert recs[1].label is None and recs[1].metadata == {"site": "b"}
    grey = TensorSource(torch.rand(4, 7, 7))  # (N, H, W): N grey images
    assert len(grey) == 4 and next(iter(grey)).image.shape == (3, 7, 7)
    # (3, H, W) is one RGB image as often as three grey ones: refused with both ways out, not guessed
    with pytest.raises(DataSourceError, match=r"one RGB image or three grey ones: pass x.unsqueeze\(0\)"):
        TensorSource(torch.rand(3, 7, 7))
    assert len(TensorSource(torch.rand(3, 7, 7).unsqueeze(0))) == 1
    # a repeated id would keep one result for two images: refused
    with pytest.raises(DataSourceError, match=r"ids must be unique, 1 repeat \(e.g. \['a'\]\)"):
        TensorSource(torch.rand(3, 3, 4, 4), ids=["a", "a", "b"])
    with pytest.raises(DataSourceError, match=r"in \[0, 1\]"):
        TensorSource(torch.full((1, 3, 4, 4), 2.0))
    with pytest.raises(DataSourceError, match="labels"):
        TensorSource(torch.rand(2, 3, 4, 4), labels=[1])


def test_iter_batches_bounded_resized_and_errors_ride_along(tmp_path):
    good = _bad_files(tmp_path / "f")
    _png(tmp_path / "f" / "big.png", np.full((12, 9, 3), 255, dtype=np.uint8))
    batches = list(iter_batches(FlatFolder(tmp_path / "f"), batch_size=1, size=(6, 6)))
    assert all(isinstance(b, Batch) and len(b) <= 1 for b in batches)
    assert sum(len(b) for b in batches) == 2 and sum(len(b.errors) for b in batches) == 3
    images = torch.cat([b.images for b in batches if len(b)])
    assert images.shape == (2, 3, 6, 6) and images.max() == 1.0
    assert all(int(l) == -1 for b in batches for l in b.labels)
    src = TensorSource(torch.rand(10, 3, 4, 4), labels=list(range(10)))
    sizes = [len(b) for b in iter_batches(src, batch_size=4)]
    assert sizes == [4, 4, 2]
    with pytest.raises(ValueError):
        next(iter_batches(src, batch_size=0))
    assert good.exists()


def test_linked_folders_are_read_hidden_folders_skipped_and_a_broken_link_is_an_error_row(tmp_path):
    import os

    from cfx.core.data import open_source

    def save(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(path)

    elsewhere = tmp_path / "elsewhere"
    for i in range(3):
        save(elsewhere / f"e{i}.png")
    flat = tmp_path / "flat"
    save(flat / "a.png")
    save(flat / ".thumbs" / "t.png")                       # a thumbnail cache: not data
    os.symlink(elsewhere, flat / "linked")                  # a linked sub-folder: its 3 images count
    os.symlink(tmp_path / "gone.png", flat / "broken.png")  # a link to a file that is gone: an error row
    os.symlink(flat, flat / "again")                        # a link back to the folder itself: read once
    source = open_source(str(flat))
    records = list(source)
    ids = sorted(r.id for r in records)
    assert "a.png" in ids and "broken.png" in ids and not any(".thumbs" in i for i in ids)
    assert ids == ["a.png", "broken.png", "linked/e0.png", "linked/e1.png", "linked/e2.png"]
    assert [r.id for r in records if r.error is not None] == ["broken.png"]
    labelled = tmp_path / "labelled"
    save(labelled / "1" / "x.png")
    save(labelled / "1" / ".thumbs" / "t.png")
    os.symlink(elsewhere, labelled / "0")                   # a linked class folder
    folder = open_source(str(labelled), num_classes=2)
    assert sorted((r.id, r.label) for r in folder) == [
        ("0/e0.png", 0), ("0/e1.png", 0), ("0/e2.png", 0), ("1/x.png", 1)]


def test_a_single_image_file_is_a_source_of_one(tmp_path):
    from cfx.core.data import open_source

    Image.fromarray(np.full((8, 6, 3), 200, np.uint8)).save(tmp_path / "one image.png")
    (tmp_path / "other.png").write_bytes(b"")
    records = list(open_source(str(tmp_path / "one image.png")))
    assert [(r.id, r.label, r.error) for r in records] == [("one image.png", None, None)]
    np.testing.assert_allclose(records[0].image.numpy(), 200 / 255, atol=1e-6)


def test_a_file_name_that_is_not_utf8_is_read_and_written_with_its_bytes_escaped(tmp_path):
    # A name with the byte 0xff (not UTF-8) reached scores.csv, summary.json and run.sqlite as a lone surrogate, and
    # cfx trust, explain and audit stopped after scoring with "surrogates not allowed".
    import io
    import os
    from pathlib import Path

    from click.testing import CliRunner

    from cfx.cli import main

    folder = tmp_path / "data"
    (folder / "cl\xe9").mkdir(parents=True)  # a class folder of plain non-ASCII text stays as it is
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(buffer, format="PNG")
    with open(os.path.join(os.fsencode(folder / "cl\xe9"), b"x\xff.png"), "wb") as f:  # the raw bytes as the name
        f.write(buffer.getvalue())
    Image.fromarray(np.full((16, 16, 3), 160, dtype=np.uint8)).save(folder / "cl\xe9" / "plain.png")
    flat = FlatFolder(folder)
    assert sorted(flat.ids()) == ["cl\xe9/plain.png", "cl\xe9/x\\xff.png"]
    records = list(flat)
    assert all(r.error is None and r.image is not None for r in records)  # read from the real name
    assert sorted(r.id for r in records) == sorted(flat.ids())
    factories = Path(__file__).parent / "factories.py"
    r = CliRunner().invoke(main, ["trust", "--model", f"python:{factories}:tiny_cnn", "--data", str(folder),
                                  "--out", str(tmp_path / "t"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "cl\xe9/x\\xff.png" in (tmp_path / "t" / "scores.csv").read_text(encoding="utf-8")
