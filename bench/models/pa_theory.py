"""The one-layer positional-attention model of Jelassi, Sander & Li's theory, on patch vectors.

F(X) = sum_i sigma(D * sum_j S_ij <v, X_j>) with S = row-softmax(A / sqrt(d)): the
attention logits A (D x D) are trained directly with their diagonal held fixed, v in R^d
is the one value vector, X is (D patches, d dims). The model outputs the two logits
[-F/2, F/2], so cross-entropy on class (y+1)/2 is exactly the logistic loss
log(1 + exp(-y F)) of the paper.

Open choices (model_args): `activation` sigma = 'cubic' (z^3, the best reading of the
paper), 'linear' or 'relu'; the fixed diagonal `diag_logit` = 0 and the equal
off-diagonal start `offdiag_init` = 0 (the symmetric init: S starts uniform); v starts
N(0, `v_init_std`^2 I) with a small std (0.01), since a cubic model has no gradient at
v = 0.

As in every zoo model, the builder gets the data's size as `img_size` = D (patches) and
`in_chans` = d (patch dimension).
"""

from __future__ import annotations

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

    def __init__(self, num_patches: int, patch_dim: int, diag_logit: float = 0.0, offdiag_init: float = 0.0):
        super().__init__()
        self.num_patches = num_patches
        self.scale = patch_dim**-0.5
        self.offdiag = nn.Parameter(torch.full((num_patches, num_patches), float(offdiag_init)))
        eye = torch.eye(num_patches)
        self.register_buffer("eye", eye, persistent=False)
        self.register_buffer("diag", eye * diag_logit, persistent=False)

    @property
    def A(self) -> torch.Tensor:
        """The (D, D) attention logits: trained off the diagonal, fixed on it."""
        return self.offdiag * (1 - self.eye) + self.diag

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

    def __init__(self, num_patches: int, patch_dim: int, activation: str = "cubic", diag_logit: float = 0.0,
                 offdiag_init: float = 0.0, v_init_std: float = 0.01):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        self.activation = activation
        self.sigma = ACTIVATIONS[activation]
        self.v = nn.Parameter(torch.randn(patch_dim) * v_init_std)
        self.attn = PatchAttention(num_patches, patch_dim, diag_logit, offdiag_init)

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
    diag_logit: float = 0.0,
    offdiag_init: float = 0.0,
    v_init_std: float = 0.01,
) -> PaTheory:
    """Jelassi et al.'s theory model; img_size = D patches, in_chans = d.

    The defaults (D = 16, d = 48) are the spatial dataset's default: a 4x4 grid of 4x4x3 patches.
    """
    if num_classes != 2:
        raise ValueError(f"pa_theory is a binary classifier (2 logits [-F/2, F/2]), got num_classes={num_classes}")
    return PaTheory(img_size, in_chans, activation, diag_logit, offdiag_init, v_init_std)
