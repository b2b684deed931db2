"""ONNX export with pooling and normalisation in the graph, and the PyTorch-free runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from twinnet.calibration import fit_calibrator
from twinnet.cli import app
from twinnet.errors import TwinnetError
from twinnet.export import export_onnx
from twinnet.runtime import OnnxSiameseModel

from conftest import synthetic_pairs

TEXTS = ["sony tv xr100", "xr100 tv set from sony", "lg speaker kd250 " * 12, "Grüße 東京 🙂", "a"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    from conftest import make_tiny_encoder
    from twinnet.model import SiameseModel

    model = SiameseModel(make_tiny_encoder(tokenizer, pooling="mean"))
    pairs = synthetic_pairs(12)
    model.calibration_ = fit_calibrator(model.score_pairs(pairs), pairs.labels)
    folder = model.save(tmp_path_factory.mktemp("export") / "model")
    report = export_onnx(folder, quantize="int8")
    return model, folder, report


def test_fp32_graph_gives_the_final_embedding(exported):
    model, folder, report = exported
    assert report["fp32"]["max_abs_diff"] <= 1e-4
    onnx_model = OnnxSiameseModel.load(folder)
    got, want = onnx_model.embed(TEXTS), model.embed(TEXTS)
    assert np.abs(got - want).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalisation is in the graph
    # truncation is counted the same way as the PyTorch tokenizer path
    assert onnx_model.last_truncation == model.last_truncation
    assert onnx_model.last_truncation.truncated == 1


def test_onnx_decisions_match_pytorch(exported):
    model, folder, _ = exported
    onnx_model = OnnxSiameseModel.load(folder)
    pairs = synthetic_pairs(6, seed=3)
    a = model.verify(list(pairs.left), list(pairs.right))
    b = onnx_model.verify(list(pairs.left), list(pairs.right))
    assert [d.same for d in a] == [d.same for d in b]
    np.testing.assert_allclose([d.probability for d in a], [d.probability for d in b], atol=1e-3)


def test_int8_graph_stays_close(exported):
    model, folder, report = exported
    assert report["int8"]["min_cosine"] >= 0.99
    int8 = OnnxSiameseModel.load(folder, quantized=True)
    cosines = np.sum(int8.embed(TEXTS) * model.embed(TEXTS), axis=1)
    assert cosines.min() >= 0.98  # beyond the parity sample too
    written = json.loads((folder / "onnx" / "export.json").read_text())
    assert written["int8"]["file"] == "model_int8.onnx" and written["normalized"] is True


def test_missing_graph_is_a_clear_error(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "plain")
    with pytest.raises(TwinnetError, match="twinnet export"):
        OnnxSiameseModel.load(folder)


def test_runtime_works_without_pytorch(exported):
    """The exported model decides without torch, transformers or sentence-transformers importable."""
    model, folder, _ = exported
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "transformers", "sentence_transformers"):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        from twinnet import OnnxSiameseModel
        m = OnnxSiameseModel.load({str(folder)!r})
        d = m.verify("sony tv xr100", "xr100 tv set from sony")
        print(json.dumps({{"score": d.score, "same": d.same, "torch": "torch" in sys.modules}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["torch"] is False
    assert answer["score"] == pytest.approx(model.verify("sony tv xr100", "xr100 tv set from sony").score, abs=1e-4)


def test_cli_export_and_onnx_backend(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "m")
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(folder), "--format", "onnx"])
    assert done.exit_code == 0, done.output
    assert (folder / "onnx" / "model.onnx").exists() and not (folder / "onnx" / "model_int8.onnx").exists()
    bad = runner.invoke(app, ["export", str(folder), "--format", "tflite"])
    assert bad.exit_code == 2 and "onnx" in bad.output
    records = tmp_path / "records.csv"
    records.write_text("id,text\n1,sony tv xr100\n2,lg speaker\n")
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.npy"
        done = runner.invoke(app, ["embed", str(folder), str(records), "-o", str(out), "--backend", backend])
        assert done.exit_code == 0, done.output
    np.testing.assert_allclose(np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy"), atol=1e-4)
    missing = runner.invoke(app, ["embed", str(folder), str(records), "-o", str(tmp_path / "x.npy"),
                                  "--backend", "onnx-int8"])
    assert missing.exit_code == 2 and "--quantize int8" in missing.output
    unknown = runner.invoke(app, ["embed", str(folder), str(records), "-o", str(tmp_path / "y.npy"),
                                  "--backend", "tensorrt"])
    assert unknown.exit_code == 2 and "torch-bf16" in unknown.output and not (tmp_path / "y.npy").exists()


def test_cli_torch_bf16_backend_matches_fp32(tmp_path, tiny_model, monkeypatch):
    import twinnet.model as model_module

    monkeypatch.setattr(model_module, "bf16_cpu_supported", lambda: True)  # emulated where absent: slow, same math
    folder = tiny_model.save(tmp_path / "m")
    records = tmp_path / "records.csv"
    records.write_text("id,text\n1,sony tv xr100\n2,lg speaker\n3,bose soundlink mini\n")
    runner = CliRunner()
    for backend in ("torch", "torch-bf16"):
        done = runner.invoke(app, ["embed", str(folder), str(records), "-o", str(tmp_path / f"{backend}.npy"),
                                   "--backend", backend])
        assert done.exit_code == 0, done.output
    low, full = np.load(tmp_path / "torch-bf16.npy"), np.load(tmp_path / "torch.npy")
    assert low.shape == full.shape == (3, tiny_model.embedding_dim)
    assert float((low * full).sum(1).min()) >= 0.99 and not np.array_equal(low, full)


def test_parity_check_feeds_the_serialised_text(tmp_path, tokenizer):
    """With split_codes the graph must see 'kdl 40 v 5100', as the runtime does, not the raw 'KDL-40V5100'."""
    from conftest import make_tiny_encoder
    from twinnet.data import RecordSerializer
    from twinnet.model import SiameseModel

    model = SiameseModel(make_tiny_encoder(tokenizer), serializer=RecordSerializer(split_codes=True))
    folder = model.save(tmp_path / "codes")
    records = ["sony KDL-40V5100 lcd", {"name": "samsung ln40b650", "price": "999"}]
    report = export_onnx(folder, sample=records)
    assert report["fp32"]["max_abs_diff"] <= 1e-4 and report["sample_size"] == 2
    runtime = OnnxSiameseModel.load(folder)
    assert runtime.fingerprint() == model.fingerprint()
    np.testing.assert_allclose(runtime.embed(records), model.embed(records), atol=1e-4)
