"""The PyTorch guide's framework recipes, run for real: Lightning, Accelerate, transformers' Trainer.

Each test trains a tiny model with `lookahead_torch.Lookahead` for a few steps
on the CPU under the framework's own loop, lets the framework write a
checkpoint by its own mechanism at a step in the middle of a Lookahead cycle,
resumes from it with freshly built objects (another seed, so nothing matches
by accident), and compares the end of the resumed run with the uninterrupted
run: parameters, slow weights, the position in the cycle and the inner
optimizer's state, **exactly**. Equality of bits is the right expectation
here: the same operations on the same values in one process, one torch thread
(tests/conftest.py), CPU kernels that do not depend on timing.

A framework that is not installed skips its own tests ("<lib> not installed");
the ``frameworks`` extra installs all three. One that is installed but fails to
import is an error, not a skip (`pytest.importorskip` would report it as not
installed, e.g. an old Lightning that needs the removed ``pkg_resources``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import pytest
import torch

from lookahead_torch import Lookahead

K = 4  # the cycle length of every test; checkpoints are taken where count != 0
# The frameworks' own deprecation notices and hints (e.g. "no GPU", "num_workers")
# are not what these tests check; RuntimeWarning stays an error (pyproject).
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)

FEATURES, SAMPLES, BATCH = 4, 24, 4  # 6 batches per epoch: 6 % K != 0


def _framework(name: str):
    """Import ``name``, or skip this test when it is not installed (a broken install raises)."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} not installed")
    return importlib.import_module(name)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed regression problem, independent of the global RNG."""
    g = torch.Generator().manual_seed(20190719)
    return torch.randn(SAMPLES, FEATURES, generator=g), torch.randn(SAMPLES, 1, generator=g)


def _net(seed: int) -> torch.nn.Module:
    """Two linear layers (4 parameters) initialized from ``seed``; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _assert_same_training_state(
    model: torch.nn.Module, opt: Lookahead, resumed_model: torch.nn.Module, resumed_opt: Lookahead
) -> None:
    """Parameters, slow weights, cycle positions, inner state and lr: bit for bit."""
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), f"parameter {name} differs after the resume"
    assert resumed_opt.counts == opt.counts
    for g, (slow, resumed_slow) in enumerate(zip(opt.slow, resumed_opt.slow)):
        for i, (a, b) in enumerate(zip(slow, resumed_slow)):
            assert torch.equal(a, b), f"slow weight ({g}, {i}) differs after the resume"
    for p, q in zip(
        (p for group in opt.param_groups for p in group["params"]),
        (q for group in resumed_opt.param_groups for q in group["params"]),
    ):
        state, resumed = opt.state[p], resumed_opt.state[q]
        assert state.keys() == resumed.keys()
        for key in state:
            assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(resumed[key])), key
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in resumed_opt.param_groups]


def _assert_mid_cycle_lookahead_checkpoint(optimizer_state: dict, count: int) -> None:
    """The framework's checkpoint holds Lookahead's settings, slow weights and cycle position."""
    assert [g["lookahead_k"] for g in optimizer_state["param_groups"]] == [K] * len(
        optimizer_state["param_groups"]
    )
    assert [g["lookahead_count"] for g in optimizer_state["param_groups"]] == [count] * len(
        optimizer_state["param_groups"]
    )
    entries = optimizer_state["state"]
    assert len(entries) == 4 and all("lookahead_slow" in entry for entry in entries.values())


# -- PyTorch Lightning ------------------------------------------------------------------


def _lightning_module(L, seed: int, scheduler_on_inner: bool = False):
    """The guide's recipe: Lookahead and a per-step scheduler built on the wrapper."""
    x, y = _data()

    class Regression(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net(seed)

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return torch.nn.functional.mse_loss(self.net(inputs), targets)

        def configure_optimizers(self):
            inner = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            opt = Lookahead(inner, k=K, alpha=0.5)
            scheduler = torch.optim.lr_scheduler.StepLR(
                inner if scheduler_on_inner else opt, step_size=3, gamma=0.5
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)

    return Regression()


def _lightning_trainer(L, epochs: int, callbacks=()):
    # No deterministic=True: it would switch torch's deterministic algorithms on for the
    # rest of the session; one CPU thread is deterministic already.
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
    )


