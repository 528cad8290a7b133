"""genkd export: from_pretrained(save_pretrained(G)) gives the same samples; pushing offline fails in one line."""
import json

import numpy as np
import pytest
import torch

import genkd  # noqa: F401  (before anything that imports torchvision)
from genkd import export, sample
from genkd.checkpoint import load_generator
from genkd.export import ExportError, GenkdGenerator


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from test_sample import make_run

    return make_run(tmp_path_factory.mktemp("run") / "tiny")


def test_from_pretrained_of_save_pretrained_gives_identical_samples(run_dir, tmp_path):
    out = export.main([str(run_dir), "--out", str(tmp_path / "exported")])
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 10 and config["model"]["g_width"] == 4
    loaded = GenkdGenerator.from_pretrained(str(out), strict=True).eval()
    original = load_generator(run_dir).generator
    z, y = torch.randn(16, original.z_dim, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    with torch.no_grad():
        assert torch.equal(loaded(z, y), original(z, y))
    # genkd sample reads an exported folder as it reads the run
    common = ["--num", "9", "--device", "cpu", "--seed", "5"]
    sample.main([str(out), *common, "--out", str(tmp_path / "from_export.npz")])
    sample.main([str(run_dir), *common, "--out", str(tmp_path / "from_run.npz")])
    assert np.array_equal(np.load(tmp_path / "from_export.npz")["arr_0"], np.load(tmp_path / "from_run.npz")["arr_0"])


def test_push_without_a_reachable_hub_is_one_line(run_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    with pytest.raises(ExportError, match=r"the export in .* is complete but pushing to me/tiny failed") as error:
        export.export(run_dir, tmp_path / "exported", push_to_hub="me/tiny")
    assert "\n" not in str(error.value) and (tmp_path / "exported" / "model.safetensors").is_file()
