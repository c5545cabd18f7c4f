"""Launch plumbing without starting ranks: rank variables, OMP threads, the deepspeed
launcher's argument, the SLURM mapping and the sbatch script the submitit launcher writes."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from conftest import compose_config
from dsvl_exp.errors import UserError
from dsvl_exp.training import rendezvous
from dsvl_exp.training.launch import check_local_settings, launch_config


def test_external_launcher_is_detected_from_torch_rank_variables():
    assert rendezvous.started_by_external_launcher({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert not rendezvous.started_by_external_launcher({"RANK": "0"})
    assert not rendezvous.started_by_external_launcher({})


def test_local_world_size_from_torchrun_or_deepspeed():
    assert rendezvous.local_world_size({"LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"}) == 4
    assert rendezvous.local_world_size({"LOCAL_SIZE": "2", "WORLD_SIZE": "8"}) == 2  # deepspeed launcher
    assert rendezvous.local_world_size({"WORLD_SIZE": "3"}) == 3


def test_omp_threads_share_the_cores_at_least_one_each():
    assert rendezvous.omp_threads_per_rank(16, 4) == 4
    assert rendezvous.omp_threads_per_rank(2, 2) == 1
    assert rendezvous.omp_threads_per_rank(2, 8) == 1
    assert rendezvous.omp_threads_per_rank(16, 4, configured=3) == 3
    with pytest.raises(UserError, match="launcher.omp_num_threads=0"):
        rendezvous.omp_threads_per_rank(16, 4, configured=0)


def test_deepspeed_local_rank_argument_is_removed_before_hydra_parses():
    kept, local_rank = rendezvous.without_local_rank_argument(["--local_rank=1", "zero=3", "train.max_steps=5"])
    assert kept == ["zero=3", "train.max_steps=5"] and local_rank == 1
    kept, local_rank = rendezvous.without_local_rank_argument(["zero=3", "--local_rank", "0"])
    assert kept == ["zero=3"] and local_rank == 0
    assert rendezvous.without_local_rank_argument(["zero=2"]) == (["zero=2"], None)


SLURM_TASK = {
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "gpu[003-004]",
    "SLURM_JOB_ID": "123456",
    "SUBMITIT_EXECUTOR": "slurm",  # set by submitit in every task it starts
}


def slurm_task(monkeypatch, **changes):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**SLURM_TASK, **changes}.items():
        monkeypatch.setenv(name, value)
    return rendezvous.slurm_rendezvous_env()


class HelperAnswer:
    """What submitit's TorchDistributedEnvironment answers, every field a different value (so a
    swapped field shows); how submitit derives them (node list, port from the job id) is its own."""
    rank, local_rank, world_size, local_world_size = 5, 1, 8, 4
    master_addr, master_port = "gpu003", 41234


def test_slurm_task_maps_submitits_answer_to_torch_rank_variables(monkeypatch):
    import submitit.helpers

    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment", HelperAnswer)
    assert slurm_task(monkeypatch) == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                                       "MASTER_ADDR": "gpu003", "MASTER_PORT": "41234"}
    assert slurm_task(monkeypatch, MASTER_ADDR="10.0.0.7")["MASTER_ADDR"] == "10.0.0.7"  # a user's address wins


def test_the_real_submitit_helper_reads_the_variables_of_a_slurm_task(monkeypatch):
    """The one contact with the dependency: the task variables above are the ones its helper reads."""
    env = slurm_task(monkeypatch)
    assert {name: env[name] for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")} == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
    assert env["MASTER_ADDR"].startswith("gpu") and env["MASTER_PORT"].isdigit()


@pytest.mark.parametrize("missing", ["SLURM_PROCID", "SLURM_JOB_NODELIST", "SUBMITIT_EXECUTOR"])
def test_a_task_missing_one_slurm_variable_is_refused_naming_it(monkeypatch, missing):
    for name, value in SLURM_TASK.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv(missing, raising=False)
    with pytest.raises(UserError, match=f"no submitit SLURM task \\(no {missing}.*hydra/launcher=slurm"):
        rendezvous.slurm_rendezvous_env()


def test_slurm_mapping_outside_slurm_names_what_is_missing(monkeypatch):
    for name in SLURM_TASK:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="SLURM_PROCID.*launcher=slurm"):
        rendezvous.slurm_rendezvous_env()


def test_local_launch_config_is_one_node_c10d():
    config = launch_config(nproc_per_node=2, rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:29400", max_restarts=0,
                           monitor_interval=0.1, start_method="spawn", run_id="abc")
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (1, 1, 2)
    assert (config.rdzv_backend, config.rdzv_endpoint, config.start_method, config.max_restarts) == ("c10d", "127.0.0.1:29400", "spawn", 0)


def test_impossible_local_settings_fail_naming_the_key():
    with pytest.raises(UserError, match="launcher.nproc_per_node=0"):
        check_local_settings(0)
    import torch

    if torch.cuda.is_available():
        with pytest.raises(UserError, match="launcher.nproc_per_node=4096 but only"):
            check_local_settings(4096)
    else:  # allowed on CPU (ranks share cores), but said
        with pytest.warns(UserWarning, match="launcher.nproc_per_node=4096 is more than"):
            check_local_settings(4096)


def test_launcher_group_defaults_to_one_local_rank():
    cfg = compose_config("launcher.nproc_per_node=2")
    assert cfg.launcher.kind == "local" and cfg.launcher.nproc_per_node == 2 and cfg.launcher.rdzv_backend == "c10d"
    with pytest.raises(Exception, match="nproc_per_node"):
        compose_config("launcher.nproc_per_node=two")


def test_slurm_launcher_composes_and_writes_the_expected_sbatch(tmp_path, monkeypatch):
    cfg = compose_config("launcher=slurm", "launcher.nodes=2", "launcher.nproc_per_node=4", "launcher.gpus_per_node=4",
                         "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}", hydra=True)
    assert cfg.launcher.kind == "slurm"
    assert cfg.hydra.launcher._target_.endswith("hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.gpus_per_node) == (2, 4, 4)

    # Drive the real plugin up to submission: it builds submitit's SLURM executor (which only
    # checks that `srun` exists) and hands it the job array; capture the sbatch script instead.
    fake_srun = tmp_path / "bin" / "srun"
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/sh\n")
    fake_srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_srun.parent}:/usr/bin:/bin")
    import submitit

    scripts = []
    monkeypatch.setattr(submitit.AutoExecutor, "map_array",
                        lambda self, fn, *args: scripts.append(self._executor._make_submission_file_text("python job.py", "0")) or [])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([["launcher=slurm"]], initial_job_idx=0)
    (script,) = scripts
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu"):
        assert line in script.splitlines(), line
    assert "srun" in script
    assert "export SUBMITIT_EXECUTOR=slurm" in script.splitlines()  # what slurm_rendezvous_env relies on


def test_thread_count_is_decided_in_one_place():
    assert rendezvous.threads_for_rank({"LOCAL_WORLD_SIZE": "2"}, configured=3) == 3
    assert rendezvous.threads_for_rank({"OMP_NUM_THREADS": "5", "LOCAL_WORLD_SIZE": "2"}) == 5  # the user's (or torchrun's)
    assert rendezvous.threads_for_rank({"LOCAL_WORLD_SIZE": "2"}) == max(1, rendezvous.cpu_count() // 2)


def test_launch_modules_do_not_import_each_other():
    """job_relay and launch both use rank_entry.train_on_rank; neither imports the other at module level."""
    import ast
    from pathlib import Path

    import dsvl_exp.training as training

    def imports(name):
        tree = ast.parse((Path(training.__file__).parent / f"{name}.py").read_text())
        return {node.module for node in tree.body if isinstance(node, ast.ImportFrom)} | {
            f"{node.module}.{alias.name}" for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names}

    assert not {m for m in imports("job_relay") if "launch" in m}
    assert "dsvl_exp.training.rank_entry" in imports("job_relay") and "dsvl_exp.training.rank_entry" in imports("launch")


def test_a_ranks_user_error_comes_back_as_one_user_error():
    from types import SimpleNamespace

    from dsvl_exp.training.launch import user_error_of_ranks

    def failed(text):  # what torch's @record writes for a rank's exception
        return SimpleNamespace(failures={1: SimpleNamespace(message={"message": text, "extraInfo": {"timestamp": "0"}})})

    error = user_error_of_ranks(failed("DataError: d.jsonl:1: image file not found: x.png"))
    assert isinstance(error, UserError) and str(error) == "d.jsonl:1: image file not found: x.png"
    assert user_error_of_ranks(failed("RuntimeError: boom")) is None  # internal: the full report stays
