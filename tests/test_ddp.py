"""Data parallel training through torchrun on CPU (gloo): two processes with per-process
batch b give the same loss curve as one process with batch 2b, and both ranks end with
identical parameters.

The workers run the same ``train`` function as ``boldgpt train`` with the tiny model of
test_train.py (deterministic: no random masks or dropout, so both runs see exactly the
same computation up to float summation order).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from subprocess import PIPE

import pytest
import torch

from boldgpt.engine.logs import read_log

TESTS = Path(__file__).resolve().parent

WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import torch
    from boldgpt.engine.config import config_from_dict
    from boldgpt.engine.distributed import shutdown
    from boldgpt.engine.train import train
    from test_train import ToyModel, toy_data

    cfg = json.loads(sys.argv[1])
    torch.manual_seed(0)
    model = ToyModel(mask_ratio=0.0, dropout=0.0)
    result = train(config_from_dict(cfg), model=model, data=toy_data(n_train=64, n_val=24))
    rank = int(__import__("os").environ.get("RANK", "0"))
    torch.save(model.state_dict(), f"{{cfg['out_dir']}}/rank{{rank}}.pt")
    print(f"rank {{rank}} done: {{result.status}} at step {{result.step}}", flush=True)
    shutdown(0)
    """
)


def config(out_dir: Path, batch_size: int, max_steps: int = 10) -> dict:
    return {
        "out_dir": str(out_dir),
        "seed": 5,
        "data": {"batch_size": batch_size},
        "optim": {"lr": 3e-3, "min_lr": 1e-4, "warmup_steps": 2, "accumulation": 2},
        "train": {"max_steps": max_steps, "eval_every": 5, "eval_batches": 0, "device": "cpu"},
        "log": {"every": 1, "tensorboard": False, "progress": False, "figures_every": 0},
        "checkpoint": {"every": 5, "keep": 1, "resume": "no"},
    }


def launch(tmp_path: Path, nproc: int, cfg: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port through the c10d rendezvous
        "--nproc_per_node",
        str(nproc),
        str(script),
        json.dumps(cfg),
    ]
    # A new session, so that on a hang the whole group (torchrun and its workers) dies.
    proc = subprocess.Popen(
        cmd, stdout=PIPE, stderr=PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{stderr[-4000:]}"
    assert "terminate called" not in stderr
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    two = launch(tmp_path, 2, config(tmp_path / "two", batch_size=4))
    assert "rank 0 done: finished at step 10" in two.stdout
    assert "rank 1 done: finished at step 10" in two.stdout
    launch(tmp_path, 1, config(tmp_path / "one", batch_size=8))

    def curve(out_dir: Path, split: str) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in read_log(out_dir) if r["split"] == split]

    one_train, two_train = curve(tmp_path / "one", "train"), curve(tmp_path / "two", "train")
    assert [s for s, _ in one_train] == list(range(1, 11))
    assert [s for s, _ in two_train] == list(range(1, 11))
    for (step, a), (_, b) in zip(one_train, two_train):
        assert b == pytest.approx(a, rel=1e-5), f"train loss differs at step {step}"
    for (step, a), (_, b) in zip(curve(tmp_path / "one", "val"), curve(tmp_path / "two", "val")):
        assert b == pytest.approx(a, rel=1e-5), f"val loss differs at step {step}"
    # the loss went down, so the comparison is over a real trajectory
    assert one_train[-1][1] < one_train[0][1]

    rank0 = torch.load(tmp_path / "two" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "two" / "rank1.pt", weights_only=True)
    single = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    # only rank 0 wrote checkpoints and logs
    ckpt = torch.load(tmp_path / "two" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["global_batch_size"] == 16
    assert len(ckpt["rng"]) == 2


CLI_CONFIG = """
out_dir: {out_dir}
seed: 3
data: {{source: "{source}", batch_size: {batch_size}}}
model:
  name: boldgpt_micro_patch10
  # the fixed order (no random orders) and no dropout: a deterministic model, so one
  # and two processes compute the same thing up to float summation order
  kwargs: {{shuffle: false, embed_dim: 64, depth: 2, num_heads: 2}}
optim: {{lr: 2.0e-3, warmup_steps: 2}}
train: {{max_steps: 6, eval_every: 3, eval_batches: 0, device: cpu}}
log: {{every: 1, tensorboard: false, progress: false, figures_every: 0}}
checkpoint: {{every: 3, resume: "no"}}
"""


@pytest.mark.slow
def test_cli_under_torchrun_matches_one_process(tmp_path):
    """`torchrun -m boldgpt train` with the real model and data pipeline (rank 0 builds
    the cache while rank 1 waits) against `boldgpt train` in one process."""
    from nsd_tiny import build_tiny_nsd

    tiny = build_tiny_nsd(tmp_path / "nsd", with_mask=True, trials_per_session=24)
    env = {
        **os.environ,
        "BOLDGPT_HOME": str(tmp_path / "home"),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }

    def run(nproc: int, name: str, batch_size: int) -> subprocess.CompletedProcess:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            CLI_CONFIG.format(out_dir=tmp_path / name, source=tiny.root, batch_size=batch_size)
        )
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        cmd = [sys.executable, *launcher, "-m", "boldgpt", "train", str(cfg)]
        if nproc == 1:
            cmd = [sys.executable, "-m", "boldgpt", "train", str(cfg)]
        proc = subprocess.Popen(
            cmd, stdout=PIPE, stderr=PIPE, text=True, env=env, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{name} timed out:\n{err[-4000:]}")
        assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{err[-4000:]}"
        assert "terminate called" not in err
        return subprocess.CompletedProcess(cmd, 0, out, err)

    two = run(2, "two", batch_size=4)
    assert two.stdout.count("done: step 6") == 1  # only rank 0 reports
    run(1, "one", batch_size=8)

    for split in ("train", "val"):
        a = [(r["step"], r["loss"]) for r in read_log(tmp_path / "one") if r["split"] == split]
        b = [(r["step"], r["loss"]) for r in read_log(tmp_path / "two") if r["split"] == split]
        assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 2
        for (step, x), (_, y) in zip(a, b):
            assert y == pytest.approx(x, rel=1e-5), f"{split} loss differs at step {step}"

    from safetensors.torch import load_file

    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two_state = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for name, value in one.items():
        torch.testing.assert_close(two_state[name], value, rtol=1e-4, atol=1e-5, msg=name)
