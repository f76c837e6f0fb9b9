"""Contract 11: example inputs a user gives, and every weight a user calls a layer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nni_prune_tuners.trial import Pruner, count_flops, prunable_layers
from nni_prune_tuners.trial import profile as tp
from nni_prune_tuners.trial.inputs import batch_size, call_model
from nni_prune_tuners.trial.layers import layer_weight, out_in_weight

transformers = pytest.importorskip("transformers")

USER_MODULE = '''
import torch
from torch import nn


class Lm(nn.Module):
    """Token ids in, logits out: an embedding, one attention, a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 50)

    def forward(self, input_ids, scale=1.0):
        x = self.embed(input_ids)
        return self.head(self.attn(x, x, x)[0] * scale)


def make():
    return Lm()


def tokens():
    return {"input_ids": torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))}


def positional():
    return (tokens()["input_ids"], 2.0)


def longer():
    return torch.zeros(1, 8, dtype=torch.long)


def floats():
    return torch.zeros(2, 6)


def not_inputs():
    return "tokens"


def broken():
    raise RuntimeError("no data here")
'''


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "lmmod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lmmod", raising=False)
    return tmp_path


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=20, n_positions=8,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def test_hf_conv1d_is_a_layer_viewed_as_out_in_with_its_flops() -> None:
    model = _gpt2()
    layers = prunable_layers(model)
    c_fc = layers["transformer.h.0.mlp.c_fc"]
    assert tuple(layer_weight(c_fc).shape) == (8, 32)  # stored [in, out]
    assert tuple(out_in_weight(c_fc).shape) == (32, 8)
    assert list(layers) == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                            "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", "lm_head"]
    flops = count_flops(model, {"input_ids": torch.zeros(3, 5, dtype=torch.long)})
    assert flops["transformer.h.0.attn.c_attn"] == 5 * 8 * 24
    assert flops["transformer.h.0.mlp.c_proj"] == 5 * 32 * 8
    profile = tp.profile_model(model, name="gpt2",
                               example_inputs={"input_ids": torch.zeros(1, 5, dtype=torch.long)})
    entry = next(e for e in profile["layers"] if e["name"] == "transformer.h.0.mlp.c_fc")
    assert entry["shape"] == [32, 8] and entry["flops"] == 5 * 8 * 32


@pytest.mark.parametrize("kdim", [None, 6])
def test_attention_projections_are_layers_with_flops(kdim: int | None) -> None:
    mha = nn.MultiheadAttention(8, 2, kdim=kdim, vdim=kdim, batch_first=True)
    model = nn.Module()
    model.add_module("attn", mha)
    model.forward = lambda q, k: mha(q, k, k)[0]  # type: ignore[method-assign]
    q, k = torch.randn(2, 5, 8), torch.randn(2, 7, kdim or 8)
    flops = count_flops(model, (q, k))
    if kdim is None:
        assert list(prunable_layers(model)) == ["attn.in_proj", "attn.out_proj"]
        assert flops == {"attn.in_proj": (5 + 7 + 7) * 8 * 8, "attn.out_proj": 5 * 8 * 8}
    else:
        assert list(prunable_layers(model)) == ["attn.q_proj", "attn.k_proj", "attn.v_proj",
                                                "attn.out_proj"]
        assert flops == {"attn.q_proj": 5 * 8 * 8, "attn.k_proj": 7 * 6 * 8,
                         "attn.v_proj": 7 * 6 * 8, "attn.out_proj": 5 * 8 * 8}


@pytest.mark.parametrize("method", ["level", "agp"])
def test_masks_of_attention_and_conv1d_hold_through_training(method: str) -> None:
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1,
                                    enable_nested_tensor=False)
    x = torch.randn(4, 5, 8)
    layers = list(prunable_layers(encoder))
    assert layers[:2] == ["layers.0.self_attn.in_proj", "layers.0.self_attn.out_proj"]
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.5, momentum=0.9)
    params = {"prune_method": {"_name": method, **{f"{n}_sparsity": 0.6 for n in layers}}}
    pruner = Pruner(encoder, params, epochs=3, optimizer=optimizer, example_inputs=x)
    for epoch in range(3):
        pruner.on_epoch_start(epoch)
        optimizer.zero_grad()
        encoder(x).pow(2).mean().backward()
        optimizer.step()
    in_proj = encoder.layers[0].self_attn.in_proj_weight
    kept_zero = round(0.6 * in_proj.numel())
    assert pruner.layer_sparsity()["layers.0.self_attn.in_proj"] == kept_zero / in_proj.numel()
    assert int((in_proj == 0).sum()) == kept_zero
    pruner.remove()


def test_batch_size_of_each_input_form() -> None:
    ids = torch.zeros(3, 7, dtype=torch.long)
    assert batch_size(ids) == batch_size((ids, 1.0)) == batch_size({"input_ids": ids}) == 3
    assert batch_size(torch.zeros(5)) == 1
    model = nn.Linear(7, 2)
    assert call_model(model, {"input": ids.float()}).shape == (3, 2)


@pytest.mark.parametrize("spec", ["lmmod:tokens", "lmmod:positional"])
def test_profile_with_example_inputs_counts_token_model_flops(user: Path, spec: str) -> None:
    out = user / "p.json"
    assert tp.main(["--model", "lmmod:make", "--example-inputs", spec, "--out", str(out)]) == 0
    flops = {e["name"]: e["flops"] for e in json.loads(out.read_text())["layers"]}
    assert flops == {"attn.in_proj": 6 * 16 * 48, "attn.out_proj": 6 * 16 * 16,
                     "head": 6 * 16 * 50}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--example-inputs", "nomod:tokens"], "cannot import 'nomod'"),
        (["--example-inputs", "lmmod:missing"], "'missing' in 'lmmod' is not a callable"),
        (["--example-inputs", "lmmod:not_inputs"], "returned str; expected a tensor"),
        (["--example-inputs", "lmmod:broken"], "raised RuntimeError: no data here"),
        (["--example-inputs", "lmmod:floats"], "the model refuses the inputs of --example-inputs"),
        (["--example-inputs", "lmmod:tokens", "--input-shape", "6"], "not both"),
    ],
)
def test_bad_example_inputs_are_one_line_before_any_work(
    user: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = tp.main(["--model", "lmmod:make", "--out", str(user / "p.json"), *argv])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (user / "p.json").exists()


@pytest.mark.parametrize(("spec", "status", "message"), [
    ("lmmod:floats", 2, "presearch: error: the model refuses the inputs of --example-inputs"),
    ("lmmod:longer", 2, "FLOPs on the example inputs but 4608 in the profile"),
    ("lmmod:tokens", 0, ""),
])
def test_presearch_checks_example_inputs_and_flops_first(
    user: Path, spec: str, status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from nni_prune_tuners.trial import presearch

    profile, space = user / "p.json", user / "s.json"
    assert tp.main(["--model", "lmmod:make", "--example-inputs", "lmmod:tokens", "--out",
                    str(profile), "--search-space", str(space), "--methods", "level"]) == 0
    (user / "evalmod.py").write_text("def score(model):\n    return 1.0\n")
    argv = ["--model", "lmmod:make", "--profile", str(profile), "--search-space", str(space),
            "--target", "0.5", "--weight-by", "flops", "--eval", "evalmod:score",
            "--example-inputs", spec, "--evaluations", "2", "--out", str(user / "o.json")]
    assert presearch.main(argv) == status
    assert message in capsys.readouterr().err
    assert (user / "o.json").exists() == (status == 0)
