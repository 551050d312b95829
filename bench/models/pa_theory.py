"""The one-layer positional-attention model of Jelassi, Sander & Li's theory, on patch vectors.

F(X) = sum_i sigma(D * sum_j S_ij <v, X_j>) with S = row-softmax(A / sqrt(d)): the
attention logits A (D x D) are trained with their diagonal held fixed, v in R^d is the one
value vector, X is (D patches, d dims). The model outputs the two logits [-F/2, F/2], so
cross-entropy on class (y+1)/2 is exactly the logistic loss log(1 + exp(-y F)) of the paper.

Why the defaults are what they are (all are model_args):
- `diag_logit` = sqrt(d): the paper's A = P^T P has A_ii = |p_i|^2 >= |A_ij|. With every
  logit equal at init, the gradient w.r.t. A is the same for every row: it carries no
  information about the partition. A diagonal above the off-diagonal makes each patch
  attend mostly to itself, so the gradient of A_ij reflects how patches i and j co-vary,
  which is what separates within-set from between-set entries.
- `v_init_std` = 1 / d: a cubic model has no gradient at v = 0 (a saddle); at this scale
  gradient descent leaves it in tens of steps instead of thousands.
- `logit_scale` = 32: A's off-diagonal is `logit_scale * theta` with theta the trained
  parameter, so one gradient step moves A about logit_scale^2 (~1000) times faster than
  it would move a directly trained A. v and A live on very different time scales: with
  equal steps, A barely moves before v has fitted the counting solution, and plain
  full-batch GD at one learning rate stays there. The scale lets one learning rate learn
  both, and leaves the model function (and its init) unchanged.
- `learn_attention` = False freezes A at its init (the control: no patch association).
- `symmetric_attention` = False (default, as bench always ran it): every entry of A is its own
  parameter. True ties A_ij = A_ji (theta enters as (theta + theta^T) / 2), as the paper's
  logits P^T P, a Gram matrix, are. Untied, full-batch GD first associates every row, then
  (on q = 0.5, after 1e3-1e4 steps) one row of each set turns away from its set-mate while the
  loss keeps falling: exact association decays to 0.6 at Bayes accuracy. Tied, a row cannot
  drop its mate without the mate dropping it, and association stays 1.0 (docs/SPATIAL.md,
  issue 20). The default stays False so that stored trials keep their meaning; the Jelassi
  sweeps set it.
- `activation` sigma = 'cubic' (z^3, the best reading of the paper), 'linear' or 'relu'.
A is never weight-decayed (`no_weight_decay`).

As in every zoo model, the builder gets the data's size as `img_size` = D (patches) and
`in_chans` = d (patch dimension).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.base import AttentionModel
from bench.models.layers import AttentionLayer
from bench.models.registry import PAPER_JELASSI, register_model


ACTIVATIONS = {
    "cubic": lambda z: z**3,
    "linear": lambda z: z,
    "relu": torch.relu,
}


class PatchAttention(AttentionLayer):
    """z = D * S u with S = softmax(A / sqrt(d)) from directly trained logits A (diagonal fixed).

    The fused path hands the logits to SDPA as its additive mask (zero queries and keys);
    the math path is the explicit softmax. Both have the same map for every input.
    """

    kind = "msa"

    def __init__(self, num_patches: int, patch_dim: int, diag_logit: float = 0.0, offdiag_init: float = 0.0,
                 logit_scale: float = 1.0, learn: bool = True, symmetric: bool = False):
        super().__init__()
        self.num_patches = num_patches
        self.symmetric = bool(symmetric)
        self.scale = patch_dim**-0.5
        self.logit_scale = float(logit_scale)
        theta = torch.full((num_patches, num_patches), float(offdiag_init) / self.logit_scale)
        self.offdiag = nn.Parameter(theta, requires_grad=learn)
        eye = torch.eye(num_patches)
        self.register_buffer("eye", eye, persistent=False)
        self.register_buffer("diag", eye * diag_logit, persistent=False)

    @property
    def A(self) -> torch.Tensor:
        """The (D, D) attention logits: logit_scale * theta off the diagonal (theta symmetrised
        when `symmetric`), fixed on it."""
        theta = (self.offdiag + self.offdiag.T) / 2 if self.symmetric else self.offdiag
        return self.logit_scale * theta * (1 - self.eye) + self.diag

    def scores(self) -> torch.Tensor:
        """S = row-softmax(A / sqrt(d)), (D, D)."""
        return (self.A * self.scale).softmax(dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, d = u.shape
        if self.fused and self.map_sink is None:
            zeros = u.new_zeros(1, 1, d, 1)
            out = F.scaled_dot_product_attention(zeros, zeros, u.T.reshape(1, 1, d, b), attn_mask=self.A * self.scale)
            out = out.reshape(d, b).T
        else:
            s = self.scores()
            self.record(s, lambda m: m.expand(b, 1, d, d))
            out = u @ s.T
        return self.num_patches * out


class PaTheory(AttentionModel):
    input_kind = "patches"

    def __init__(self, num_patches: int, patch_dim: int, activation: str = "cubic", diag_logit: float | None = None,
                 offdiag_init: float = 0.0, v_init_std: float | None = None, logit_scale: float = 32.0,
                 learn_attention: bool = True, symmetric_attention: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        diag_logit = math.sqrt(patch_dim) if diag_logit is None else diag_logit
        v_init_std = 1.0 / patch_dim if v_init_std is None else v_init_std
        self.activation = activation
        self.sigma = ACTIVATIONS[activation]
        self.v = nn.Parameter(torch.randn(patch_dim) * v_init_std)
        self.attn = PatchAttention(num_patches, patch_dim, diag_logit, offdiag_init, logit_scale, learn_attention,
                                   symmetric_attention)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, d) patches -> (B, D) attended values D * sum_j S_ij <v, X_j>."""
        return self.attn((x @ self.v.unsqueeze(-1)).squeeze(-1))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        f = self.sigma(features).sum(dim=-1)
        return torch.stack([-f / 2, f / 2], dim=-1)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """F(X), the paper's real-valued output (its sign is the prediction)."""
        return self.sigma(self.forward_features(x)).sum(dim=-1)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [("attn", self.attn)]

    def no_weight_decay(self) -> set[str]:
        """A is never decayed: decay would pull the learned partition back towards uniform attention."""
        return {"attn.offdiag"}

    def attention_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [("attn.offdiag", self.attn.offdiag)]

    def positional_scores(self) -> torch.Tensor:
        """The (D, D) logits A, for patch association (Def. 2.2)."""
        return self.attn.A.detach().clone()

    @property
    def A(self) -> torch.Tensor:
        return self.attn.A


@register_model(family="theory", paper=PAPER_JELASSI, input_kind="patches")
def pa_theory(
    num_classes: int,
    img_size: int = 16,
    in_chans: int = 48,
    activation: str = "cubic",
    diag_logit: float | None = None,
    offdiag_init: float = 0.0,
    v_init_std: float | None = None,
    logit_scale: float = 32.0,
    learn_attention: bool = True,
    symmetric_attention: bool = False,
) -> PaTheory:
    """Jelassi et al.'s theory model; img_size = D patches, in_chans = d.

    The defaults (D = 16, d = 48) are the spatial dataset's default: a 4x4 grid of 4x4x3 patches.
    diag_logit defaults to sqrt(d) and v_init_std to 1/d (see the module docstring).
    """
    if num_classes != 2:
        raise ValueError(f"pa_theory is a binary classifier (2 logits [-F/2, F/2]), got num_classes={num_classes}")
    return PaTheory(img_size, in_chans, activation, diag_logit, offdiag_init, v_init_std, logit_scale, learn_attention,
                    symmetric_attention)
