"""Whole-step CUDA graphs (mixfast.train.graphs).

On the CPU a stand-in graph checks the trainer's side of the contract: capture records the
step without making it, each replay reads only the static buffers the trainer writes in place
(batch, masks, a(t), lr), and a run stepped through graphs ends with the weights of the eager
run, bit for bit, across the SSL, MIX and SL phases and the optimizer change between them.
With CUDA the same run is made with real graphs.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _tiny import tiny_data, tiny_model

import mixfast.train.optimizer_stage as optimizer_stage
import mixfast.train.trainer as trainer_module
from mixfast.optim import make_adamw
from mixfast.train import TrainConfig, train
from mixfast.train.graphs import StepGraphs, cuda_graph_blockers, tree_clone, tree_copy_


class RecordedStep:
    """A graph stand-in: `capture` runs the step once to learn its outputs and then puts the
    weights, optimizer state and RNG back (capturing makes nothing); `replay` runs the step
    on whatever the static inputs hold and writes its outputs into the captured ones."""

    def __init__(self, params: list[torch.Tensor], optimizer_state: dict) -> None:
        self.params, self.optimizer_state = params, optimizer_state
        self.fn = self.out = None

    def capture(self, fn):
        weights = [p.detach().clone() for p in self.params]
        state = tree_clone(list(self.optimizer_state().values()))
        rng = torch.get_rng_state()
        self.fn, self.out = fn, fn()
        with torch.no_grad():
            for p, w in zip(self.params, weights, strict=True):
                p.copy_(w)
                p.grad = None  # a replay writes the gradients its capture allocated
            tree_copy_(list(self.optimizer_state().values()), state)
        torch.set_rng_state(rng)
        return self.out

    def replay(self) -> None:
        tree_copy_(self.out, self.fn())


def config(**kwargs) -> TrainConfig:
    # SSL x 2 -> MIX x 2 -> SL x 2 epochs of 4 steps: every phase captures after 3 warm-up steps
    base = dict(pipeline="mix", ssl_epochs=4, sl_epochs=4, mix_ratio=0.5, batch_size=16,
                blr=5e-3, ssl_blr=5e-3, warmup_epochs=0.5, clip_grad=1.0, progress=False,
                log_every=100, device="cpu", compile=False)  # fmt: skip
    return TrainConfig(**{**base, **kwargs})


@pytest.mark.parametrize("ssl_share", [1.0, 0.7])
def test_a_run_through_captured_steps_equals_the_eager_run(monkeypatch, ssl_share):
    # ssl_share 0.7 at batch 12: 10 mix steps carry 7 SSL batches, 84 rows as 8s and 9s
    settings = {} if ssl_share == 1.0 else dict(ssl_share=ssl_share, batch_size=12)
    eager_model = tiny_model()
    eager = train(config(**settings), eager_model, None, tiny_data(), tiny_data(32, seed=2))
    made: list[StepGraphs] = []
    optimizers: list = []

    def stand_in_graphs(cfg, device, world):
        params = [p for p in graphed_model.parameters() if p.requires_grad]
        state = lambda: optimizers[-1].state  # noqa: E731 - the optimizer of the stage
        made.append(StepGraphs(device, graph_factory=lambda: RecordedStep(params, state)))
        return made[-1]

    def recording_make_adamw(*args, **kwargs):
        optimizers.append(make_adamw(*args, **kwargs))
        return optimizers[-1]

    monkeypatch.setattr(optimizer_stage, "make_adamw", recording_make_adamw)
    monkeypatch.setattr(trainer_module, "make_step_graphs", stand_in_graphs)
    graphed_model = tiny_model()
    graphed = train(config(**settings), graphed_model, None, tiny_data(), tiny_data(32, seed=2))
    (step_graphs,) = made
    if ssl_share == 1.0:  # SSL's graph is dropped with its optimizer
        assert set(step_graphs.captured) == {("mix", "finetune", None), ("sl", "finetune", None)}
        assert step_graphs.replays == graphed.global_step - 3 * 3  # all but 3 warm-ups a phase
    else:  # a graph per SSL sub-batch size
        mix_keys = {key for key in step_graphs.captured if key[0] == "mix"}
        assert mix_keys == {("mix", "finetune", 8), ("mix", "finetune", 9)}
    for a, b in zip(eager_model.state_dict().values(), graphed_model.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in graphed.epochs] == [r["loss"] for r in eager.epochs]


def test_replays_read_what_is_copied_in():
    weight = torch.zeros(3)
    graphs_ = StepGraphs(torch.device("cpu"), graph_factory=lambda: RecordedStep([weight], dict))
    # steps 0-2 warm up eagerly, step 3 captures and replays, steps 4-5 replay

    def run(batch, alpha, mask):
        return batch["x"] * alpha, {"ssl": mask.ids_keep.float().sum()}

    seen = []
    for step in range(6):
        inputs = ({"x": torch.full((2,), float(step))}, torch.tensor(2.0), _masks(step))
        loss, parts = graphs_.step("mix", run, inputs, [])
        seen.append((loss.tolist(), float(parts["ssl"])))
    assert seen == [([2.0 * s] * 2, float(2 * s)) for s in range(6)]
    assert graphs_.replays == 3  # the capture's own replay, then one a step


def _masks(step: int):
    from mixfast.ops import MaskingResult

    ids = torch.full((1, 2), step)
    return MaskingResult(ids, ids.clone(), torch.zeros(1, 2))


def test_a_captured_step_refuses_other_shapes_and_constants():
    dst = {"x": torch.zeros(2, 3), "offset": 4}
    with pytest.raises(ValueError, match=r"got torch.float32\[2, 4\], captured"):
        tree_copy_(dst, {"x": torch.zeros(2, 4), "offset": 4})
    with pytest.raises(ValueError, match="got 5 where it was captured with 4"):
        tree_copy_(dst, {"x": torch.zeros(2, 3), "offset": 5})


def test_where_graphs_cannot_work_the_run_steps_eagerly_and_says_why():
    reasons = cuda_graph_blockers(torch.device("cpu"), accum_steps=2, world=2, nonfinite="skip")
    assert [r.split(" ")[0] for r in reasons] == ["device", "accum_steps", "2", "nonfinite"]
    cuda = torch.device("cuda")
    ok = dict(accum_steps=1, world=1, nonfinite="stop")
    assert cuda_graph_blockers(cuda, **ok) == []
    with pytest.warns(UserWarning, match="cuda_graph: stepping eagerly: device cpu is not CUDA"):
        result = train(config(cuda_graph=True, ssl_epochs=1, sl_epochs=1), tiny_model(), None,
                       tiny_data(), tiny_data(32, seed=2))  # fmt: skip
    assert result.completed and result.resolved["cuda_graph"] is False
    assert result.resolved["storage"] == "in-memory"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # off (the default): no warning
        train(config(ssl_epochs=1, sl_epochs=1), tiny_model(), None, tiny_data(), None)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_train_as_the_eager_step():
    """Real capture: the same weights as eager steps up to float rounding (no dropout-like
    randomness, fp32: the kernels are the same, replayed)."""
    results, models = {}, {}
    for graphed in (False, True):
        models[graphed] = tiny_model(drop_path=0.0)
        cfg = config(device="cuda", cuda_graph=graphed, amp=False)
        results[graphed] = train(cfg, models[graphed], None, tiny_data(), tiny_data(32, seed=2))
        assert results[graphed].resolved["cuda_graph"] is graphed
    for a, b in zip(models[False].state_dict().values(), models[True].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    losses = [[r["loss"] for r in results[g].epochs] for g in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_static_buffers_keep_the_inputs_aliasing():
    images = torch.randn(2, 3)
    static = tree_clone({"ssl": images, "sl": [(images, torch.zeros(2))]})
    assert static["ssl"] is static["sl"][0][0] and static["ssl"] is not images
