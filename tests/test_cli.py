"""The ``falign`` command run as a user runs it: a subprocess, exit codes, stderr, files on disk.

Every bad input must end with exit code 2, exactly one stderr line ``falign: error: ...``, no
traceback, and the files already in the output directory untouched, byte for byte.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ONE_THREAD, mnist_or_skip, tiny_config

from falign.training import parse_config, train

# written out, not read from the registry: a rule that vanished from `falign rules` must fail here
RULES = {"bp", "fa", "usf", "frsf", "brsf", "usf_norm", "sign_tracking", "kp", "dfa", "wm", "dkp", "drtp",
         "sdfa"}
VOLATILE = ("seconds",)
pytestmark = pytest.mark.usefixtures("one_thread")


def falign(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falign", *args], capture_output=True, text=True,
                          env={**os.environ, **ONE_THREAD, **(env or {})}, cwd=cwd, timeout=timeout)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ bad inputs

def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _killed(run: Path) -> None:
    """The record of a run killed part-way: a resume reads its last.pt (a finished run's is not
    needed: the run is read back)."""
    tracking = json.loads((run / "tracking.json").read_text())
    (run / "tracking.json").write_text(json.dumps({**tracking, "status": "running"}))


def _garbage_ckpt(data: bytes):
    def prepare(run: Path) -> None:
        _killed(run)
        (run / "last.pt").write_bytes(data)
    return prepare


def _truncated_ckpt(run: Path) -> None:
    _killed(run)
    raw = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(raw[: len(raw) // 2])


def _foreign_ckpt(run: Path) -> None:
    _killed(run)
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 3}, run / "last.pt")


def _unfinished_without_last_pt(run: Path) -> None:
    """What a run stopped part-way leaves once its last.pt is deleted."""
    tracking = json.loads((run / "tracking.json").read_text())
    (run / "tracking.json").write_text(json.dumps({**tracking, "status": "interrupted"}))
    (run / "last.pt").unlink()


# name -> (config: dict | str | bytes, extra args, env, prepare(run_dir), fragment of the message)
CASES = {
    "invalid_yaml": ("optim:\n  lr: 0.1\n  momentum: [0.9\ntrain: {epochs: 1}\n", ["--overwrite"],
                     {}, None, "line"),
    "unknown_key": (tiny_config(optim={"lrr": 0.1}), ["--overwrite"], {}, None,
                    "did you mean 'optim.lr'"),
    "unknown_rule": (tiny_config(rule={"name": "fq"}), ["--overwrite"], {}, None,
                     "did you mean 'fa'"),
    "unknown_model": (tiny_config(model={"name": "mlpp", "options": {}}), ["--overwrite"], {}, None,
                      "mlpp"),
    "unknown_dataset": (tiny_config(data={"name": "mnistt"}), ["--overwrite"], {}, None, "mnistt"),
    "missing_dataset_files": (tiny_config(), ["--overwrite"], {"FALIGN_DATA": "<empty>"}, None,
                              "train-images-idx3-ubyte"),
    "garbage_last_pt": (tiny_config(), ["--resume"], {},
                        _garbage_ckpt(random.Random(0).randbytes(4096)), "last.pt"),
    "foreign_checkpoint": (tiny_config(), ["--resume"], {}, _foreign_ckpt, "not a falign checkpoint"),
    "dir_holds_another_run": (tiny_config(train={"epochs": 2}), [], {}, None, "holds another run"),
}
# More bad inputs, run through ``falign.cli.main.main`` in this process (a subprocess costs a
# torch import each); same contract.
MORE_CASES = {
    "wrong_type": (tiny_config(train={"epochs": "ten"}), ["--overwrite"], None, "train.epochs"),
    "lr_not_positive": (tiny_config(optim={"lr": 0}), ["--overwrite"], None, "optim.lr"),
    "empty_last_pt": (tiny_config(), ["--resume"], _garbage_ckpt(b""), "last.pt"),
    "truncated_last_pt": (tiny_config(), ["--resume"], _truncated_ckpt, "last.pt"),
    "resume_other_config": (tiny_config(optim={"lr": 0.2}), ["--resume"], None, "different"),
    "missing_config": (None, ["--overwrite"], None, "not found"),
    "text_last_pt": (tiny_config(), ["--resume"], _garbage_ckpt(b"hello world\n"), "last.pt"),
    "text_last_pt_2": (tiny_config(), ["--resume"], _garbage_ckpt(b"this is not a checkpoint\n"),
                       "last.pt"),
    "binary_config": (b"\xff\xfe\x00\x80 not utf-8", ["--overwrite"], None, "config"),
    "list_yaml_with_set": ("- a\n- b\n", ["--overwrite", "--set", "optim.lr=0.1"], None, "mapping"),
    "dfa_loop_without_dfa": (tiny_config(rule={"name": "fa", "options": {"average": "batch"}}),
                             ["--overwrite"], None, "no option 'average'"),
    "unknown_device": (tiny_config(device="gpu"), ["--overwrite"], None, "device"),
    "epochs_zero": (tiny_config(train={"epochs": 0}), ["--overwrite"], None, "train.epochs"),
    "resume_unfinished_without_last_pt": (tiny_config(), ["--resume"], _unfinished_without_last_pt,
                                          "last.pt: missing"),
}


def _write_config(path: Path, config) -> Path:
    if isinstance(config, dict):
        _write_yaml(path, config)
    elif isinstance(config, bytes):
        path.write_bytes(config)
    elif isinstance(config, str):
        path.write_text(config)
    return path


@pytest.fixture(scope="module")
def prior_run(data_root, tmp_path_factory) -> Path:
    """One finished run (plus a file of the user's own) that every bad-input case runs against."""
    prior = tmp_path_factory.mktemp("prior") / "run"
    train(parse_config(tiny_config()), prior, log=None)
    (prior / "notes.txt").write_text("the user's own notes\n")
    return prior


@pytest.fixture(scope="module")
def cli_results(prior_run, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, dict, dict]]:
    """Run every subprocess case once, a few at a time, each against a copy of ``prior_run``."""
    root = tmp_path_factory.mktemp("cli")
    empty = root / "empty-data"
    empty.mkdir()
    jobs = {}
    for name, (config, extra, env, prepare, _) in CASES.items():
        case_dir = root / name
        case_dir.mkdir()
        cfg_path = _write_config(case_dir / "config.yaml", config)
        run = case_dir / "run"
        shutil.copytree(prior_run, run)
        if prepare is not None:
            prepare(run)
        env = {k: (str(empty) if v == "<empty>" else v) for k, v in env.items()}
        jobs[name] = (["train", str(cfg_path), "--out", str(run), *extra], env, run, snapshot(run))

    def one(name):
        args, env, _, _ = jobs[name]
        return name, falign(*args, env=env)

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        done = dict(pool.map(one, jobs))
    return {name: (done[name], jobs[name][3], snapshot(jobs[name][2])) for name in jobs}


