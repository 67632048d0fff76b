"""Data: IDX / ImageFolder / TinyImageNet loading, bad-data errors, subsets, augmentation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mixfast.data import (
    FASHION_MNIST_ENV,
    BatchAugment,
    DataError,
    ImageDataset,
    find_fashion_mnist,
    from_tensors,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_synthetic,
    load_tinyimagenet,
    normalize,
    prepare_training_data,
    read_idx,
    stratified_subset,
)


def idx_bytes(array: torch.Tensor) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.dim())
    header += struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def write_fashion_mnist(directory: Path, n_train: int = 40, n_test: int = 20, gz: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    arrays = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28), generator=gen),
        "train-labels-idx1-ubyte": torch.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_test, 28, 28), generator=gen),
        "t10k-labels-idx1-ubyte": torch.arange(n_test) % 10,
    }
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return arrays


def write_image(path: Path, size=(8, 8), color=(10, 20, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


# ------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx(tmp_path, gz):
    arrays = write_fashion_mnist(tmp_path, gz=gz)
    splits = load_fashion_mnist(tmp_path)
    assert splits.train_images.shape == (40, 1, 28, 28)
    assert splits.test_images.shape == (20, 1, 28, 28)
    assert torch.equal(splits.train_images[:, 0], arrays["train-images-idx3-ubyte"].to(torch.uint8))
    assert torch.equal(splits.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert splits.num_classes == 10


def test_fashion_mnist_env_variable(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "fm")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "fm"))
    assert find_fashion_mnist() == tmp_path / "fm"


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()


def test_fashion_mnist_installed_package_found(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    try:
        directory = find_fashion_mnist()
    except DataError:
        pytest.skip("dataset-fashion-mnist is not installed here")
    assert (directory / "train-images-idx3-ubyte.gz").exists() or (
        directory / "train-images-idx3-ubyte"
    ).exists()


def test_idx_truncated_names_file(tmp_path):
    write_fashion_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_fashion_mnist(tmp_path)


def test_idx_corrupt_gzip_names_file(tmp_path):
    write_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic"):
        read_idx(path)


def test_idx_labels_images_mismatch(tmp_path):
    write_fashion_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(torch.arange(39) % 10))
    )
    with pytest.raises(DataError, match="do not match"):
        load_fashion_mnist(tmp_path)


def test_idx_label_out_of_range(tmp_path):
    write_fashion_mnist(tmp_path)
    labels = torch.arange(40) % 10
    labels[3] = 12
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 10\)"):
        load_fashion_mnist(tmp_path)


# ------------------------------------------------------------------------- image files


def test_image_folder_with_train_val(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for cls, color in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
            for i in range(count):
                write_image(tmp_path / split / cls / f"{i}.png", color=color)
    splits = load_image_folder(tmp_path)
    assert splits.train_images.shape == (6, 3, 8, 8)
    assert splits.test_images.shape == (4, 3, 8, 8)
    assert splits.classes == ("cat", "dog")
    assert splits.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits.train_images[0, :, 0, 0].tolist() == [200, 0, 0]
    assert splits.train_images[-1, :, 0, 0].tolist() == [0, 200, 0]


def test_image_folder_holdout_split_is_stratified(tmp_path):
    for cls in ("a", "b"):
        for i in range(10):
            write_image(tmp_path / cls / f"{i}.jpg")
    splits = load_image_folder(tmp_path, test_fraction=0.2, seed=3)
    assert splits.test_labels.tolist() == [0, 0, 1, 1]
    assert len(splits.train_labels) == 16


def test_image_folder_mixed_sizes(tmp_path):
    for i, cls in enumerate("aabb"):
        write_image(tmp_path / cls / f"{i}.png", size=(8, 8) if i < 3 else (9, 8))
    with pytest.raises(DataError, match=r"mixed sizes.*3\.png.*img_size"):
        load_image_folder(tmp_path)
    splits = load_image_folder(tmp_path, size=6, test_fraction=0.5)
    assert splits.train_images.shape[1:] == (3, 6, 6)
    (tmp_path / "b" / "3.png").unlink()
    with pytest.raises(DataError, match="too few images"):
        load_image_folder(tmp_path)


def test_image_folder_corrupt_jpeg_names_file(tmp_path):
    write_image(tmp_path / "a" / "0.jpg")
    write_image(tmp_path / "b" / "1.jpg")
    bad = tmp_path / "b" / "2.jpg"
    bad.write_bytes((tmp_path / "b" / "1.jpg").read_bytes()[:40])
    with pytest.raises(DataError, match=r"2\.jpg.*corrupt"):
        load_image_folder(tmp_path)


def test_image_folder_empty(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="hold no images"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(tmp_path / "a")


def test_tinyimagenet_layout(tmp_path):
    wnids = ["n01", "n02", "n03"]
    (tmp_path / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, wnid in enumerate(wnids):
        for i in range(2):
            write_image(tmp_path / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", color=(k, 0, 0))
    lines = []
    for k, wnid in enumerate(wnids):
        write_image(tmp_path / "val" / "images" / f"val_{k}.JPEG", mode="L", color=(k, 0, 0))
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t8\t8")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    splits = load_tinyimagenet(tmp_path)
    assert splits.train_images.shape == (6, 3, 8, 8)
    assert splits.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert splits.test_images.shape == (3, 3, 8, 8)  # grayscale JPEGs become RGB
    assert splits.test_labels.tolist() == [0, 1, 2]
    assert splits.classes == tuple(wnids)


def test_tinyimagenet_bad_layout_and_annotation(tmp_path):
    with pytest.raises(DataError, match="not a TinyImageNet-200 tree"):
        load_tinyimagenet(tmp_path)
    write_image(tmp_path / "train" / "n01" / "images" / "a.JPEG")
    write_image(tmp_path / "train" / "n02" / "images" / "b.JPEG")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "val_annotations.txt").write_text("v.JPEG\tn99\t0\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:1.*unknown"):
        load_tinyimagenet(tmp_path)


# ------------------------------------------------------------------------ tensor checks


def _tensors(n=8, channels=1, size=4):
    images = torch.zeros(n, channels, size, size, dtype=torch.uint8)
    return images, torch.arange(n) % 2


def test_wrong_channel_count():
    images, labels = _tensors(channels=2)
    with pytest.raises(DataError, match="2 channels; allowed: 1 or 3"):
        from_tensors(images, labels, images, labels)


def test_empty_dataset():
    images, labels = _tensors(n=0)
    full, full_labels = _tensors()
    with pytest.raises(DataError, match="empty"):
        from_tensors(images, labels, full, full_labels, num_classes=2)


def test_wrong_dtype_and_label_range():
    images, labels = _tensors()
    with pytest.raises(DataError, match="uint8"):
        from_tensors(images.float(), labels, images, labels)
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        from_tensors(images, labels + 1, images, labels, num_classes=2)


def test_mixed_split_sizes():
    images, labels = _tensors(size=4)
    other, _ = _tensors(size=5)
    with pytest.raises(DataError, match="one size"):
        from_tensors(images, labels, other, labels)


def test_unknown_dataset_and_missing_dir():
    with pytest.raises(ValueError, match="dataset 'mnist' is not allowed"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="needs data_dir"):
        load_dataset("imagefolder")


# -------------------------------------------------------------------------------- subsets


def test_stratified_subset_fraction_and_seed():
    labels = torch.arange(1000) % 10
    labels[:37] = 3  # an unbalanced class
    subset = stratified_subset(labels, fraction=0.1, seed=1)
    counts = torch.bincount(labels, minlength=10)
    got = torch.bincount(labels[subset], minlength=10)
    assert torch.equal(got, (counts.double() * 0.1).round().long().clamp_min(1))
    assert torch.equal(subset, stratified_subset(labels, fraction=0.1, seed=1))
    assert not torch.equal(subset, stratified_subset(labels, fraction=0.1, seed=2))
    assert len(torch.unique(subset)) == len(subset)


def test_stratified_subset_per_class_and_errors():
    labels = torch.tensor([0] * 5 + [1] * 2)
    subset = stratified_subset(labels, per_class=3, seed=0)
    assert torch.bincount(labels[subset]).tolist() == [3, 2]
    for kwargs in ({"fraction": 0.0}, {"fraction": 1.5}, {"per_class": 0}, {}):
        with pytest.raises(ValueError):
            stratified_subset(labels, **kwargs)


def test_prepare_training_data_modes():
    splits = load_synthetic(train_size=200, test_size=100)
    same = prepare_training_data(splits, fraction=0.25, seed=0)  # 20 go to validation
    assert same.ssl_data is None and len(same.sl_data) == 40 and len(same.val_data) == 20
    two = prepare_training_data(
        splits, fraction=0.25, train_limit=100, regime="semi-supervised", seed=0
    )
    assert len(two.ssl_data) == 90 and len(two.sl_data) == 20
    assert prepare_training_data(splits, regime="all").regime == "semi-supervised"  # old name
    # the labeled images are a subset of the SSL pool
    pool = {tuple(x.flatten().tolist()) for x in two.ssl_data.images}
    assert all(tuple(x.flatten().tolist()) in pool for x in two.sl_data.images)
    limited = prepare_training_data(splits, test_limit=50)
    assert len(limited.test_data) == 50
    with pytest.raises(ValueError, match="regime"):
        prepare_training_data(splits, regime="other")
    with pytest.raises(ValueError, match="train_limit"):
        prepare_training_data(splits, train_limit=5)


def test_synthetic_is_learnable():
    """Nearest class mean on raw pixels beats chance (10%) by far: a tiny model can learn it."""
    splits = load_synthetic(train_size=500, test_size=200)
    x = splits.train_images.float().flatten(1)
    means = torch.stack([x[splits.train_labels == c].mean(0) for c in range(10)])
    pred = torch.cdist(splits.test_images.float().flatten(1), means).argmin(1)
    assert (pred == splits.test_labels).float().mean() > 0.5


# ------------------------------------------------------------------- datasets, augment


def test_image_dataset_normalises():
    splits = load_synthetic(train_size=40, test_size=20, channels=3)
    mean, std = splits.mean_std()
    data = ImageDataset(splits.train_images, splits.train_labels, mean, std)
    image, label = data[3]
    expected = (splits.train_images[3].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / (
        torch.tensor(std).view(3, 1, 1)
    )
    torch.testing.assert_close(image, expected)
    assert label == splits.train_labels[3]
    batch, labels = next(iter(DataLoader(data, batch_size=16)))
    torch.testing.assert_close(batch, normalize(splits.train_images[:16], mean, std))
    assert torch.equal(labels, splits.train_labels[:16])
    whole = normalize(splits.train_images, mean, std)
    torch.testing.assert_close(whole.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(whole.std((0, 2, 3)), torch.ones(3), atol=1e-2, rtol=0)


def test_augment_identity_and_flip():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    plain = BatchAugment(8, mean, std, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, seed=0)
    torch.testing.assert_close(plain(images), normalize(images, mean, std), atol=1e-5, rtol=0)
    flip = BatchAugment(8, mean, std, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, seed=0)
    torch.testing.assert_close(
        flip(images), normalize(images, mean, std).flip(-1), atol=1e-5, rtol=0
    )


def test_augment_crop_uint8_equals_float_and_is_seeded():
    images = torch.randint(0, 256, (16, 1, 12, 12), dtype=torch.uint8)
    mean, std = (0.3,), (0.3,)
    a = BatchAugment(12, mean, std, seed=5)(images)
    b = BatchAugment(12, mean, std, seed=5)(normalize(images, mean, std))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert a.shape == (16, 1, 12, 12) and a.dtype == torch.float32
    assert not torch.allclose(a, normalize(images, mean, std))
    c = BatchAugment(12, mean, std, seed=6)(images)
    assert not torch.allclose(a, c)
    # a crop only resamples the image: values stay inside the input's range
    lo, hi = normalize(images, mean, std).amin(), normalize(images, mean, std).amax()
    assert a.amin() >= lo - 1e-5 and a.amax() <= hi + 1e-5


def test_augment_crop_matches_reference_box():
    """A crop box of exactly half the image on the pixel grid equals slicing + 2x upsampling."""
    images = torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8)
    aug = BatchAugment(8, (0.0,), (1 / 255,), hflip=0.0)
    theta = torch.tensor([[[0.5, 0.0, -0.5], [0.0, 0.5, 0.5]]], dtype=torch.float64)
    aug.sample_theta = lambda batch: theta
    out = aug(images)
    crop = images[:, :, 4:, :4].float()  # bottom-left quarter (y down, x right)
    expected = torch.nn.functional.interpolate(crop, size=(8, 8), mode="bilinear")
    # on the outer ring grid_sample blends in the pixels just outside the box; inside, equal
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(out[inner], expected[inner], atol=1e-3, rtol=0)


def test_augment_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        BatchAugment(8, (0.5,), (0.5,), scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="hflip"):
        BatchAugment(8, (0.5,), (0.5,), hflip=2.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        BatchAugment(8, (0.5,), (0.5,))(torch.zeros(3, 8, 8))


@pytest.mark.cuda
def test_augment_on_cuda_matches_cpu():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    cpu = BatchAugment(16, mean, std, seed=1)(images)
    gpu = BatchAugment(16, mean, std, seed=1)(images.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
