"""Small real contexts for the analysis tests: a zoo model, uint8 images, the trial's loss and batches."""

from __future__ import annotations

import pytest
import torch

from bench.analysis import AnalysisContext
from bench.data import DeviceLoader, Normalizer
from bench.data.trial import TrialData
from bench.models import create_model


@pytest.fixture(autouse=False)
def one_thread():
    """Small models on a shared 2-core machine: one intra-op thread avoids stalls between tiny ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_data(n: int = 48, size: int = 16, classes: int = 4, seed: int = 0) -> TrialData:
    gen = torch.Generator().manual_seed(seed)
    images = lambda: torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)  # noqa: E731
    labels = lambda: torch.randint(0, classes, (n,), generator=gen)  # noqa: E731
    return TrialData(train_x=images(), train_y=labels(), test_x=images(), test_y=labels(), num_classes=classes,
                     input_kind="image", input_shape=(3, size, size),
                     normalize=Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "cpu", image=True))


def tiny_model(name: str = "vit_ti", classes: int = 4, size: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "vit_ti":
        return create_model("vit_ti", num_classes=classes, img_size=size, depth=2, dim=32, heads=2)
    if name == "resnet18":
        return create_model("resnet18", num_classes=classes, img_size=size, width=8)
    raise ValueError(name)


def context(model: torch.nn.Module, data: TrialData, weight_decay: float = 0.05, epoch: int = 1) -> AnalysisContext:
    """What the trial worker hands an analysis: crop+flip training batches and its smoothed loss."""
    from bench.train import classification_loss

    def batches(batch_size: int):
        gen = torch.Generator().manual_seed(1)
        return DeviceLoader(data.train_x, data.train_y, batch_size, data.normalize, augment=["crop", "flip"],
                            generator=gen)

    return AnalysisContext(model=model, data=data, device=torch.device("cpu"), epoch=epoch,
                           config={"train": {"weight_decay": weight_decay, "label_smoothing": 0.1}},
                           train_batches=batches, loss_fn=lambda logits, y: classification_loss(logits, y, 0.1))


def model_state(model: torch.nn.Module) -> tuple[bool, list[bool], dict[str, torch.Tensor]]:
    """Mode, attention paths and weights: what an analysis must leave as it found them."""
    fused = [m.fused for m in model.modules() if hasattr(m, "fused")]
    return model.training, fused, {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: tuple[bool, list[bool], dict[str, torch.Tensor]]) -> None:
    training, fused, weights = model_state(model)
    assert training == before[0] and fused == before[1]
    assert all(torch.equal(weights[k], before[2][k]) for k in weights)
