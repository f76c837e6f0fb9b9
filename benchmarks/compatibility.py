"""Which architectures users bring work with Level, AGP and ``channel``: docs/compatibility.md.

``python -m benchmarks.compatibility`` builds tiny random-weight configurations of HuggingFace
BERT, GPT-2, LLaMA (grouped-query attention), ViT, ResNet, ConvNeXt and Swin, of torch's
``nn.TransformerEncoder`` and of the zoo (:data:`trials.models.ZOO`), and for each records:

- the prunable layers found against those expected, counted independently: every parameter of
  two or more dimensions whose name ends in ``weight``, embeddings excepted;
- Level and AGP: the masks reach the target (0.5 of every layer) and survive a training step;
- ``channel``: :func:`~nni_prune_tuners.trial.channel_groups` and
  :func:`~nni_prune_tuners.trial.prune_channels` at a uniform group sparsity that removes half the
  layers' FLOPs by the profile's prediction; the FLOPs removed measured independently (every
  multiply of the forward, attention products included, by ``torch.utils.flop_counter``) and
  the latency ratio pruned / dense (torch CPU, one thread, mean of a few repeats);
- the reason for each "no" (the exception, on one line).

Writes ``results/compatibility.json`` and ``results/compatibility.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_logger = logging.getLogger(__name__)

TARGET = 0.5
#: Batch of the example inputs (and of the latency timing).
BATCH = 4
REPEATS = 5

Inputs = Any
Build = Callable[[], tuple[nn.Module, Inputs]]


def _tokens(vocab: int, length: int = 16) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, vocab, (BATCH, length),
                                       generator=torch.Generator().manual_seed(0))}


def _pixels(size: int) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(BATCH, 3, size, size,
                                        generator=torch.Generator().manual_seed(0))}


def _hf(name: str) -> tuple[nn.Module, Inputs]:
    """A tiny random-weight HuggingFace model and its keyword inputs."""
    import transformers as tf

    text: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                            "intermediate_size": 64, "vocab_size": 100}
    vision: dict[str, Any] = {"num_labels": 10}
    cfg: Any
    if name == "hf_bert":
        return tf.BertForSequenceClassification(tf.BertConfig(**text, **vision)), _tokens(100)
    if name == "hf_gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100, n_positions=32,
                            bos_token_id=0, eos_token_id=0)
        return tf.GPT2LMHeadModel(cfg), _tokens(100)
    if name == "hf_llama_gqa":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**text, num_key_value_heads=2)), _tokens(100)
    if name == "hf_vit":
        cfg = tf.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=64, **vision)
        return tf.ViTForImageClassification(cfg), _pixels(16)
    if name == "hf_resnet":
        cfg = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                              layer_type="basic", **vision)
        return tf.ResNetForImageClassification(cfg), _pixels(32)
    if name == "hf_convnext":
        cfg = tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], **vision)
        return tf.ConvNextForImageClassification(cfg), _pixels(32)
    if name == "hf_swin":
        cfg = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                            num_heads=[1, 2], window_size=4, **vision)
        return tf.SwinForImageClassification(cfg), _pixels(32)
    raise ValueError(f"unknown architecture {name!r}")


class _Encoder(nn.Module):
    """torch's ``nn.TransformerEncoder`` (two layers) with a classifier on the mean token."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def _torch_encoder() -> tuple[nn.Module, Inputs]:
    return _Encoder(), torch.randn(BATCH, 16, 32, generator=torch.Generator().manual_seed(0))


def _zoo(name: str) -> tuple[nn.Module, Inputs]:
    from trials.models import ZOO

    model = ZOO[name]()
    given: Any = model.input_shape
    shape = tuple(int(d) for d in given)
    return model, torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(0))


def architectures() -> dict[str, Build]:
    """Every architecture of the table by name: a builder of (model, example inputs)."""
    from trials.models import ZOO

    builds: dict[str, Build] = {name: functools.partial(_hf, name) for name in (
        "hf_bert", "hf_gpt2", "hf_llama_gqa", "hf_vit", "hf_resnet", "hf_convnext", "hf_swin")}
    builds["torch_transformer_encoder"] = _torch_encoder
    builds.update({f"zoo_{name}": functools.partial(_zoo, name) for name in ZOO})
    return builds


def expected_layers(model: nn.Module) -> int:
    """Weights a user calls layers, counted without the package: every parameter of two or more
    dimensions named ``weight`` or ``*_weight`` (attention projections), embeddings excepted."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for name, param in module.named_parameters(recurse=False):
            count += int(param.dim() >= 2 and (name == "weight" or name.endswith("_weight")))
    return count


def total_flops(model: nn.Module, inputs: Inputs) -> int:
    """Every FLOP of one forward (matmuls, convolutions, attention products), by torch's own
    ``FlopCounterMode``: independent of the package's per-layer count."""
    from nni_prune_tuners.trial.inputs import call_model

    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():  # autograd on: torch's fused encoder paths count nothing
        call_model(model.eval(), inputs)
    return int(counter.get_total_flops())


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    values = list(output.values()) if isinstance(output, Mapping) else list(output)
    return next(v for v in values if isinstance(v, torch.Tensor))


def _why(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:160]


