"""Non-overlapping window attention helpers shared by Swin and AlterNet.

Windows are cut from a (grid x grid) token map in row-major order; within a window tokens
are row-major too. A map no larger than the window is one window (global attention), as
timm's Swin does for its last stage.
"""

from __future__ import annotations

import torch


def effective_window(grid: int, window: int) -> int:
    """The window actually used on a grid x grid map; errors where windows do not tile it."""
    if grid <= window:
        return grid
    if grid % window:
        raise ValueError(f"window size {window} does not tile a {grid}x{grid} feature map")
    return window


def partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window*window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B * windows, window*window, C) -> (B, H, W, C); the inverse of `partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def token_index(grid: int, window: int, shift: int = 0) -> torch.Tensor:
    """(windows, window*window) row-major token ids of the map that each window slot holds."""
    ids = torch.arange(grid * grid).view(1, grid, grid, 1)
    if shift:
        ids = torch.roll(ids, shifts=(-shift, -shift), dims=(1, 2))
    return partition(ids, window)[..., 0]


def relative_position_index(window: int, table_window: int) -> torch.Tensor:
    """(window², window²) indices into a flattened (2*table_window-1)² relative-position table.

    `window` may be smaller than the window the table was made for (a small last-stage
    map): its offsets are then the table's central ones.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]) + (table_window - 1)
    return rel[0] * (2 * table_window - 1) + rel[1]


def shift_mask(grid: int, window: int, shift: int) -> torch.Tensor:
    """(windows, window², window²) additive mask: -inf between tokens that the cyclic shift
    brought together from different regions of the map (Swin's shifted windows)."""
    region = torch.zeros(1, grid, grid, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[:, rows, cols, :] = label
            label += 1
    ids = partition(region, window)[..., 0]
    mask = torch.zeros(ids.shape[0], window * window, window * window)
    return mask.masked_fill(ids[:, :, None] != ids[:, None, :], float("-inf"))


def dense_map(probs: torch.Tensor, index: torch.Tensor, batch: int, tokens: int) -> torch.Tensor:
    """Window attention (B * windows, heads, w², w²) as a dense (B, heads, tokens, tokens) map."""
    windows, size = index.shape
    heads = probs.shape[1]
    dense = probs.new_zeros(batch, heads, tokens, tokens)
    rows = index[:, :, None].expand(windows, size, size)
    cols = index[:, None, :].expand(windows, size, size)
    dense[:, :, rows, cols] = probs.view(batch, windows, heads, size, size).transpose(1, 2)
    return dense
