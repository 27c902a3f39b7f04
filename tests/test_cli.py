"""The command line as users run it: output, JSON, exit codes, one-line errors, never a traceback."""

from __future__ import annotations

import json
import pickle
import zipfile

from tests.conftest import run_cli


def test_inspect_human_and_json(zoo):
    p = run_cli("inspect", str(zoo["sdxl_fp16"].path))
    assert p.returncode == 0, p.stderr
    assert "SDXL base" in p.stdout and "Components" in p.stdout and "CLIP-G" in p.stdout
    j = run_cli("inspect", "--json", str(zoo["sdxl_fp16"].path), str(zoo["lora_loha_sdxl"].path))
    data = json.loads(j.stdout)
    assert [d["family"] for d in data] == ["sdxl", "sdxl"]
    assert data[1]["lora"]["network"] == "LoHa"
    assert data[0]["metadata"]["modelspec"]["title"] == "zoo SDXL"


def _malicious_zip(path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("touch PWNED",))

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"state_dict": Evil()}, protocol=2))
        z.writestr("archive/version", "3\n")


def test_bad_inputs_give_one_line_and_nonzero_exit(tmp_path, zoo):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "trunc.safetensors").write_bytes(zoo["sd1_fp16"].path.read_bytes()[:5000])
    (tmp_path / "corrupt.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    _malicious_zip(tmp_path / "evil.ckpt")
    cases = {
        "missing.safetensors": "no such file",
        "empty.safetensors": "empty file",
        "trunc.safetensors": "truncated",
        "corrupt.ckpt": "corrupt zip",
        "evil.ckpt": "unsafe pickle: references posix.system",
    }
    for name, words in cases.items():
        p = run_cli("inspect", str(tmp_path / name), cwd=tmp_path)
        assert p.returncode == (2 if name.startswith("missing") else 1), (name, p.stdout, p.stderr)
        lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1, (name, p.stderr)
        assert "Traceback" not in p.stderr and name in lines[0] and words in lines[0]
    assert not (tmp_path / "PWNED").exists()


def test_many_files_report_the_bad_one_and_go_on(tmp_path, zoo):
    p = run_cli("inspect", "--brief", str(tmp_path / "nope.ckpt"), str(zoo["sd2_fp16"].path))
    assert p.returncode == 2  # a missing input is an input error (exit codes: README)
    assert "SD2.x" in p.stdout and "nope.ckpt" in p.stderr


def test_folder_of_models_expands(zoo):
    folder = zoo.build_all()["sd1_fp16"].path.parent
    p = run_cli("inspect", "--json", str(folder))
    data = json.loads(p.stdout)
    assert len(data) == len(zoo)
    assert {d["family"] for d in data} >= {"sd1", "sdxl", "flux_dev", "auraflow"}


def test_help_is_fast_and_lists_commands():
    p = run_cli("--help")
    assert p.returncode == 0 and "inspect" in p.stdout
