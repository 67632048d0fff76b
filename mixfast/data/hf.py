"""`hfds/PATH`: a Hugging Face dataset saved with `save_to_disk`, read map-style like image
files (the `datasets` package is needed only here: `pip install datasets`).

The image column (an `Image` feature) is read as the stored bytes, decoded on access by
FileView like any image file; labels are the `ClassLabel` column, read once as a column.
Splits: `train` + `test` (or `validation`) of a DatasetDict; a single Dataset is split like a
folder (a stratified held-out test fraction).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mixfast.data.readers import FileSplits, splits_of
from mixfast.data.sources import DataError

TEST_SPLITS = ("test", "validation", "val")


class HfReader:
    """One split of a saved dataset with the reader interface FileView reads: `len`,
    `[i] -> (file object, label)`, `targets`, `class_to_idx`, `describe(i)`."""

    def __init__(self, dataset: Any, where: str) -> None:
        from datasets import ClassLabel, Image

        features = dataset.features
        image = next((k for k, f in features.items() if isinstance(f, Image)), None)
        label = next((k for k, f in features.items() if isinstance(f, ClassLabel)), None)
        if image is None or label is None:
            raise DataError(
                f"{{dataset}} {where}: want an Image column and a ClassLabel column, "
                f"found {dict(features)}"
            )
        self.data = dataset.cast_column(image, Image(decode=False))
        self.image_column, self.where = image, where
        self.targets = list(dataset[label])
        self.class_to_idx = {name: i for i, name in enumerate(features[label].names)}
        outside = [i for i, t in enumerate(self.targets) if not 0 <= t < len(self.class_to_idx)]
        if outside:
            raise DataError(
                f"{{dataset}} {self.describe(outside[0])}: label {self.targets[outside[0]]} "
                f"is outside the {len(self.class_to_idx)} classes ({len(outside)} such rows)"
            )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        stored = self.data[index][self.image_column]
        if stored.get("bytes") is not None:
            return io.BytesIO(stored["bytes"]), self.targets[index]
        return open(stored["path"], "rb"), self.targets[index]

    def describe(self, index: int) -> str:
        return f"{self.where}[{index}]"


def open_hf(
    path: str | Path, *, size: int | None, seed: int, test_fraction: float = 0.1
) -> FileSplits:
    """The saved dataset at `path` as FileSplits (RGB images of side `size`)."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{{dataset}} hfds/{path} needs the `datasets` package: pip install datasets"
        ) from exc
    path = Path(path)
    try:
        saved = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{{dataset}} hfds/{path}: not a dataset saved to disk ({exc})") from exc
    if isinstance(saved, datasets.DatasetDict):
        if "train" not in saved:
            raise DataError(f"{{dataset}} hfds/{path}: no train split (has {list(saved)})")
        test_name = next((n for n in TEST_SPLITS if n in saved), None)
        train = HfReader(saved["train"], f"{path}:train")
        test = None if test_name is None else HfReader(saved[test_name], f"{path}:{test_name}")
        if test is not None and test.class_to_idx != train.class_to_idx:
            raise DataError(f"{{dataset}} hfds/{path}: the {test_name} split has other classes")
    else:
        train, test = HfReader(saved, str(path)), None
    return splits_of(
        path.name, train, test, size=size, mode="RGB", test_fraction=test_fraction, seed=seed
    )


__all__ = ["HfReader", "open_hf"]
