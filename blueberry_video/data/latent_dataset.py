"""The torch datasets training reads: latents and text conditioning from the cache, or random stand-ins."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch

from blueberry_video.training.sampling import sample_seed

NON_TENSOR_COLUMNS = ("index", "video", "caption")


# A cache up to this size is read into memory once per process: a step then indexes tensors instead of
# reading Arrow rows (~1 ms per read on top of the copy; benchmarks/overhead.py, loader_throughput.py).
IN_MEMORY_LIMIT_BYTES = 1 << 30


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items of a built latent cache, each `repeats` times; `sample_index` keys the item's randomness."""

    def __init__(self, cache_path: str | Path, repeats: int = 1, in_memory_limit: int = IN_MEMORY_LIMIT_BYTES):
        self.table = datasets.load_from_disk(str(Path(cache_path) / "dataset"))
        self.tensor_columns = [c for c in self.table.column_names if c not in NON_TENSOR_COLUMNS]
        # numpy, then torch.from_numpy: datasets' torch formatter took ~6x longer per real-size sample.
        self.table = self.table.with_format("numpy", columns=self.tensor_columns)
        self.repeats = repeats
        self.columns = self._read_whole(self.table) if self.table.data.nbytes <= in_memory_limit else None

    def _read_whole(self, table) -> dict[str, torch.Tensor] | None:
        """Every tensor column as one tensor, or None where items differ in shape (they stay per-row reads)."""
        data = table[:]
        if any(not isinstance(data[name], np.ndarray) or data[name].dtype == object for name in self.tensor_columns):
            return None
        return {name: torch.from_numpy(data[name]) for name in self.tensor_columns}

    def __len__(self) -> int:
        return len(self.table) * self.repeats

    def __getitem__(self, sample_index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([sample_index])[0]

    def __getitems__(self, sample_indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A DataLoader batch in one read: datasets' fixed cost per read, not the bytes, dominates loading
        small latents."""
        rows = [index % len(self.table) for index in sample_indices]
        if self.columns is not None:
            return [{**{name: column[row] for name, column in self.columns.items()}, "sample_index": torch.tensor(index)}
                    for row, index in zip(rows, sample_indices)]
        read = self.table[rows]
        return [
            {**{name: torch.from_numpy(read[name][i]) for name in self.tensor_columns},
             "sample_index": torch.tensor(index)}
            for i, index in enumerate(sample_indices)
        ]


class DummyLatentDataset(torch.utils.data.Dataset):
    """Random latents and text conditioning of the shapes the cache would hold: no videos, no encoders.

    Each item is a fixed function of (seed, index), so a model can fit it and a run can be resumed.
    """

    def __init__(self, family, num_samples: int, num_frames: int, height: int, width: int, seed: int = 0):
        self.family = family
        self.num_samples = num_samples
        self.latent_shape = family.latent_shape(num_frames, height, width)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, sample_index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, -1, sample_index))
        item = {
            "latent_mean": torch.randn(self.latent_shape, generator=generator),
            "latent_std": torch.full(self.latent_shape, 0.05),
        }
        item.update(self.family.dummy_text_conditioning(generator))
        item["sample_index"] = torch.tensor(sample_index)
        return item
