"""The zoo's text model: data shipped with Python, a Transformer that learns it, heads to search."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nni_prune_tuners.trial import channel_groups
from trials.data import DATA_VARIANTS, TEXT_MODULES, TEXT_WINDOW, stdlib_text_split
from trials.models import ZOO


def test_the_stdlib_text_split_is_balanced_and_its_splits_do_not_overlap() -> None:
    split = stdlib_text_split()
    assert DATA_VARIANTS["stdlib_text"] is stdlib_text_split
    assert split.image_shape == (TEXT_WINDOW,) == ZOO["text_stdlib"]().input_shape
    for y in (split.y_train, split.y_val, split.y_test):
        assert torch.bincount(y).tolist() == [len(y) // len(TEXT_MODULES)] * len(TEXT_MODULES)
    train = {tuple(row.tolist()) for row in split.x_train}
    repeated = sum(tuple(row.tolist()) in train for row in split.x_val)
    assert repeated < 0.05 * len(split.x_val)  # cut by position: only stock lines repeat
    assert float(split.x_train.max()) <= 127 and float(split.x_train.min()) >= 0


def test_the_text_model_trains_above_chance_in_two_epochs() -> None:
    split = stdlib_text_split()
    torch.manual_seed(0)
    model = ZOO["text_stdlib"]()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for batch in torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(1)).split(64):
            loss = F.cross_entropy(model(split.x_train[batch]), split.y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model.eval()(split.x_val).argmax(1) == split.y_val).float().mean().item()
    # chance is 0.25; its standard error on the ~1400 validation windows is about 0.012
    assert accuracy > 0.35, accuracy


def test_the_text_model_heads_and_mlps_are_channel_groups() -> None:
    torch.manual_seed(0)
    model = ZOO["text_stdlib"]().eval()
    groups = {g.name: (g.kind, g.channels) for g in channel_groups(model, torch.zeros(2, TEXT_WINDOW))}
    for i in range(2):
        assert groups[f"blocks.{i}.attn.q"] == ("heads", 4)
        assert groups[f"blocks.{i}.mlp.fc1"] == ("channels", 96)
