"""Stream: the seeded order, DDP sharding and resume state of the trainer's data streams."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from mixfast.data import ImageDataset
from mixfast.train.streams import EvalBatches, Stream


def numbered(n: int) -> TensorDataset:
    """Images whose single pixel is their index, labels = index % 10."""
    return TensorDataset(torch.arange(n).float().view(n, 1, 1, 1), torch.arange(n) % 10)


def stream(data, *, world: int = 1, rank: int = 0, accum: int = 1, seed: int = 0) -> Stream:
    return Stream(
        data,
        1,
        batch_size=4,
        world=world,
        rank=rank,
        accum=accum,
        seed=seed,
        device=torch.device("cpu"),
    )


def ids(batch) -> list[int]:
    return batch[0].flatten().long().tolist()


def one_pass(s: Stream) -> list[list[int]]:
    return [ids(s.next()) for _ in range(s.micro)]


def test_order_is_seeded_and_drops_the_partial_batch():
    a, b, c = stream(numbered(30)), stream(numbered(30)), stream(numbered(30), seed=1)
    first = one_pass(a)
    assert first == one_pass(b)
    assert first != one_pass(c)
    assert len(first) == 7 and a.steps == 7  # 30 // 4, the 2 left over are dropped
    seen = [i for batch in first for i in batch]
    assert len(set(seen)) == 28  # no sample twice in a pass


def test_each_pass_reshuffles_and_cycles():
    s = stream(numbered(16))
    first = one_pass(s)
    second = [ids(s.next()) for _ in range(s.micro)]  # past the end: a new pass starts
    assert s.cycle == 1
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(16))
    assert first != second


def test_ranks_split_the_global_order_without_overlap():
    """Rank r of W takes micro-batches r, r + W, ...: together one process's order."""
    data = numbered(40)
    single = one_pass(stream(data))
    ranks = [one_pass(stream(data, world=2, rank=r)) for r in range(2)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    assert not set(sum(ranks[0], [])) & set(sum(ranks[1], []))


def test_state_dict_resumes_mid_pass():
    s = stream(numbered(40))
    for _ in range(3):
        s.next()
    state = s.state_dict()
    assert state == {"cycle": 0, "pos": 3, "size": 40}
    rest = [ids(s.next()) for _ in range(4)]
    resumed = stream(numbered(40))
    resumed.load_state_dict(state)
    assert [ids(resumed.next()) for _ in range(4)] == rest


def test_state_of_other_data_is_refused():
    state = stream(numbered(40)).state_dict()
    other = stream(numbered(44))
    try:
        other.load_state_dict(state)
    except ValueError as exc:
        assert "holds 44 samples, the run was made with 40" in str(exc)
    else:
        raise AssertionError("a stream state of 40 samples loaded into 44")
    other.load_state_dict({"cycle": 1, "pos": 2})  # older checkpoints carry no size
    assert other.state_dict() == {"cycle": 1, "pos": 2, "size": 44}


def test_too_few_samples_is_refused():
    try:
        stream(numbered(6), world=2)
    except ValueError as exc:
        assert "fewer than batch_size x devices x accum_steps" in str(exc)
    else:
        raise AssertionError("6 samples for 2 x 4 were accepted")


def test_image_dataset_is_gathered_raw_and_normalised_on_the_device():
    images = torch.randint(0, 256, (12, 1, 2, 2), dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(12) % 3, (0.5,), (0.25,))
    s = stream(data)
    raw, labels = s.next()
    assert raw.dtype == torch.uint8
    index = [int((images == row).all(dim=(1, 2, 3)).nonzero()[0]) for row in raw]
    expected = torch.stack([data[i][0] for i in index])
    torch.testing.assert_close(s.normalize(raw), expected)
    assert labels.tolist() == [i % 3 for i in index]


def test_eval_batches_cover_each_rank_share_once():
    data = numbered(11)
    shares = [
        [
            i
            for images, _ in EvalBatches(data, batch_size=3, rank=r, world=2, device="cpu")
            for i in images.flatten().long().tolist()
        ]
        for r in range(2)
    ]
    assert sorted(shares[0] + shares[1]) == list(range(11))
    assert shares[0] == list(range(0, 11, 2))
