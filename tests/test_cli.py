"""The ``falign`` command run as a user runs it: a subprocess, exit codes, stderr, files on disk.

Every bad input must end with exit code 2, exactly one stderr line ``falign: error: ...``, no
traceback, and the files already in the output directory untouched, byte for byte.
"""

from __future__ import annotations

import json
import os
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


def _garbage_ckpt(data: bytes):
    def prepare(run: Path) -> None:
        (run / "last.pt").write_bytes(data)
    return prepare


def _truncated_ckpt(run: Path) -> None:
    raw = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(raw[: len(raw) // 2])


def _foreign_ckpt(run: Path) -> None:
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 3}, run / "last.pt")


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
    "dir_holds_another_run": (tiny_config(), [], {}, None, "holds another run"),
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


@pytest.mark.parametrize("argv,fragment", [
    (["compare", "--seed", "abc"], "--seed"),
    (["compare", "--batch-size", "0"], "--batch-size"),
    (["compare", "--subset", "-5"], "--subset"),
    (["compare", "--epochs", "-1"], "--epochs"),
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


def test_data_dir_replaces_the_configs_data_root(data_root, tmp_path, capsys):
    from falign.cli.main import main

    cfg = _tiny_file(tmp_path, data={"root": str(tmp_path / "nowhere")})
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--data-dir", str(data_root), "--out", str(run)]) == 0, \
        capsys.readouterr().err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(data_root.resolve())


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
