"""ONNX export of a channel-pruned model (issue #41 point 3): ONNX Runtime's outputs equal
torch's within 1e-4 at another batch size than the example's, and the command-line helper
prunes by an export's groups and writes the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nni_prune_tuners.trial import channel_groups, count_flops, prune_channels
from nni_prune_tuners.trial.onnx import TOLERANCE, export_onnx, main, onnx_feed, onnx_session
from trials import models

pytest.importorskip("onnxruntime")  # the onnx extra (requirements.lock installs it)
pytest.importorskip("onnxscript")


def _pruned_resnet() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = models.ZOO["resnet_digits"]().eval()
    x = torch.randn(1, *model.input_shape)
    ratios = {g.name: 0.4 for g in channel_groups(model, x)}
    pruned = prune_channels(copy.deepcopy(model), ratios, x).eval()
    assert sum(count_flops(pruned, x).values()) < 0.7 * sum(count_flops(model, x).values())
    return pruned, x


def test_the_onnx_model_computes_what_torch_does(tmp_path: Path) -> None:
    pruned, x = _pruned_resnet()
    path = export_onnx(pruned, x, tmp_path / "resnet.onnx")
    session = onnx_session(path)
    batch = torch.randn(16, *x.shape[1:])  # the batch dimension is dynamic
    (got,) = session.run(None, onnx_feed(session, batch))
    with torch.inference_mode():
        expected = pruned(batch).numpy()
    assert got.shape == expected.shape == (16, 10)
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    assert np.max(np.abs(expected)) > 10 * TOLERANCE  # outputs that say something


def test_the_helper_prunes_by_an_exports_groups(tmp_path: Path) -> None:
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"groups": {"stem": 0.5, "layer3.0.conv1": 0.75}}))
    out = tmp_path / "m.onnx"
    assert main(["--model", "trials.models:resnet_digits", "--groups", f"@{best}",
                 "--input-shape", "1,16,16", "--out", str(out)]) == 0
    import onnx

    graph = onnx.load(str(out)).graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    assert [8, 1, 3, 3] in shapes.values()  # the stem keeps 8 of 16 channels


def test_the_helper_says_what_it_needs_in_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--input-shape", "1,16,16", "--out", str(tmp_path / "m.onnx")])
    assert exit_.value.code == 2
    assert "give either --model MOD:FACTORY or --module PATH" in capsys.readouterr().err
