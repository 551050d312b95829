"""The seeds of a trial's random streams: one stream per purpose, none equal to the model init's.

A trial seeds the model's init (and dropout) with `torch.manual_seed(seed)`. Every other
random draw comes from a generator of its own, seeded from a hash of its purpose and its
keys, so no data stream is the init stream and no two purposes share one. Seeding a data
generator with a bare seed would make it the init stream: with sample seed 0 and trial
seed 0, pa_theory's initial v on `spatial_control` shared 20 of its 36 coordinates with
the first training patch, and the loader's shuffling replayed the init's draws.

Purposes:
- `sample`: the samples of a synthetic dataset (keys: dataset name, sample seed, split,
  the feature or teacher seed);
- `feature`, `partition`, `teacher`: w*, the random partition, the control's teacher;
- `subset`: the nested, class-stratified order training subsets are taken from;
- `loader`: the training loader's shuffling and augmentation (per trial seed);
- `analysis`: the training batches an analysis draws (per trial seed and epoch).

The seeds are fixed functions of the keys (BLAKE2b), the same on every machine and
Python run, so a resolved config still decides a trial's numbers.
"""

from __future__ import annotations

import hashlib

import torch

PURPOSES = ("sample", "feature", "partition", "teacher", "subset", "loader", "analysis")


def stream_seed(purpose: str, *keys: int | str) -> int:
    """A 63-bit seed for the stream of `purpose` under `keys` (e.g. a seed, a split, an epoch)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random-stream purpose {purpose!r} (known: {', '.join(PURPOSES)})")
    text = ":".join(["bench-stream", purpose, *(str(k) for k in keys)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def stream_generator(purpose: str, *keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` for the stream of `purpose` under `keys`."""
    return torch.Generator(device=device).manual_seed(stream_seed(purpose, *keys))
