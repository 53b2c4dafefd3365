import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cfx.cli import main

FACTORIES = Path(__file__).parent / "factories.py"


def test_help_reads_well():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "cfx demo" in result.output and "inspect" in result.output
    result = CliRunner().invoke(main, ["inspect", "--help"])
    assert "--image-size" in result.output and "torchscript:PATH" in result.output


def test_inspect_model_and_folder_with_broken_files(tmp_path):
    data = tmp_path / "data"
    for cls in ("a", "b", "c", "d"):
        (data / cls).mkdir(parents=True)
        Image.fromarray(np.full((40, 40, 3), 100, dtype=np.uint8)).save(data / cls / "ok.png")
    (data / "b" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["inspect", "--model", f"python:{FACTORIES}:tiny_cnn", "--image-size", "32",
                                       "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["num_classes"] == 4 and summary["model"]["head"] == "fc"
    assert summary["model"]["class_names"] == ["a", "b", "c", "d"]  # from the ImageFolder's sub-folders
    assert summary["data"]["images"] == 4 and summary["data"]["errors"] == 1
    assert summary["data"]["error_records"][0]["id"] == "b/broken.png"
    assert "1 unreadable" in result.output


def test_inspect_checks_the_normalisation_on_the_first_batch(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["inspect", "--model", f"python:{FACTORIES}:bn_cnn", "--data", str(data),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    check = json.loads((out / "summary.json").read_text())["data"]["input_check"]
    assert check["layer"] == "1" and check["images"] == 6 and check["channels"] == 4
    assert "inputs" in result.output and "first batch-norm layer (1)" in result.output
    # the untrained layer kept mean 0 and variance 1, far from these inputs: inspect ranks common normalisations
    assert check["suspicious"]
    names = [c["name"] for c in check["candidates"]]
    assert sorted(names) == sorted(["imagenet", "inception (x - 0.5) / 0.5", "none (pixels in [0, 1])", "clip"])
    # cfx trust keeps the same check in its summary
    r = CliRunner().invoke(main, ["trust", "--model", f"python:{FACTORIES}:bn_cnn", "--data", str(data), "--out",
                                  str(tmp_path / "trust")])
    assert r.exit_code == 0, r.output
    kept = json.loads((tmp_path / "trust" / "summary.json").read_text())["input_check"]
    assert kept == {k: v for k, v in check.items() if k != "candidates"}
    # a model without batch norm has nothing to check against
    result = CliRunner().invoke(main, ["inspect", "--model", f"python:{FACTORIES}:tiny_cnn", "--data", str(data),
                                       "--out", str(out)])
    assert "input_check" not in json.loads((out / "summary.json").read_text())["data"]


def test_bad_spec_is_a_one_line_error_not_a_traceback():
    result = CliRunner().invoke(main, ["inspect", "--model", "torchscript:/no/such/file.pt"])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["inspect", "--model", f"python:{FACTORIES}:tiny_cnn", "--mean", "a,b"])
    assert result.exit_code == 2 and "comma-separated numbers" in result.output


@pytest.mark.slow
def test_demo_command_writes_summary(tmp_path, digits_models):
    # the digits alone (the shapes' cause tables take a minute; .ci/run runs the whole demo as its set-up step)
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--datasets", "digits", "--explain-per-cause", "5", "--out", str(out),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    digits = summary["datasets"]["digits"]
    assert digits["loaded_from_cache"] and digits["splits"]["test"]["accuracy"] >= 0.95
    assert set(digits["causes"]) == {"spatial", "brightness", "contrast", "saturation", "noise", "pixelation", "blur"}
    assert len(digits["causes"]["noise"]["test"]) == 6
    assert digits["causes"]["saturation"]["test"] is None  # grey images
    assert digits["explanations"] and digits["review"]
    assert "test split under each cause" in result.output
    assert (out / "digits" / "report.html").is_file()


def test_demo_rejects_unknown_dataset(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--datasets", "cifar", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "unknown demo data set" in result.output


def test_trust_lists_its_scores():
    result = CliRunner().invoke(main, ["trust", "--list-methods"])
    assert result.exit_code == 0
    assert "gradtrust" in result.output and "parce" in result.output and "needs cfx fit" in result.output


def test_an_output_folder_that_cannot_be_written_or_a_missing_device_fails_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    for command in (["trust"], ["fit", "--train", "demo:digits:calibration"], ["explain"], ["audit"]):
        data = [] if command[0] == "fit" else ["--data", "demo:digits:test"]
        r = CliRunner().invoke(main, [*command, "--model", f"python:{FACTORIES}:tiny_cnn", *data, "--out",
                                      str(tmp_path / "afile" / "sub")])
        assert r.exit_code == 2 and "is a file, not a folder" in r.output and "Traceback" not in r.output, r.output
    missing = [("banana", "is not a device")] + ([] if torch.cuda.is_available() else [("cuda", "no CUDA GPU")])
    for device, says in missing:
        r = CliRunner().invoke(main, ["inspect", "--model", f"python:{FACTORIES}:tiny_cnn", "--device", device])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output


def test_a_second_process_writing_the_same_folder_is_refused_until_the_first_is_gone(tmp_path):
    """Two cfx runs on one --out would write into (or, with --restart, delete) a store the other is using: the
    second is refused while the first holds the folder, and a killed first one frees it (the lock dies with it)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cfx.core.runstore import RunStore\n"
                               f"store = RunStore({str(out)!r}, {{'a': 1}})\nprint('ready', flush=True)\n"
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        args = ["explain", "--model", f"python:{FACTORIES}:tiny_cnn", "--data", "demo:digits:test", "--out",
                str(out), "--restart", "--quiet"]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and "another cfx process is writing to" in r.output, r.output
        assert (out / "run.sqlite").exists()  # --restart did not delete the store under the first process
    finally:
        holder.kill()
        holder.wait()
    from cfx.core.runstore import RunStore

    RunStore(out, {"b": 2}, restart=True).close()  # free again once the holder is gone


def test_warnings_are_one_line_and_normalisation_needs_both_mean_and_std():
    r = CliRunner().invoke(main, ["inspect", "--model", f"python:{FACTORIES}:softmax_cnn", "--image-size", "16"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if "probabilities" in line]
    assert lines and lines[0].startswith("warning: the model's outputs look like probabilities")
    assert "warnings.warn" not in r.output and "UserWarning" not in r.output
    assert not any(".py:" in line and "--model" not in line and not line.startswith("model") for line in
                   r.output.splitlines())  # no "file.py:123: UserWarning" source location
    r = CliRunner().invoke(main, ["inspect", "--model", f"python:{FACTORIES}:tiny_cnn", "--std", "0.5,0.5,0.5"])
    assert r.exit_code == 2 and "give --mean and --std together" in r.output