def _check_error(rc: int, stderr: str, fragment: str, before: dict, after: dict) -> None:
    lines = stderr.splitlines()
    assert "Traceback" not in stderr, stderr
    assert rc == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("falign: error: ")
    assert fragment in lines[0]
    assert after.keys() == before.keys()
    for name, content in before.items():
        assert after[name] == content, f"{name} was modified"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_touches_nothing(cli_results, case):
    proc, before, after = cli_results[case]
    _check_error(proc.returncode, proc.stderr, CASES[case][4], before, after)


@pytest.mark.parametrize("case", list(MORE_CASES))
def test_more_bad_inputs_in_process(prior_run, tmp_path, capsys, case):
    from falign.cli.main import main

    config, extra, prepare, fragment = MORE_CASES[case]
    cfg_path = _write_config(tmp_path / "config.yaml", config)
    run = tmp_path / "run"
    shutil.copytree(prior_run, run)
    if prepare is not None:
        prepare(run)
    before = snapshot(run)
    rc = main(["train", str(cfg_path), "--out", str(run), *extra])
    _check_error(rc, capsys.readouterr().err, fragment, before, snapshot(run))


def test_bad_input_cases_start_from_a_real_run(cli_results):
    # the copies the cases ran against hold a finished run, so "nothing overwritten" means something
    _, before, _ = cli_results["dir_holds_another_run"]
    assert {"tracking.json", "last.pt", "best.pt", "config.yaml", "notes.txt"} <= before.keys()
    assert json.loads(before["tracking.json"])["status"] == "completed"


def test_rules_lists_every_registered_rule():
    proc = falign("rules")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert sorted(names) == sorted(RULES)
    for line in proc.stdout.splitlines():
        assert len(line.split(None, 1)) == 2, f"rule without a description: {line!r}"


# ------------------------------------------------------------------------------ kill and resume

def _metrics(tracking: dict) -> dict:
    epochs = [{k: v for k, v in e.items() if k not in VOLATILE} for e in tracking["epochs"]]
    return {"epochs": epochs, **{k: tracking[k] for k in
                                 ("best_epoch", "best_val_acc", "test_acc", "status", "config")}}