def try_masks(build: Build, method: str) -> dict[str, Any]:
    """Level or AGP at ``TARGET`` on every layer, a training step, the measured sparsity."""
    from nni_prune_tuners.trial import Pruner
    from nni_prune_tuners.trial.inputs import call_model

    model, inputs = build()
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        layers = _layer_names(model)
        params = {"prune_method": {"_name": method,
                                   **{f"{name}_sparsity": TARGET for name in layers}}}
        pruner = Pruner(model, params, epochs=2, optimizer=optimizer, example_inputs=inputs)
        for epoch in range(2):
            pruner.on_epoch_start(epoch)
            model.train()
            optimizer.zero_grad()
            _first_tensor(call_model(model, inputs)).float().pow(2).mean().backward()
            optimizer.step()
        sparsity = pruner.sparsity()
    except Exception as exc:  # any failure is a "no" with its reason
        return {"ok": False, "reason": _why(exc)}
    ok = abs(sparsity - TARGET) < 1e-3
    return {"ok": ok, "sparsity": sparsity,
            **({} if ok else {"reason": f"sparsity {sparsity:.4f}, not {TARGET}"})}


def _layer_names(model: nn.Module) -> list[str]:
    from nni_prune_tuners.trial import prunable_layers

    return list(prunable_layers(model))


def _uniform_for(profile: Any, target: float) -> dict[str, float]:
    """The uniform group sparsity (capped per group at (n-1)/n) removing ``target`` of the
    profile's FLOPs, by bisection on the prediction."""
    groups = profile.channel_groups
    dense = profile.channel_flops({})

    def at(s: float) -> dict[str, float]:
        return {name: min(s, (group.channels - 1) / group.channels) for name, group in groups.items()}

    low, high = 0.0, 0.999
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if 1 - profile.channel_flops(at(mid)) / dense < target else (low, mid)
    return at(high)


def try_channel(build: Build, *, latency: bool) -> dict[str, Any]:
    """``channel`` at half the layers' FLOPs; FLOPs removed measured independently; latency."""
    from nni_prune_tuners.profile import parse_profile
    from nni_prune_tuners.trial import channel_groups, prune_channels
    from nni_prune_tuners.trial.profile import profile_model

    model, inputs = build()
    model.eval()
    try:
        if not channel_groups(model, inputs):
            return {"ok": False, "reason": "no channel group found"}
        profile = parse_profile(profile_model(model, name="m", example_inputs=inputs, channel=True))
        sparsities = _uniform_for(profile, TARGET)
        predicted = 1 - profile.channel_flops(sparsities) / profile.channel_flops({})
        dense = copy.deepcopy(model)
        pruned = prune_channels(model, sparsities, inputs).eval()
        removed = 1 - total_flops(pruned, inputs) / total_flops(dense, inputs)
    except Exception as exc:  # any failure is a "no" with its reason
        return {"ok": False, "reason": _why(exc)}
    if removed <= 0:
        return {"ok": False, "reason": f"nothing removed (predicted {predicted:.3f})"}
    result: dict[str, Any] = {"ok": True, "groups": len(profile.channel_groups),
                              "target": TARGET, "predicted": predicted, "removed": removed}
    if latency:
        result["latency_ratio"] = latency_ratio(dense, pruned, inputs)
    return result


def latency_ratio(dense: nn.Module, pruned: nn.Module, inputs: Inputs) -> float:
    """Mean pruned / dense forward time, one CPU thread, ``REPEATS`` interleaved repeats."""
    from nni_prune_tuners.trial.inputs import call_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times: dict[str, list[float]] = {"dense": [], "pruned": []}
        with torch.inference_mode():
            for _ in range(REPEATS + 1):  # the first round warms up, not counted
                for key, model in (("dense", dense), ("pruned", pruned)):
                    start = time.perf_counter()
                    for _ in range(10):
                        call_model(model, inputs)
                    times[key].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.mean(times["pruned"][1:]) / statistics.mean(times["dense"][1:])


def check_architecture(
    name: str, build: Build, *, channel: bool = True, latency: bool = True
) -> dict[str, Any]:
    """One row: layers found and expected, and what Level, AGP and ``channel`` did (without
    ``channel``: not tried, a "no" saying so)."""
    from nni_prune_tuners.trial.layers import count_flops

    torch.manual_seed(0)
    model, inputs = build()
    found = _layer_names(model)
    flops = count_flops(model, inputs)
    return {
        "architecture": name, "class": type(model).__name__, "layers_found": len(found),
        "layers_expected": expected_layers(model),
        "layers_without_flops": [layer for layer in found if layer not in flops],
        "level": try_masks(build, "level"), "agp": try_masks(build, "agp"),
        "channel": (try_channel(build, latency=latency) if channel
                    else {"ok": False, "reason": "not tried"}),
    }


def _cell(result: Mapping[str, Any]) -> str:
    return "yes" if result["ok"] else f"no: {result['reason']}"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of docs/compatibility.md."""
    lines = ["| architecture | layers found / expected | level | agp | channel | FLOPs removed "
             "(predicted), target 0.5 | latency ratio |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        channel = row["channel"]
        removed = (f"{channel['removed']:.3f} ({channel['predicted']:.3f})" if channel["ok"]
                   else "-")
        ratio = f"{channel['latency_ratio']:.2f}" if "latency_ratio" in channel else "-"
        lines.append(f"| {row['architecture']} | {row['layers_found']} / "
                     f"{row['layers_expected']} | {_cell(row['level'])} | {_cell(row['agp'])} | "
                     f"{_cell(channel)} | {removed} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every architecture (or ``--only``), write the JSON and markdown, print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compatibility")
    parser.add_argument("--only", help="comma list of architectures (default: all)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency timing")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    builds = architectures()
    chosen = args.only.split(",") if args.only else list(builds)
    rows = [check_architecture(name, builds[name], latency=not args.no_latency) for name in chosen]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "batch": BATCH, "repeats": REPEATS, "threads": 1,
            "target": TARGET}
    (args.out / "compatibility.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    markdown = table(rows)
    (args.out / "compatibility.md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