def test_lightning_resume_from_model_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """ModelCheckpoint at each epoch end (6 steps: count 2 of k = 4), `fit(ckpt_path=...)`.

    Epoch ends, not `every_n_train_steps`: Lightning restarts a plain DataLoader
    at the start of the epoch, so a mid-epoch resume sees other batches (it
    warns about it); that is Lightning's data, not Lookahead's state.
    """
    L = _framework("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    model = _lightning_module(L, seed=1)
    trainer = _lightning_trainer(L, epochs=3, callbacks=[checkpoints])
    trainer.fit(model)
    opt = trainer.optimizers[0]
    assert type(opt) is Lookahead
    assert opt.counts == (18 % K,)
    # The scheduler on the wrapper set the lr the inner SGD reads: 18 steps, halved every 3.
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**6, rel=1e-12)

    ckpt_path = tmp_path / "epoch=0.ckpt"
    saved = torch.load(ckpt_path, weights_only=True)
    _assert_mid_cycle_lookahead_checkpoint(saved["optimizer_states"][0], count=6 % K)

    resumed_model = _lightning_module(L, seed=2)
    assert not torch.equal(resumed_model.net[0].weight, model.net[0].weight)
    resumed = _lightning_trainer(L, epochs=3)
    resumed.fit(resumed_model, ckpt_path=ckpt_path)
    _assert_same_training_state(model, opt, resumed_model, resumed.optimizers[0])


def test_lightning_refuses_a_scheduler_on_the_inner_optimizer():
    """Why the guide says to build the scheduler on the wrapper: Lightning checks that
    each scheduler's optimizer is one that configure_optimizers returned."""
    L = _framework("lightning")
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="wasn't returned from `configure_optimizers`"):
        _lightning_trainer(L, epochs=1).fit(_lightning_module(L, seed=1, scheduler_on_inner=True))


def test_lightning_module_uses_the_lookahead_itself_through_optimizers_optimizer():
    """Why the guide says `self.optimizers().optimizer` for `slow_weights()`.

    `self.optimizers()` is Lightning's proxy, a subclass of Lookahead that reads
    through to the real one but keeps what is written to it: a `slow_weights()`
    entered on it swaps the tensors without the real optimizer knowing, whose
    checkpoint then reports θ as the slow weights and which does not refuse a
    step. Entered on `.optimizer` (the Lookahead Lightning steps and
    checkpoints), the checkpoint reports φ and a sync is refused.
    """
    L = _framework("lightning")
    seen = {}

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net(1)

        def training_step(self, batch, batch_idx):
            if batch_idx == 2:  # mid-cycle: θ != φ
                proxy, real = self.optimizers(), self.trainer.optimizers[0]
                seen["proxy"] = isinstance(proxy, Lookahead) and proxy is not real
                seen["same"] = proxy.optimizer is real
                phi = [s.clone() for s in real.slow[0]]
                theta = [p.detach().clone() for p in self.net.parameters()]
                for name, entered in (("proxy", proxy), ("real", proxy.optimizer)):
                    with entered.slow_weights():
                        saved = [real.state_dict()["state"][i]["lookahead_slow"] for i in range(len(phi))]
                        seen[name + " saves phi"] = all(map(torch.equal, saved, phi))
                        seen[name + " saves theta"] = all(map(torch.equal, saved, theta))
                        if name == "real":
                            with pytest.raises(RuntimeError, match="inside slow_weights"):
                                real.sync()
            inputs, targets = batch
            return torch.nn.functional.mse_loss(self.net(inputs), targets)

        def configure_optimizers(self):
            return Lookahead(torch.optim.SGD(self.parameters(), lr=0.1), k=K)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    _lightning_trainer(L, epochs=1).fit(Probe(), loader)
    assert seen == {
        "proxy": True,
        "same": True,
        "proxy saves phi": False,
        "proxy saves theta": True,
        "real saves phi": True,
        "real saves theta": False,
    }


# -- Hugging Face Accelerate ------------------------------------------------------------

ACCELERATE_STEPS, ACCELERATE_SAVE = 10, 5  # saved at count 1 of k = 4


