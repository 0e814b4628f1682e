"""Long-run safety under the real DeepSpeed engine on CPU (gloo), in real processes: asynchronous
checkpoints (bit-identical to synchronous ones, kill -9 while one is being written), the
wall-clock stop (train.time_limit_s), the step guard (a NaN in one rank's gradients, a spike, clustered spikes rolling back), the EMA under
ZeRO-3, and the held-out validation across a resume (its world-size test: test_validation.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.faults import fault_env
from tests.train_runs import STEPS, _cmd, _crash_in_save, _env, _history, _run

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five clips not in the training data, for train.validation."""
    import random

    from tests.latents import write_latent_shards

    r = random.Random(1)
    shapes = [(4, r.choice([1, 2, 3]), r.choice([4, 6, 8]), r.choice([4, 6, 8])) for _ in range(5)]
    out = tmp_path_factory.mktemp("held")
    write_latent_shards(out, shapes, per_shard=3, seed=7)
    return out


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = f"step-{step:08d}"
    if not list((run / "checkpoints" / tag).glob("*optim_states.pt")):  # ZeRO-0: whole weights
        f = run / "checkpoints" / tag / "mp_rank_00_model_states.pt"
        return torch.load(f, map_location="cpu", weights_only=False)["module"]
    return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=tag)


def _ema(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "ema.safetensors"))


def _state(run: Path, step: int) -> dict:  # type: ignore[type-arg]
    return json.loads((run / "checkpoints" / f"step-{step:08d}" / "trainer_state.json").read_text())


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


KEEP_ALL = ("--set", "train.keep_checkpoints=0")
# Judging starts once min_history steps after the 3-step warm-up are in: from step 6.
GUARD = ("--set", "train.guard.spike_factor=5", "--set", "train.guard.min_history=2")


def test_async_saves_equal_sync_saves_and_survive_kill_9_while_writing(
    latents: Path,
    held_out: Path,
    tmp_path: Path,
) -> None:
    """ZeRO-3 on 2 ranks, a checkpoint every step. The asynchronous run is killed (rank 0,
    SIGKILL) in its saving thread after DeepSpeed's first file of step 6 is written, while the
    loop trains on; the previous checkpoint is used, and the resumed run's checkpoints equal the
    synchronous run's at every step, bit for bit: weights, the partitioned EMA, losses. That EMA
    equals the unpartitioned EMA recomputed in this process from the run's initial weights and
    every step's weights."""
    every = (
        "--set",
        "train.checkpoint_every=1",
        "--set",
        f"train.validation.latents={held_out}",
        "--set",
        "train.validation.every=5",
    )
    _run(_cmd(2, latents, tmp_path, "sync", 3, *KEEP_ALL, *every))
    cmd = _cmd(
        2, latents, tmp_path, "async", 3, *KEEP_ALL, *every, "--set", "train.checkpoint_async=true"
    )
    _crash_in_save(cmd, 6, "save:inside")
    ck = tmp_path / "async" / "checkpoints"
    assert (ck / "latest").read_text() == "step-00000005"
    assert [p.name[:22] for p in ck.glob("step-00000006*")] == ["step-00000006.partial-"]
    log = _run([*cmd, "--resume", "auto"])
    assert "resumed from step-00000005" in log and "in the background" in log
    for step in range(1, STEPS + 1):
        assert _equal(_weights(tmp_path / "async", step), _weights(tmp_path / "sync", step)), step
        assert _equal(_ema(tmp_path / "async", step), _ema(tmp_path / "sync", step)), step
    assert _history(tmp_path, "async") == _history(tmp_path, "sync")
    # The held-out validation (train.validation) after the kill and resume: the same numbers.
    val = [_state(tmp_path / r, STEPS)["validation"] for r in ("async", "sync")]
    assert val[0] == val[1] and [v["step"] for v in val[0]] == [5, 10]
    assert val[0][1]["loss"] < val[0][0]["loss"]  # it learns what generalises to held-out clips
    summary = json.loads((tmp_path / "async" / "train_summary.json").read_text())
    assert len(summary["checkpoint_blocked_s"]) == STEPS - 5  # the resumed launch's saves

    from trainer.ema import EMA
    from trainer.sample import load_model
    from trainer.train import build_model

    _, cfg, _ = load_model(ck / "step-00000001", use_ema=False)
    seed = json.loads((ck / "step-00000001" / "trainer_state.json").read_text())["run"]["seed"]
    torch.manual_seed(seed)
    model = build_model(cfg)  # the trainer's initial weights: same seed, same construction
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    for step in range(1, STEPS + 1):
        model.load_state_dict(_weights(tmp_path / "sync", step))
        ema.update(step)
    saved = _ema(tmp_path / "sync", STEPS)
    assert saved.keys() == ema.shadow.keys()
    for k, v in ema.shadow.items():
        torch.testing.assert_close(saved[k], v, rtol=1e-6, atol=1e-7)
    assert not _equal(saved, _weights(tmp_path / "sync", STEPS))  # it is an average