def _epochs_done(run: Path) -> int:
    try:
        return len(json.loads((run / "tracking.json").read_text())["epochs"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_sigkill_mid_run_then_resume_matches_uninterrupted(data_root, tmp_path):
    epochs = 6
    cfg = _write_yaml(tmp_path / "cfg.yaml", tiny_config(data={"subset": 1000},
                                                         optim={"momentum": 0.9},
                                                         train={"epochs": epochs}))
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    cmd = [sys.executable, "-m", "falign", "train", str(cfg), "--out"]
    env = {**os.environ, **ONE_THREAD}
    reference = subprocess.Popen([*cmd, str(whole)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=env)
    victim = subprocess.Popen([*cmd, str(killed)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while _epochs_done(killed) < 1 and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL, "the run ended before it was killed"
        assert reference.wait(timeout=120) == 0
    finally:
        for p in (victim, reference):
            if p.poll() is None:
                p.kill()
                p.wait()
    saved = torch.load(killed / "last.pt", weights_only=True)
    assert 1 <= saved["epoch"] < epochs
    assert json.loads((killed / "tracking.json").read_text())["status"] == "running"

    proc = subprocess.run([*cmd, str(killed), "--resume"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr

    got = json.loads((killed / "tracking.json").read_text())
    want = json.loads((whole / "tracking.json").read_text())
    assert len(want["epochs"]) == epochs
    assert _metrics(got) == _metrics(want)
    a = torch.load(killed / "last.pt", weights_only=True)["model"]
    b = torch.load(whole / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("command", ["train", "compare", "compare_seeds"])
def test_the_same_command_twice_reads_the_finished_runs_back(data_root, tmp_path, capsys, command):
    from falign.cli.main import main

    cfg = str(_tiny_file(tmp_path))
    out = tmp_path / "out"
    argv = {"train": ["train", cfg], "compare": ["compare", "--config", cfg, "--rules", "bp,fa"],
            "compare_seeds": ["compare", "--config", cfg, "--rules", "fa", "--seeds", "0,1"]}[command]
    argv += ["--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    runs = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*"))
            if p.suffix == ".pt" or p.name == "tracking.json"}
    assert main(argv) == 0, capsys.readouterr().err  # the README's command, run again
    again = capsys.readouterr()
    assert again.err == ""
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in runs} == runs  # nothing trained
    if command != "train":  # the table printed again, with the same numbers
        table = [line for line in first.splitlines() if line.startswith(("bp ", "fa "))]
        assert table and table == [line for line in again.out.splitlines()
                                   if line.startswith(("bp ", "fa "))]
    # another config in the same folder is still refused, and touches nothing
    rc = main([*argv, "--set", "optim.lr=0.2"])
    _check_error(rc, capsys.readouterr().err, "holds another", {}, {})
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in runs} == runs


# --------------------------------------------------------------- every flag honoured or refused
# In this process (``main``): each flag a command takes either reaches the run / report, or is
# refused with one line, exit 2 and no directory made.

def _refused(capsys, rc: int, fragment: str, *absent: Path) -> None:
    err = capsys.readouterr().err
    _check_error(rc, err, fragment, {}, {})
    for path in absent:
        assert not path.exists(), f"{path} was made: {sorted(p.name for p in path.iterdir())}"


def _tiny_file(tmp_path: Path, **sections) -> Path:
    return _write_yaml(tmp_path / "tiny.yaml", tiny_config(**sections))


# flag -> (its arguments, the config value it sets, the value, a check of its effect on the run)
COMPARE_FLAGS = {
    "--seed": (["--seed", "3"], lambda c: c["seed"], 3, lambda t: True),
    "--subset": (["--subset", "300"], lambda c: c["data"]["subset"], 300,
                 lambda t: t["dataset"].endswith(" 300/200/300")),
    "--batch-size": (["--batch-size", "100"], lambda c: c["train"]["batch_size"], 100, lambda t: True),
    "--device": (["--device", "cpu"], lambda c: c["device"], "cpu",
                 lambda t: t["environment"]["device"] == "cpu"),
    "--epochs": (["--epochs", "2"], lambda c: c["train"]["epochs"], 2, lambda t: len(t["epochs"]) == 2),
}


@pytest.mark.parametrize("flag", list(COMPARE_FLAGS))
def test_compare_config_flag_replaces_the_configs_value(data_root, tmp_path, capsys, flag):
    from falign.cli.main import main

    args, value_of, want, took_effect = COMPARE_FLAGS[flag]
    base = tiny_config(device="auto")  # seed 0, subset 600, batch 50, 1 epoch
    out = tmp_path / "cmp"
    rc = main(["compare", "--config", str(_tiny_file(tmp_path, device="auto")), "--rules", "fa",
               "--out", str(out), *args])
    assert rc == 0, capsys.readouterr().err
    tracking = json.loads((out / "fa" / "tracking.json").read_text())
    saved = yaml.safe_load((out / "fa" / "config.yaml").read_text())
    compared = json.loads((out / "compare.json").read_text())["base"]
    assert value_of(tracking["config"]) == value_of(saved) == value_of(compared) == want
    assert took_effect(tracking), tracking["dataset"]
    for other, (_, other_value, _, _) in COMPARE_FLAGS.items():  # the flags not given: the config's
        if other != flag:
            assert other_value(tracking["config"]) == other_value(base), other


def test_compare_without_config_keeps_its_defaults_and_takes_every_flag():
    from falign.cli.main import build_parser, compare_base

    cfg = compare_base(build_parser().parse_args(["compare"]))
    assert (cfg.seed, cfg.train.batch_size, cfg.device, cfg.train.epochs, cfg.data.subset,
            cfg.data.name, cfg.model.name) == (0, 128, "auto", 5, None, "mnist", "mlp")
    cfg = compare_base(build_parser().parse_args(
        ["compare", "--seed", "3", "--batch-size", "64", "--subset", "100", "--device", "cpu",
         "--epochs", "2", "--dataset", "fashion-mnist", "--model", "lenet", "--set", "optim.lr=0.5"]))
    assert (cfg.seed, cfg.train.batch_size, cfg.device, cfg.train.epochs, cfg.data.subset,
            cfg.data.name, cfg.model.name, cfg.optim.lr) == (3, 64, "cpu", 2, 100, "fashion-mnist",
                                                             "lenet", 0.5)


@pytest.mark.parametrize("flag", [["--dataset", "cifar10"], ["--model", "lenet"]])
def test_compare_config_refuses_dataset_and_model(tmp_path, capsys, flag):
    from falign.cli.main import main

    out = tmp_path / "cmp"
    rc = main(["compare", "--config", str(_tiny_file(tmp_path)), "--out", str(out), *flag])
    _refused(capsys, rc, f"{flag[0]} cannot be combined with --config", out)


def _unavailable(device: str) -> None:
    """Skip the calling test where ``device`` exists on this machine."""
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here, so 'mps' is a valid device")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so 'cuda' is a valid device")
    if device.startswith("cuda:") and int(device[5:]) < torch.cuda.device_count():
        pytest.skip(f"this machine has {device}")


DEVICE_COMMANDS = {
    "config_file": lambda cfg, dev: ["train", str(_write_yaml(cfg, tiny_config(device=dev)))],
    "train_set": lambda cfg, dev: ["train", str(_write_yaml(cfg, tiny_config())), "--set", f"device={dev}"],
    "compare_config_flag": lambda cfg, dev: ["compare", "--config", str(_write_yaml(cfg, tiny_config())),
                                             "--rules", "fa", "--device", dev],
    "compare_flag": lambda cfg, dev: ["compare", "--rules", "fa", "--device", dev],
}


@pytest.mark.parametrize("command", list(DEVICE_COMMANDS))
@pytest.mark.parametrize("device", ["cuda", "cuda:99", "mps"])
def test_unavailable_device_is_one_line_and_makes_nothing(tmp_path, capsys, device, command):
    from falign.cli.main import main

    _unavailable(device)
    out = tmp_path / "out"
    rc = main([*DEVICE_COMMANDS[command](tmp_path / "cfg.yaml", device), "--out", str(out)])
    _refused(capsys, rc, f"'{device}' is not available on this machine", out)


def test_misspelled_shipped_config_suggests_it_and_lists_them(tmp_path, capsys, monkeypatch):
    from falign.cli.main import main
    from falign.training.config import shipped_configs

    monkeypatch.chdir(tmp_path)
    rc = main(["train", "lenet-mnst", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    _check_error(rc, err, "did you mean 'lenet-mnist'?", {}, {})
    assert all(name in err for name in shipped_configs()), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "compare", "compare_config"])
def test_set_unknown_key_suggests_the_key_of_another_section(tmp_path, capsys, command):
    from falign.cli.main import main

    out = tmp_path / "out"
    cfg = str(_tiny_file(tmp_path))
    argv = {"train": ["train", cfg], "compare": ["compare", "--rules", "fa"],
            "compare_config": ["compare", "--config", cfg, "--rules", "fa"]}[command]
    rc = main([*argv, "--set", "train.lr=0.1", "--out", str(out)])
    _refused(capsys, rc, "unknown key 'train.lr'; did you mean 'optim.lr'?", out)


@pytest.mark.parametrize("bad", [(["--dataset", "mnst"], "did you mean 'mnist'"),
                                 (["--model", "mlpp"], "did you mean 'mlp'"),
                                 (["--rules", "fa,fq"], "did you mean 'fa'"),
                                 (["--config", "<mnst>"], "did you mean 'mnist'")],
                         ids=["dataset", "model", "rule", "config_dataset"])
def test_compare_unknown_name_makes_no_directory(tmp_path, capsys, bad):
    from falign.cli.main import main

    args, fragment = bad
    args = [str(_tiny_file(tmp_path, data={"name": "mnst"})) if a == "<mnst>" else a for a in args]
    out = tmp_path / "cmp"
    for _ in range(2):  # the same error again, not "holds another comparison"
        _refused(capsys, main(["compare", *args, "--out", str(out)]), fragment, out)


@pytest.mark.parametrize("command", ["compare", "train"])
def test_a_model_too_big_for_the_images_makes_nothing_and_names_the_padding(data_root, tmp_path, capsys,
                                                                             command):
    import re

    from falign.cli.main import main

    out = tmp_path / "out"
    lenet = tiny_config(model={"name": "lenet", "options": {}}, data={"subset": 100, "val_size": 50})
    argv = {"compare": ["compare", "--dataset", "mnist", "--model", "lenet", "--rules", "fa", "--epochs",
                        "1", "--subset", "100", "--device", "cpu"],
            "train": ["train", str(_write_yaml(tmp_path / "lenet.yaml", lenet))]}[command]
    rc = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    _check_error(rc, err, "too small", {}, {})
    assert not out.exists(), sorted(p.name for p in out.iterdir())  # a corrected retry is not refused
    hint = re.search(r"data\.options\.pad_to: (\d+)", err)
    assert hint, err
    side = int(hint.group(1))
    # the padding named is enough, and no smaller one of the same parity is
    assert main([*argv, "--out", str(out), "--set", f"data.options.pad_to={side}"]) == 0, \
        capsys.readouterr().err
    assert json.loads((out / ("fa" if command == "compare" else ".") / "tracking.json").read_text())[
        "status"] == "completed"
    capsys.readouterr()
    smaller = tmp_path / "smaller"
    _refused(capsys, main([*argv, "--out", str(smaller), "--set", f"data.options.pad_to={side - 2}"]),
             "too small", smaller)


@pytest.mark.parametrize("argv,fragment", [
    (["compare", "--seed", "abc"], "--seed"),
    (["compare", "--batch-size", "0"], "--batch-size"),
    (["compare", "--subset", "-5"], "--subset"),
    (["compare", "--epochs", "-1"], "--epochs"),
    (["compare", "--epochs", "0"], "--epochs"),
    (["train", "x.yaml", "--resume", "--overwrite"], "--overwrite"),
    (["compare", "--resume", "--overwrite"], "--overwrite"),
    (["reproduce", "dfa-mnist", "--resume", "--overwrite"], "--overwrite"),
    (["sweep", "x.yaml", "--heartbeat", "0"], "--heartbeat"),
    (["sweep", "x.yaml", "--trials", "0"], "--trials"),
    (["train", "x.yaml", "--bogus"], "--bogus"),
    ([], "command"),
])
def test_bad_command_line_is_one_line(tmp_path, capsys, monkeypatch, argv, fragment):
    from falign.cli.main import main

    monkeypatch.chdir(tmp_path)
    _refused(capsys, main(argv), fragment, tmp_path / "runs")


@pytest.mark.parametrize("flags,fragment", [(["--trials", "3"], "--trials: a grid sweep"),
                                            (["--worker", "--overwrite"], "--worker")])
def test_sweep_refuses_flags_it_would_ignore(tmp_path, capsys, flags, fragment):
    from falign.cli.main import main

    cfg = _tiny_file(tmp_path, sweep={"sampler": "grid", "params": {"optim.lr": [0.05, 0.1]}})
    out = tmp_path / "sweep"
    _refused(capsys, main(["sweep", str(cfg), "--out", str(out), *flags]), fragment, out)


def test_sweep_without_a_sweep_section_names_shipped_configs_that_have_one(tmp_path, capsys):
    from falign.cli.main import main
    from falign.training.config import SHIPPED, shipped_configs

    out = tmp_path / "sweep"
    rc = main(["sweep", str(_tiny_file(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err
    _check_error(rc, err, "no 'sweep' section", {}, {})
    assert not out.exists()
    named = [name for name in shipped_configs() if name in err]
    with_sweep = [n for n in shipped_configs()
                  if "sweep" in (yaml.safe_load((SHIPPED / f"{n}.yaml").read_text()) or {})]
    assert named and named == with_sweep, err  # every one it names has a sweep section
    assert "*" not in err, err


def test_data_dir_replaces_the_configs_data_root(data_root, tmp_path, capsys):
    from falign.cli.main import main

    cfg = _tiny_file(tmp_path, data={"root": str(tmp_path / "nowhere")})
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--data-dir", str(data_root), "--out", str(run)]) == 0, \
        capsys.readouterr().err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(data_root.resolve())


def test_data_dir_and_threads_reach_the_library_without_the_environment(data_root, tmp_path, capsys,
                                                                        monkeypatch):
    """--data-dir and --threads are handed down as scoped settings: a config without data.root
    finds its data, the run records the threads, and FALIGN_DATA / FALIGN_THREADS are the user's."""
    from falign.cli.main import main

    monkeypatch.setenv("FALIGN_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("FALIGN_THREADS", raising=False)
    run = tmp_path / "run"
    assert main(["train", str(_tiny_file(tmp_path)), "--data-dir", str(data_root), "--threads", "1",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    assert json.loads((run / "tracking.json").read_text())["environment"]["threads"] == 1
    assert os.environ["FALIGN_DATA"] == str(tmp_path / "nowhere") and "FALIGN_THREADS" not in os.environ


def test_report_title_notes_and_published_reach_the_report(prior_run, tmp_path, capsys):
    from falign.cli.main import main

    published = _write_yaml(tmp_path / "published.yaml", {"test_acc": {"fa": 91.25}})
    out = tmp_path / "report"
    rc = main(["report", str(prior_run), "--out", str(out), "--title", "Flags reach the page",
               "--note", "first note", "--note", "second note", "--published", str(published)])
    assert rc == 0, capsys.readouterr().err
    for page in (out / "report.html").read_text(), (out / "results.txt").read_text():
        for text in ("Flags reach the page", "first note", "second note", "91.25"):
            assert text in page, text


@pytest.mark.parametrize("content,fragment", [
    (None, "file not found"),
    ("- 91.0\n", "expected {metric: {method: percent}}"),
    ("fa: 91.0\n", "expected {metric: {method: percent}}"),
    ("test_acc: {fa: high}\n", "expected {metric: {method: percent}}"),
    ("test_acc: {kp: 91.0}\n", "names none of the runs (their labels: fa"),
    ("test_acc: {fa: [91\n", "invalid YAML"),
], ids=["missing", "list", "flat", "not_a_number", "no_run_named", "bad_yaml"])
def test_report_bad_published_is_one_line(prior_run, tmp_path, capsys, content, fragment):
    from falign.cli.main import main

    published = tmp_path / "published.yaml"
    if content is not None:
        published.write_text(content)
    out = tmp_path / "report"
    rc = main(["report", str(prior_run), "--out", str(out), "--published", str(published)])
    _refused(capsys, rc, fragment, out)


def test_download_honours_data_dir_and_mirror(tmp_path, capsys):
    from falign.cli.main import main

    mirror = mnist_or_skip()
    root = tmp_path / "data"
    assert main(["download", "mnist", "--data-dir", str(root), "--mirror", mirror.as_uri()]) == 0
    assert f"mnist: ready in {root}" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(
        p.name for p in (mirror / "mnist").glob("*-ubyte.gz"))
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    rc = main(["download", "fashion-mnist", "--data-dir", str(root), "--mirror", empty.as_uri()])
    _refused(capsys, rc, f"cannot download {empty.as_uri()}/fashion-mnist/")
    assert not [p for p in root.rglob("*") if p.is_file() and "fashion" in str(p)]


# ----------------------------------------------------------------------------------- --version

def test_version_is_one_line_naming_falign_torch_and_python():
    import platform

    from falign import __version__

    proc = falign("--version")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    for version in (__version__, torch.__version__, platform.python_version()):
        assert version in lines[0], lines[0]


# ---------------------------------------------------------------------------------- evaluate

def _evaluated(capsys, argv: list[str]) -> tuple[str, int, int]:
    """(stdout, correct, total) of ``falign evaluate``."""
    import re

    from falign.cli.main import main

    assert main(["evaluate", *argv]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    found = re.search(r"^accuracy: (\d+\.\d\d)% \((\d+) / (\d+) correct\)$", out, re.M)
    assert found, out
    return out, int(found.group(2)), int(found.group(3))


def test_evaluate_best_pt_gives_the_runs_own_test_accuracy(prior_run, capsys):
    tracking = json.loads((prior_run / "tracking.json").read_text())
    out, correct, total = _evaluated(capsys, [str(prior_run / "best.pt"), "--device", "cpu"])
    assert correct / total == tracking["test_acc"]  # exactly: the same float the run recorded
    assert f"accuracy: {100 * tracking['test_acc']:.2f}%" in out and total == 600
    matrix = out.split("confusion matrix")[1].split("per-class report")[0].splitlines()[3:13]
    counts = [[int(c) for c in line.split()[1:]] for line in matrix]
    assert len(counts) == 10 and sum(map(sum, counts)) == total
    assert sum(counts[i][i] for i in range(10)) == correct
    assert "macro avg" in out and "precision" in out
    # the validation split of the best epoch: the run's best_val_acc (it selected on val)
    _, correct, total = _evaluated(capsys, [str(prior_run / "best.pt"), "--split", "val", "--device", "cpu"])
    assert correct / total == tracking["best_val_acc"] and total == 200


def test_evaluate_takes_a_run_directory(prior_run, capsys):
    tracking = json.loads((prior_run / "tracking.json").read_text())
    out, correct, total = _evaluated(capsys, [str(prior_run), "--device", "cpu"])
    assert correct / total == tracking["test_acc"]  # its best.pt
    assert f"checkpoint: {prior_run / 'best.pt'}" in out


def _truncated(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[: len(raw) // 2]


UNREADABLE = {  # name -> (the file's bytes from a finished run's best.pt, what the message calls it)
    "empty": (lambda best: b"", "an empty file"),
    "text": (lambda best: b"epoch 1: val_acc 0.91\n", "a text file"),
    "random": (lambda best: random.Random(1).randbytes(5000), "no format torch reads"),
    "truncated": (_truncated, "zip archive"),
    "objects": (lambda best: _saved({"when": datetime.date(2020, 1, 1)}), "objects other than tensors"),
    "pickle": (lambda best: pickle.dumps({"epoch": 1}, protocol=4), "a pickle"),
}


def _saved(obj) -> bytes:
    """What torch.save writes for ``obj``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_an_unreadable_checkpoint_is_one_whole_line_saying_what_was_expected(prior_run, tmp_path, capsys,
                                                                             name):
    from falign.cli.main import main

    content, called = UNREADABLE[name]
    path = tmp_path / "model.pt"
    path.write_bytes(content(prior_run / "best.pt"))
    rc = main(["evaluate", str(path), "--device", "cpu"])
    err = capsys.readouterr().err
    _check_error(rc, err, str(path), {}, {})
    assert called in err and "expected" in err, err
    for torch_text in ("Weights only", "PytorchStreamReader", "miniz", "weights_only", "EOFError"):
        assert torch_text not in err, err  # torch's own text, cut mid-sentence, is not passed on


def _no_val_split(run: Path) -> None:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["data"]["val_size"] = 0
    torch.save(ckpt, run / "best.pt")


@pytest.mark.parametrize("name,argv,prepare,fragment", [
    ("missing", ["nowhere.pt"], None, "checkpoint not found"),
    ("garbage", ["best.pt"], lambda run: (run / "best.pt").write_bytes(b"not a checkpoint"),
     "not a readable checkpoint"),
    ("foreign", ["best.pt"], lambda run: torch.save({"model": {}}, run / "best.pt"),
     "not a falign checkpoint"),
    ("split", ["best.pt", "--split", "train"], None, "--split: invalid choice"),
    ("no_val_split", ["best.pt", "--split", "val"], _no_val_split, "has no validation split"),
])
def test_evaluate_bad_checkpoint_or_split_is_one_line(prior_run, tmp_path, capsys, name, argv, prepare,
                                                      fragment):
    from falign.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(prior_run, run)
    if prepare is not None:
        prepare(run)
    before = snapshot(run)
    rc = main(["evaluate", str(run / argv[0]), *argv[1:], "--device", "cpu"])
    _check_error(rc, capsys.readouterr().err, fragment, before, snapshot(run))


# ------------------------------------------------------------------------------ compare --seeds

def test_compare_over_seeds_prints_the_mean_and_std_of_the_runs(data_root, tmp_path, capsys):
    import statistics

    from falign.cli.main import main

    out = tmp_path / "cmp"
    rc = main(["compare", "--config", str(_tiny_file(tmp_path)), "--rules", "bp,fa", "--seeds", "0,1",
               "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    table = {line.split()[0]: line for line in printed.splitlines() if line.split()[:2] in
             (["bp", "0,1"], ["fa", "0,1"])}
    assert list(table) == ["bp", "fa"]
    for rule in ("bp", "fa"):
        tests = [json.loads((out / rule / f"seed{s}" / "tracking.json").read_text())["test_acc"]
                 for s in (0, 1)]
        want = f"{100 * statistics.fmean(tests):.2f} ± {100 * statistics.stdev(tests):.2f}"
        assert want in table[rule], (want, table[rule])
    assert (out / "seeds.png").read_bytes()[:4] == b"\x89PNG" and f"figure: {out / 'seeds.png'}" in printed


def test_compare_refuses_seed_with_seeds(tmp_path, capsys):
    from falign.cli.main import main

    out = tmp_path / "cmp"
    _refused(capsys, main(["compare", "--seed", "1", "--seeds", "0,1", "--out", str(out)]),
             "--seed and --seeds cannot be combined", out)
    _refused(capsys, main(["compare", "--seeds", "0,0", "--out", str(out)]), "a seed given twice", out)


# ------------------------------------------------------------------------------ compare --help

def test_compare_help_lists_the_choices_and_defaults():
    from falign import rules
    from falign.cli.main import COMPARE_DEFAULTS, COMPARE_RULES, build_parser
    from falign.data import available_datasets
    from falign.models import available_models

    parser = build_parser()
    compare = parser._subparsers._group_actions[0].choices["compare"]
    text = " ".join(compare.format_help().split())  # the help as one line, whatever the width
    for name in [*rules(), *available_datasets(), *available_models()]:
        assert f" {name}," in text or f" {name} (" in text, name
    for default in (f"default {COMPARE_DEFAULTS['dataset']}", f"default {COMPARE_DEFAULTS['model']}",
                    f"default {COMPARE_RULES}", f"default {COMPARE_DEFAULTS['epochs']}",
                    f"default {COMPARE_DEFAULTS['batch_size']}", f"default {COMPARE_DEFAULTS['device']}"):
        assert default in text, default


# ------------------------------------------------------------------ missing datasets, --download

@pytest.fixture()
def fashion_only(tmp_path) -> Path:
    """A data root holding Fashion-MNIST (linked from the real one) and no MNIST."""
    real = mnist_or_skip() / "fashion-mnist"
    if not real.is_dir():
        pytest.skip(f"{real} not found")
    root = tmp_path / "data"
    root.mkdir()
    (root / "fashion-mnist").symlink_to(real)
    return root


@pytest.mark.parametrize("command", ["train", "compare", "reproduce"])
def test_a_missing_dataset_says_how_to_get_it_and_what_is_there(fashion_only, tmp_path, capsys, command):
    from falign.cli.main import main

    out = tmp_path / "out"
    argv = {"train": ["train", str(_tiny_file(tmp_path))],
            "compare": ["compare", "--config", str(_tiny_file(tmp_path)), "--rules", "bp,fa"],
            "reproduce": ["reproduce", "lillicrap-2016"]}[command]
    rc = main([*argv, "--data-dir", str(fashion_only), "--out", str(out)])
    err = capsys.readouterr().err
    _check_error(rc, err, f"dataset mnist not found under {fashion_only} (missing mnist/", {}, {})
    for how in ("`falign download mnist`", "--download", "FALIGN_DATA", "--data-dir",
                f"datasets found under {fashion_only}: fashion-mnist"):
        assert how in err, how
    assert not out.exists()  # nothing a rerun after `falign download` would have to step over


def test_a_loader_raises_the_missing_dataset_line_itself(fashion_only):
    """The line the command prints is the loaders' own error, not a rewrite of their text."""
    from falign import FalignError
    from falign.data import DatasetError, MissingDatasetError, load_dataset

    with pytest.raises(MissingDatasetError) as caught:
        load_dataset("mnist", root=fashion_only)
    err = caught.value
    assert isinstance(err, DatasetError) and isinstance(err, FalignError)
    assert (err.name, err.root) == ("mnist", fashion_only)
    assert str(err).startswith(f"dataset mnist not found under {fashion_only} (missing mnist/")
    assert f"datasets found under {fashion_only}: fashion-mnist" in str(err)


def test_compare_defaults_come_from_the_models_registration(monkeypatch):
    from falign.cli.main import build_parser, compare_base
    from falign.models import registry

    monkeypatch.setitem(registry._COMPARE_DEFAULTS, "lenet",
                        registry.CompareDefaults({"init": "xavier"}, {"cifar10": {"variant": "cifar"}}))
    for dataset, options in (("mnist", {"init": "xavier"}),
                             ("cifar10", {"init": "xavier", "variant": "cifar"})):
        cfg = compare_base(build_parser().parse_args(["compare", "--model", "lenet", "--dataset", dataset]))
        assert cfg.model.options == options
    cfg = compare_base(build_parser().parse_args(["compare", "--dataset", "cifar10"]))
    assert (cfg.model.name, cfg.model.options) == ("mlp", {"activation": "tanh"})
    cfg = compare_base(build_parser().parse_args(["compare"]))
    assert cfg.model.options == {"activation": "tanh", "sizes": [784, 256, 256, 10]}


def test_download_flag_fetches_the_missing_dataset(fashion_only, tmp_path, capsys, monkeypatch):
    from falign.cli.main import main

    monkeypatch.setenv("FALIGN_DATA_MIRROR", mnist_or_skip().as_uri())  # a mirror laid out like a data root
    run = tmp_path / "run"
    rc = main(["train", str(_tiny_file(tmp_path)), "--data-dir", str(fashion_only), "--download",
               "--out", str(run)])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (fashion_only / "mnist").iterdir()) == sorted(
        p.name for p in (mnist_or_skip() / "mnist").glob("*-ubyte.gz"))
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["download"] is True


def test_download_flag_reaches_compare_and_reproduce(tmp_path, monkeypatch):
    import falign.reproduce
    from falign.cli.main import build_parser
    from falign.reproduce.targets import Context

    args = build_parser().parse_args(["compare", "--download"])
    assert args.download is True
    calls = []
    monkeypatch.setattr(falign.reproduce, "reproduce", lambda *a, **kw: calls.append(kw))
    assert build_parser().parse_args(["reproduce", "dfa-mnist", "--download"]).func(
        build_parser().parse_args(["reproduce", "dfa-mnist", "--download"])) == 0
    assert calls[0]["download"] is True
    ctx = Context(out=tmp_path, scale="smoke", resume=False, log=print, download=True)
    for scale in ("smoke", "full"):
        ctx.scale = scale
        assert ctx.config("dfa-mnist", {"train.epochs": 1}).data.download is True


# ------------------------------------------------------------------------- the files a run writes

def test_run_files_are_readable_by_the_group(data_root, tmp_path, capsys):
    from falign.cli.main import main

    old = os.umask(0o002)
    try:
        rc = main(["compare", "--config", str(_tiny_file(tmp_path, train={"checkpoint_every_epoch": True})),
                   "--rules", "fa", "--out", str(tmp_path / "cmp")])
    finally:
        os.umask(old)
    assert rc == 0, capsys.readouterr().err
    files = {p.relative_to(tmp_path / "cmp").as_posix(): p.stat().st_mode & 0o777
             for p in (tmp_path / "cmp").rglob("*") if p.is_file()}
    assert {"compare.json", "fa/tracking.json", "fa/config.yaml", "fa/best.pt", "fa/last.pt",
            "fa/epoch_000.pt"} <= files.keys()
    assert {name: mode for name, mode in files.items() if mode != 0o664} == {}


def _image_tree(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                value = 40 * i + (120 if label == "b" else 0)
                Image.new("L", (8, 8), color=value).save(folder / f"{i}.png")
    return root


def test_decoded_images_are_cached_in_the_user_cache_not_beside_the_data(tmp_path, capsys, monkeypatch):
    from falign.cli.main import main

    tree = _image_tree(tmp_path / "data" / "shapes")
    monkeypatch.setenv("FALIGN_CACHE", str(tmp_path / "cache"))
    before = sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*"))
    cfg = _tiny_file(tmp_path, data={"name": "imagefolder", "subset": None, "val_size": 0,
                                     "options": {"path": str(tree)}},
                     model={"name": "mlp", "options": {"sizes": [64, 8, 2]}}, train={"batch_size": 4})
    for run in ("run1", "run2"):  # the second run reads the cache
        assert main(["train", str(cfg), "--out", str(tmp_path / run)]) == 0, capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*")) == before
    caches = list((tmp_path / "cache").glob("*shapes.falign-*.npz"))
    assert len(caches) == 1 and caches[0].stat().st_size > 0


# ----------------------------------------------------------------------------------- --threads

def test_threads_flag_is_what_the_run_records_and_a_bad_count_is_one_line(tmp_path) -> None:
    mnist_or_skip()
    cfg = tmp_path / "c.yaml"
    _write_yaml(cfg, tiny_config())
    env = {"FALIGN_THREADS": ""}
    proc = falign("train", str(cfg), "--threads", "2", "--out", str(tmp_path / "r"), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "r" / "tracking.json").read_text())
    assert record["environment"]["threads"] == 2
    proc = falign("train", str(cfg), "--out", str(tmp_path / "e"), env={"FALIGN_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "e" / "tracking.json").read_text())["environment"]["threads"] == 1
    for bad in ("0", "two"):
        proc = falign("train", str(cfg), "--threads", bad, "--out", str(tmp_path / f"b{bad}"))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / f"b{bad}").exists()