def _accelerate_run(Accelerator, seed: int, start: int, save_dir: str | None = None, load_dir: str | None = None):
    """The guide's loop: prepare, train to ACCELERATE_STEPS, save_state at ACCELERATE_SAVE or resume."""
    x, y = _data()
    accelerator = Accelerator(cpu=True)  # a fresh one, as a new process would have
    model = _net(seed)
    lookahead = Lookahead(torch.optim.AdamW(model.parameters(), lr=0.05), k=K, alpha=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(lookahead, step_size=3, gamma=0.5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    model, opt, loader, scheduler = accelerator.prepare(model, lookahead, loader, scheduler)
    assert opt.optimizer is lookahead
    loaded = None
    if load_dir is not None:
        accelerator.load_state(load_dir)
        loaded = (lookahead.counts, [s.clone() for s in lookahead.slow[0]])
    step, snapshot = start, None
    while step < ACCELERATE_STEPS:
        skip = start % len(loader) if step == start else 0
        for inputs, targets in accelerator.skip_first_batches(loader, skip) if skip else loader:
            opt.zero_grad()
            accelerator.backward(torch.nn.functional.mse_loss(model(inputs), targets))
            opt.step()
            scheduler.step()
            step += 1
            if step == ACCELERATE_SAVE and save_dir is not None:
                accelerator.save_state(save_dir)
                snapshot = (lookahead.counts, [s.clone() for s in lookahead.slow[0]])
            if step == ACCELERATE_STEPS:
                break
    return model, lookahead, snapshot, loaded


def test_accelerate_resume_from_save_state_equals_the_uninterrupted_run(tmp_path):
    """`accelerator.save_state` at step 5 (count 1 of k = 4), `load_state` in a fresh Accelerator."""
    _framework("accelerate")
    from accelerate import Accelerator

    try:
        model, lookahead, snapshot, _ = _accelerate_run(Accelerator, seed=1, start=0, save_dir=str(tmp_path))
        assert lookahead.counts == (ACCELERATE_STEPS % K,)
        saved = torch.load(tmp_path / "optimizer.bin", weights_only=True)
        _assert_mid_cycle_lookahead_checkpoint(saved, count=ACCELERATE_SAVE % K)

        resumed_model, resumed, _, loaded = _accelerate_run(
            Accelerator, seed=2, start=ACCELERATE_SAVE, load_dir=str(tmp_path)
        )
    finally:
        _reset_accelerate_state()
    assert loaded[0] == snapshot[0] == (ACCELERATE_SAVE % K,)
    assert all(torch.equal(a, b) for a, b in zip(loaded[1], snapshot[1]))
    _assert_same_training_state(model, lookahead, resumed_model, resumed)


def _reset_accelerate_state() -> None:
    """Accelerate keeps process-wide singletons; later tests start from none."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# -- transformers Trainer ---------------------------------------------------------------

TRAINER_STEPS, TRAINER_SAVE = 10, 5  # saved at count 1 of k = 4


class _Regression(torch.nn.Module):
    """A model the Trainer can drive: forward(**batch) returns a dict with "loss"."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.net = _net(seed)

    def forward(self, x, labels=None):
        out = self.net(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class _RegressionData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y = _data()

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _trainer(transformers, way: str, seed: int, output_dir) -> tuple:
    """A Trainer whose optimizer is a Lookahead, built one of the guide's two ways."""
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=TRAINER_STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=0.05,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=TRAINER_SAVE,
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    model = _Regression(seed)
    if way == "optimizers":
        lookahead = Lookahead(torch.optim.AdamW(model.parameters(), lr=0.05), k=K, alpha=0.5)
        scheduler = torch.optim.lr_scheduler.StepLR(lookahead, step_size=3, gamma=0.5)
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=_RegressionData(), optimizers=(lookahead, scheduler)
        )
        return model, trainer, lambda: lookahead

    class LookaheadTrainer(transformers.Trainer):
        def create_optimizer(self, *args, **kwargs):  # transformers 5 added a `model` argument
            if self.optimizer is None:  # may be called again: wrap once
                super().create_optimizer(*args, **kwargs)  # AdamW from the args, weight-decay groups
                self.optimizer = Lookahead(self.optimizer, k=K, alpha=0.5)
            return self.optimizer

    trainer = LookaheadTrainer(model=model, args=args, train_dataset=_RegressionData())
    # After train() starts, trainer.optimizer is Accelerate's wrapper around the Lookahead.
    return model, trainer, lambda: trainer.optimizer.optimizer


@pytest.mark.parametrize("way", ["optimizers", "create_optimizer"])
def test_trainer_resume_from_checkpoint_equals_the_uninterrupted_run(tmp_path, way):
    """`Trainer.train(resume_from_checkpoint=...)` from checkpoint-5 (count 1 of k = 4)."""
    transformers = _framework("transformers")
    try:
        model, trainer, lookahead = _trainer(transformers, way, seed=1, output_dir=tmp_path / "run")
        trainer.train()
        opt = lookahead()
        assert type(opt) is Lookahead
        assert opt.counts == (TRAINER_STEPS % K,) * len(opt.param_groups)
        if way == "create_optimizer":  # the Trainer's own two groups (decay, no decay)
            assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
        checkpoint = tmp_path / "run" / f"checkpoint-{TRAINER_SAVE}"
        saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
        _assert_mid_cycle_lookahead_checkpoint(saved, count=TRAINER_SAVE % K)

        resumed_model, resumed, resumed_lookahead = _trainer(
            transformers, way, seed=2, output_dir=tmp_path / "resumed"
        )
        assert not torch.equal(resumed_model.net[0].weight, model.net[0].weight)
        resumed.train(resume_from_checkpoint=os.fspath(checkpoint))
    finally:
        if "accelerate" in sys.modules:  # the Trainer runs on Accelerate
            _reset_accelerate_state()
    _assert_same_training_state(model, opt, resumed_model, resumed_lookahead())