def test_nan_in_one_ranks_gradients_skips_the_step_on_every_rank(
    latents: Path,
    tmp_path: Path,
) -> None:
    """Rank 1's gradients of step 6 are NaN (its loss is not): DeepSpeed's ZeRO-2 drops the update
    on both ranks and the guard books the skip; weights and EMA after step 6 equal those after
    step 5. A gradient spike on the same step goes the other way (the guard's veto inside the
    optimizer step) and the two runs end bit-identical: neither saw that batch's update."""
    every = ("--set", "train.checkpoint_every=1")
    log = _run(
        _cmd(2, latents, tmp_path, "nan", 2, *KEEP_ALL, *GUARD, *every), fault_env("grad:nan@6/1")
    )
    assert "step 6 skipped (gradient norm is inf)" in log and "samples: clip" in log
    run = tmp_path / "nan"
    assert _equal(_weights(run, 5), _weights(run, 6)) and _equal(_ema(run, 5), _ema(run, 6))
    assert not _equal(_weights(run, 6), _weights(run, 7))  # the next step trains again
    log = _run(
        _cmd(2, latents, tmp_path, "spike", 2, *KEEP_ALL, *GUARD, *every), fault_env("grad:1e6@6/1")
    )
    assert "step 6 skipped (gradient norm" in log and "x its running median" in log
    end = _weights(run, STEPS)
    assert all(torch.isfinite(v).all() for v in end.values())
    assert _equal(end, _weights(tmp_path / "spike", STEPS))
    assert _equal(_ema(run, STEPS), _ema(tmp_path / "spike", STEPS))
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["skipped_steps"] == [6] and summary["rollbacks"] == 0


def test_clustered_spikes_roll_back_and_a_resume_keeps_the_window(
    latents: Path,
    tmp_path: Path,
) -> None:
    """Spikes in steps 6 and 7 (max_skips 2): the run rolls back to step 6's checkpoint and never
    trains on the data of those steps again. The same run killed right after its rollback (before
    any later save) and resumed from that older checkpoint skips the window too (run-level record)
    and ends bit-identical. One rank, ZeRO-0: the guard computes the norm itself there."""
    more = (*GUARD, "--set", "train.guard.max_skips=2")
    spikes = "grad:1e6@6,7"
    log = _run(_cmd(1, latents, tmp_path, "rb", 0, *more), fault_env(spikes))
    assert "rolled back from step 7 to step-00000006" in log
    assert "skipped (a rolled-back window)" in log
    assert json.loads((tmp_path / "rb" / "train_summary.json").read_text())["rollbacks"] == 1

    cmd = _cmd(1, latents, tmp_path, "rb2", 0, *more)
    p = subprocess.run(
        cmd, cwd=REPO, env=_env(fault_env(f"{spikes};rollback@6")), capture_output=True, text=True
    )
    assert p.returncode != 0 and "step 7 skipped" in p.stderr, p.stderr[-2000:]
    windows = json.loads((tmp_path / "rb2" / "guard_windows.json").read_text())
    assert windows == json.loads((tmp_path / "rb" / "guard_windows.json").read_text())
    assert (tmp_path / "rb2" / "checkpoints" / "latest").read_text() == "step-00000006"
    log = _run([*cmd, "--resume", "auto"], fault_env(f"{spikes};rollback@6"))
    assert "resumed from step-00000006" in log and "skipped (a rolled-back window)" in log
    assert _history(tmp_path, "rb2") == _history(tmp_path, "rb")
    assert _equal(_weights(tmp_path / "rb2", STEPS), _weights(tmp_path / "rb", STEPS))

    # ZeRO-0 writes no partitions, on which DeepSpeed's zero_to_fp32 fails: export and sampling
    # without the EMA read the whole module from its model states (the demo trains at ZeRO-0).
    from trainer.checkpoint import export_weights
    from trainer.weights import read_weights

    tag = f"step-{STEPS:08d}"
    out = export_weights(tmp_path / "rb" / "checkpoints", tag, tmp_path / "export")
    exported = load_file(str(out / "model.safetensors"))
    assert _equal(exported, _weights(tmp_path / "rb", STEPS))
    live, _, _ = read_weights(tmp_path / "rb" / "checkpoints" / tag, use_ema=False)
    assert _equal(live, exported) and not _equal(live, _ema(tmp_path / "rb", STEPS))


def test_a_time_limit_stops_both_ranks_at_one_step_checkpointed_and_resume_goes_on(
    latents: Path,
    tmp_path: Path,
) -> None:
    """A time limit shorter than the launch's setup: rank 0's clock says stop after the first
    step and both ranks stop there (a rank deciding alone would hang the other in the next
    step's collectives); step 1, not a multiple of checkpoint_every, is checkpointed and the
    launch exits 0. `--resume auto` without the limit trains the rest."""
    cmd = _cmd(2, latents, tmp_path, "tl", 2)
    log = _run([*cmd, "--set", "train.time_limit_s=0.5"])
    assert f"time limit: stopped at step 1 of {STEPS}, checkpointed" in log
    run = tmp_path / "tl"
    assert (run / "checkpoints" / "latest").read_text() == "step-00000001"
    assert json.loads((run / "train_summary.json").read_text())["stopped_at_time_limit"] is True
    log = _run([*cmd, "--resume", "auto"])
    assert "resumed from step-00000001" in log
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["trained_steps"] == STEPS - 1
    assert summary["stopped_at_time_limit"] is False
