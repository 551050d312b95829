"""Hessian spectra: top-k eigenvalues against the exact Hessian of small zoo models, the analysis rows, and the cost."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bench.analysis import resolve_analyses, run_analysis
from bench.analysis.hessian import batch_eigenvalues, deflated_power_iteration, spectrum_summary, top_eigenvalues
from bench.analysis.probes import preserved
from bench.models import create_model
from tests.helpers.analysis import assert_same_state, context, model_state, one_thread, tiny_data, tiny_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def exact_hessian(model: torch.nn.Module, loss_fn, batch) -> torch.Tensor:
    """The full Hessian w.r.t. the trainable parameters, by autograd.functional.hessian on the flat vector."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for _, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters() if p.requires_grad]).double()

    def objective(vector: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = math.prod(shape)
            params[name] = vector[offset : offset + size].view(shape).float()
            offset += size
        return loss_fn(functional_call(model, params, (batch[0],)), batch[1])

    with preserved(model, attention="math"):
        return torch.autograd.functional.hessian(objective, flat)


def largest_magnitude(hessian: torch.Tensor, k: int) -> list[float]:
    values = torch.linalg.eigvalsh((hessian + hessian.T) / 2).tolist()
    return sorted(values, key=lambda v: -abs(v))[:k]


@pytest.mark.parametrize("name, model_args, trainable", [
    ("vit_ti", dict(img_size=4, patch_size=2, depth=1, dim=4, heads=2), None),
    # ResNet-18 is too big for an exact Hessian: only its stem, first stage and head train.
    ("resnet18", dict(img_size=4, width=2), ("stem.", "stages.0.", "fc.")),
])
def test_top_eigenvalues_match_the_exact_hessian(name, model_args, trainable):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **model_args)
    if trainable:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(trainable))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 600
    model.train()
    batch = (torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,)))
    before = model_state(model)
    exact = largest_magnitude(exact_hessian(model, F.cross_entropy, batch), 5)
    found = top_eigenvalues(model, F.cross_entropy, batch, k=5, tol=1e-3, max_iter=100)
    assert len(found) == 5
    for ours, truth in zip(found, exact):
        assert abs(ours - truth) <= 1e-3 * abs(truth), (found, exact)
    assert [abs(v) for v in found] == sorted((abs(v) for v in found), reverse=True)
    assert_same_state(model, before)  # still in train mode, fused attention, same weights


def test_block_power_iteration_separates_close_eigenvalues_of_both_signs():
    """A spectrum where single-vector power iteration stalls: +-10 and 9.9 at the top."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=gen, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([10.0, -10.0 + 1e-2, 9.9, -5.0]), torch.linspace(-3, 3, 56)]).double()
    matrix = q @ torch.diag(spectrum) @ q.T
    result = deflated_power_iteration(lambda v: (matrix @ v.double()).float(), 60, k=4, tol=1e-4, max_iter=200,
                                      generator=gen)
    assert all(result.converged)
    assert result.eigenvalues == pytest.approx([10.0, -9.99, 9.9, -5.0], rel=1e-3)
    assert result.hvps_per_eigenvalue == result.hvps / 4


def test_l2_term_shifts_the_decayed_directions_by_the_weight_decay():
    """With only weight matrices decayed, H + wd * I on them: a model with loss 0 has eigenvalues wd."""
    torch.manual_seed(0)
    model = create_model("vit_ti", num_classes=3, img_size=4, patch_size=2, depth=1, dim=4, heads=2)
    batch = (torch.randn(4, 3, 4, 4), torch.randint(0, 3, (4,)))
    zero_loss = lambda logits, y: 0.0 * logits.sum()  # noqa: E731
    result = batch_eigenvalues(model, zero_loss, batch, k=3, l2=0.05)
    assert result.eigenvalues == pytest.approx([0.05, 0.05, 0.05], rel=1e-6)


def test_hessian_analysis_records_spectrum_summaries_and_cost():
    data = tiny_data(size=8)
    model = tiny_model("resnet18", size=8)
    ctx = context(model, data)
    before = model_state(model)
    spec = resolve_analyses([{"hessian": {"n_batches": 2, "k": 2, "batch_size": 8, "max_iter": 8}}], "resnet18", "cifar10")[0]
    assert spec["options"]["tol"] == 1e-3 and spec["options"]["l2"] is True  # every option recorded
    rows = run_analysis(spec, ctx)
    by = lambda metric: [r for r in rows if r["metric"] == metric]  # noqa: E731
    eig = [r["value"] for r in by("eigenvalue")]
    assert len(eig) == 4 and [r["index"] for r in by("eigenvalue")] == [0, 1, 2, 3]
    summary = spectrum_summary(eig)
    assert by("nep")[0]["value"] == pytest.approx(summary["nep"])
    positive = [v for v in eig if v > 0]
    assert by("ape")[0]["value"] == pytest.approx(sum(positive) / len(positive))
    assert by("hvps_total")[0]["value"] == sum(r["value"] for r in by("batch_hvps")) > 0
    assert by("hvps_per_eigenvalue")[0]["value"] == pytest.approx(by("hvps_total")[0]["value"] / 4)
    flags = by("eigenvalue_converged")
    assert [r["index"] for r in flags] == [0, 1, 2, 3] and {r["value"] for r in flags} <= {0.0, 1.0}
    assert sum(r["value"] for r in flags) / 4 == pytest.approx(by("converged_share")[0]["value"])
    assert by("s_per_hvp")[0]["value"] > 0 and by("wall_s")[0]["value"] > 0
    assert by("l2_coefficient")[0]["value"] == 0.05 and by("n_batches")[0]["value"] == 2
    assert_same_state(model, before)


def test_perf_hessian_suite_quick_run_reports_seconds_per_hvp(tmp_path):
    import json

    from bench.perf import list_suites, run_perf

    assert "hessian" in list_suites()
    out = tmp_path / "hessian.json"
    assert run_perf(["hessian"], quick=True, out=str(out)) == 0
    suite = json.loads(out.read_text())["suites"]["hessian"]
    hvp_rows = [r for r in suite["rows"] if r["unit"] == "s/HVP"]
    assert [r["name"].split()[0] for r in hvp_rows] == ["vit_ti", "resnet18"]
    assert all(r["median"] > 0 and r["batch_size"] == 16 for r in hvp_rows)
    assert suite["settings"]["attention"] == "math" and suite["settings"]["batch_size"] == 16
