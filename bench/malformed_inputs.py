"""Benchmark: malformed inputs against the real CLI, and what each one does (issue 16).

Runs ``python -m cli.main ...`` once per input, each in a fresh sandbox folder as its working
directory (with the files the input needs made there first), and records the exit code, the
output, and whether anything in the sandbox changed. The aim: every input gives one line, exit
code 2 (1 only for an audit violation), no traceback, nothing written. Inputs cover every
numeric config key (wrong type, out of range, ``inf``/``nan``), enumerations, config syntax and
files, backbones and devices, prepared data, run directories (in use, another experiment,
damaged logs, a FIFO), and every command's flags.

Writes the table into ``bench/RESULTS.md`` (section "malformed inputs") and prints a summary.
Takes minutes (two inputs at a time); too slow for the suite, which keeps one test per class.

    .venv/bin/python bench/malformed_inputs.py [--only SUBSTRING] [--workers 2] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedpkt.config import FedpktConfig, config_keys, config_to_toml  # noqa: E402
from tests.conftest import TINY, cli_sets  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## malformed inputs"
TINY_SETS = cli_sets(TINY)
Setup = Callable[[Path], None]


@dataclass
class Case:
    """One malformed input: the CLI arguments ({sb} is the sandbox) and what to make first."""

    label: str
    args: list[str]
    setup: Setup | None = None
    background: Callable[[Path], subprocess.Popen] | None = None  # a process it must meet


@dataclass
class Outcome:
    case: Case
    code: int
    lines: list[str]
    written: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.code == 2
            and len(self.lines) == 1
            and not self.written
            and not any("Traceback" in line for line in self.lines)
        )


# --- what the inputs need in their sandbox ----------------------------------------------


def _tiny_cfg() -> FedpktConfig:
    from fedpkt.config import load_config

    return load_config("embedded", values=dict(TINY))


def run_dir(lines: list[str] | None = None, extra: Setup | None = None) -> Setup:
    """A run directory ``{sb}/run`` with the TINY config and ``lines`` in its metrics.jsonl."""

    def make(sandbox: Path) -> None:
        root = sandbox / "run"
        root.mkdir()
        (root / "config.toml").write_text(config_to_toml(_tiny_cfg()))
        if lines is not None:
            (root / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
        if extra is not None:
            extra(root)

    return make


def files(**contents: str | bytes) -> Setup:
    """Files in the sandbox (``a__b`` is ``a/b``); a value of None makes a directory."""

    def make(sandbox: Path) -> None:
        for name, body in contents.items():
            path = sandbox / name.replace("__", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(body, bytes):
                path.write_bytes(body)
            else:
                path.write_text(body)

    return make


def fifo(name: str) -> Setup:
    def make(sandbox: Path) -> None:
        os.mkfifo(sandbox / name)

    return make


def both(*steps: Setup) -> Setup:
    def make(sandbox: Path) -> None:
        for step in steps:
            step(sandbox)

    return make


def fake_backbone(config: dict) -> Setup:
    """A model directory with only a config.json (and an empty weights file)."""
    return files(
        **{"model__config.json": json.dumps(config), "model__model.safetensors": b""},
    )


ROUND = {"event": "round", "round": 1, "train_loss": 3.0, "val_loss": None, "seconds": 1.0}
ROUND |= {"sampled": ["A-0000"], "failures": []}
CLIENT = {"event": "client", "client_id": "B-0000", "part": "B", "n_train_dialogues": 4}
CLIENT |= {"f1": 0.2, "f1_2gram": 0.05, "lcs_f1": 0.2, "c_score": 0.0, "epochs": 2}
GPT2_XL = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 48}
GPT2_XL |= {"n_embd": 1600, "n_head": 25, "vocab_size": 50257, "n_positions": 1024}


def holder(sandbox: Path) -> subprocess.Popen:
    """Another process holding ``{sb}/run``'s lock while the input runs."""
    code = "from fedpkt.runlock import hold_run_dir; import sys, time\n"
    code += "with hold_run_dir(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(sandbox / "run")],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def listener(sandbox: Path) -> subprocess.Popen:
    """A TCP listener that is not a SuperLink, on port 29811 (``--join`` to it)."""
    code = "import socket, time\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
    code += "socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 29811)); s.listen()\n"
    code += "print('up', flush=True)\nwhile True:\n    c, _ = s.accept(); c.close()\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


def port_holder(sandbox: Path) -> subprocess.Popen:
    code = "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', 29812)); s.listen()\n"
    code += "print('up', flush=True); time.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


# --- the inputs -------------------------------------------------------------------------


def _bad_values() -> list[tuple[str, str]]:
    """For every numeric config key: a wrong type and values outside its range."""
    out: list[tuple[str, str]] = []
    for doc in config_keys():
        if doc.kind == "integer":
            out.append((doc.key, "true"))
            out.append((doc.key, "1e3" if doc.high and float(doc.high) >= 1000 else "2.5"))
        elif doc.kind == "number":
            out.append((doc.key, "inf"))
            out.append((doc.key, "nan"))
        else:
            continue
        high = doc.high.removeprefix("< ").strip()
        if high:
            value = int(float(high)) + 1 if doc.kind == "integer" else float(high) * 10 + 1
            out.append((doc.key, str(value)))
    return out


def cases() -> list[Case]:
    simulate = ["simulate", "--run-dir", "{sb}/run", *TINY_SETS]
    found = [Case(f"--set {k}={v}", [*simulate, "--set", f"{k}={v}"]) for k, v in _bad_values()]
    for key, value in [
        ("phase1.strategy", "'fedsgd'"),
        ("phase1.sampling", "'random'"),
        ("phase1.strategy.server_optimizer", "'rmsprop'"),
        ("phase2.init", "'zeros'"),
        ("backbone.embedded_size", "'huge'"),
        ("backbone.dtype", "'int8'"),
        ("data.source", "'reddit'"),
        ("data.scale", "'huge'"),
        ("eval.c_backend", "'bleu'"),
        ("dp.client_dp", "'maybe'"),
        ("privacy.record_payloads", "'some'"),
        ("dp.enabled", "'yes'"),
        ("privacy.secagg", "1"),
        ("backbone.name", "''"),
        ("backbone.name", "3"),
        ("backbone.device", "'banana'"),
        ("backbone.device", "'cuda:x'"),
        ("eval.nli_device", "'tpu'"),
        ("simulation.ray_address", "'ray://head:10001'"),
        ("simulation.ray_address", "'nohost'"),
        ("seed", "-1"),
        ("seed", str(2**63)),
        ("seed", "99999999999999999999999"),
        ("phase1", "3"),
        ("nosuch.key", "1"),
        ("phase1.nosuch", "1"),
        ("phase1.rounds", "[1, 2]"),
        ("phase1.rounds", "{a = 1}"),
        ("phase1.min_clients", "9"),
        ("eval.c_backend", "'model'"),
        ("data.source", "'personachat'"),
    ]:
        found.append(Case(f"--set {key}={value}", [*simulate, "--set", f"{key}={value}"]))
    found += [
        Case("--set (no =)", [*simulate, "--set", "phase1.rounds"]),
        Case("--set (empty key)", [*simulate, "--set", "=3"]),
        Case("--set (empty part)", [*simulate, "--set", "phase1..rounds=3"]),
        Case(
            "--set secagg with client DP",
            [*simulate, "--set", "privacy.secagg=true", "--set", "dp.client_dp='fixed'"],
        ),
        Case(
            "--set gpus with cpu device",
            [
                *simulate,
                "--set",
                "simulation.gpus_per_client=0.5",
                "--set",
                "backbone.device='cpu'",
            ],
        ),
        Case("--rounds 0", [*simulate, "--rounds", "0"]),
        Case("--rounds abc", [*simulate, "--rounds", "abc"]),
        Case("--strategy fedsgd", [*simulate, "--strategy", "fedsgd"]),
        Case("--init zeros", [*simulate, "--init", "zeros"]),
        Case("--phase both", [*simulate, "--phase", "both"]),
        Case("--gpus-per-client 2", [*simulate, "--gpus-per-client", "2"]),
        Case("--gpus-per-client 0.5 (no GPU)", [*simulate, "--gpus-per-client", "0.5"]),
        Case(
            "--ray-address 127.0.0.1:1 (nothing there)", [*simulate, "--ray-address", "127.0.0.1:1"]
        ),
        Case("--bogus option", [*simulate, "--bogus"]),
        Case("--config missing file", [*simulate, "--config", "nope.toml"]),
        Case(
            "--config invalid TOML",
            [*simulate, "--config", "bad.toml"],
            files(**{"bad.toml": "[phase1\nrounds = 3\n"}),
        ),
        Case(
            "--config not UTF-8",
            [*simulate, "--config", "bin.toml"],
            files(**{"bin.toml": b"\xff\xfe\x00rounds"}),
        ),
        Case(
            "--config unknown key in file",
            [*simulate, "--config", "k.toml"],
            files(**{"k.toml": "[phase1]\nrownds = 3\n"}),
        ),
        Case("--config a directory", [*simulate, "--config", "cfgdir"], files(**{"cfgdir__x": ""})),
        Case("--config a FIFO", [*simulate, "--config", "fifo.toml"], fifo("fifo.toml")),
        # backbones, devices, data, sizes: refused before the run directory exists
        Case("--backbone missing dir", [*simulate, "--backbone", "./no/model"]),
        Case("--backbone /abs missing", [*simulate, "--backbone", "/nonexistent/model"]),
        Case(
            "--backbone dir without config.json",
            [*simulate, "--backbone", "./model"],
            files(**{"model__README": "x"}),
        ),
        Case(
            "--backbone config.json garbage",
            [*simulate, "--backbone", "./model"],
            files(**{"model__config.json": "{nope"}),
        ),
        Case(
            "--backbone with unreadable weights",
            [*simulate, "--backbone", "./model"],
            fake_backbone({"model_type": "bert", "architectures": ["BertModel"]}),
        ),
        Case(
            "--backbone a file",
            [*simulate, "--backbone", "./model.bin"],
            files(**{"model.bin": "x"}),
        ),
        Case("backbone.device cuda (no GPU)", [*simulate, "--set", "backbone.device='cuda'"]),
        Case(
            "backbone.device cuda:7",
            [*simulate, "--set", "backbone.device='cuda:7'", "--gpus-per-client", "0.5"],
        ),
        Case(
            "projection_hidden 8192 on a gpt2-xl",
            [
                *simulate,
                "--backbone",
                "./model",
                "--set",
                "prefix.projection_hidden=8192",
                "--set",
                "prefix.num_virtual_tokens=512",
            ],
            fake_backbone(GPT2_XL),
        ),
        Case("prepared_dir missing", [*simulate, "--set", "data.prepared_dir='prep'"]),
        Case(
            "prepared_dir empty",
            [*simulate, "--set", "data.prepared_dir='prep'"],
            files(**{"prep__.keep": ""}),
        ),
        Case(
            "prepared_dir manifest garbage",
            [*simulate, "--set", "data.prepared_dir='prep'"],
            files(**{"prep__manifest.json": "{nope"}),
        ),
        Case(
            "prepared_dir 0 clients",
            [*simulate, "--set", "data.prepared_dir='prep'"],
            files(
                **{
                    "prep__manifest.json": json.dumps(
                        {"version": 1, "source": "synthetic", "seed": 0, "clients": []}
                    )
                }
            ),
        ),
        Case(
            "personachat path missing",
            [
                *simulate,
                "--set",
                "data.source='personachat'",
                "--set",
                "data.path='./pc.txt'",
                "--set",
                "eval.c_backend='model'",
                "--set",
                "eval.nli_model='x'",
            ],
        ),
        # run directories
        Case("--run-dir is a file", [*simulate[:2], "{sb}/f", *TINY_SETS], files(f="x")),
        Case("--run-dir in use (lock held)", simulate, run_dir(), holder),
        Case(
            "--run-dir with another experiment",
            [*simulate, "--set", "phase1.rounds=5"],
            run_dir([json.dumps(ROUND)]),
        ),
        Case(
            "--run-dir with work, no --resume",
            simulate,
            run_dir([json.dumps(ROUND)]),
        ),
        Case(
            "--resume, rounds changed",
            [*simulate, "--resume", "--set", "phase1.rounds=9"],
            run_dir([json.dumps(ROUND)]),
        ),
        Case(
            "--resume, damaged metrics line",
            ["simulate", "--run-dir", "{sb}/run", "--resume"],
            run_dir([json.dumps(ROUND), '{"event": "rou', "{}"]),
        ),
        Case(
            "--resume, result line not a result",
            ["simulate", "--run-dir", "{sb}/run", "--resume"],
            run_dir([json.dumps(ROUND), json.dumps({**CLIENT, "f1": "high"})]),
        ),
        Case(
            "--resume, metrics.jsonl a FIFO",
            ["simulate", "--run-dir", "{sb}/run", "--resume"],
            run_dir(None, lambda root: os.mkfifo(root / "metrics.jsonl")),
        ),
        Case(
            "--resume, config.toml a FIFO",
            [*simulate, "--resume"],
            both(files(**{"run__x": ""}), fifo("run/config.toml")),
        ),
        Case(
            "--resume, damaged checkpoint",
            ["simulate", "--run-dir", "{sb}/run", "--resume"],
            run_dir(
                [json.dumps(ROUND)],
                lambda root: (
                    (root / "checkpoints").mkdir(),
                    (root / "checkpoints" / "round-0001.json").write_text("{nope"),
                    (root / "checkpoints" / "round-0001.safetensors").write_bytes(b"x"),
                ),
            ),
        ),
        Case(
            "--resume, damaged source prefix",
            ["simulate", "--run-dir", "{sb}/run", "--resume"],
            run_dir(
                [json.dumps(ROUND)],
                lambda root: (
                    (root / "checkpoints").mkdir(),
                    (root / "checkpoints" / "source.safetensors").write_bytes(b"garbage"),
                ),
            ),
        ),
        # baselines
        Case(
            "baselines --only bogus",
            ["baselines", "--run-dir", "{sb}/b", "--only", "bogus", *TINY_SETS],
        ),
        Case(
            "baselines bad config", ["baselines", "--run-dir", "{sb}/b", "--set", "phase2.lr=inf"]
        ),
        Case(
            "baselines backbone missing",
            ["baselines", "--run-dir", "{sb}/b", "--set", "backbone.name='./no/model'"],
        ),
        Case(
            "baselines --run-dir in use",
            ["baselines", "--run-dir", "{sb}/run", *TINY_SETS],
            run_dir(),
            holder,
        ),
        # launch
        Case("launch --supernodes 0", ["launch", "--supernodes", "0", "--run-dir", "{sb}/l"]),
        Case("launch --port 70000", ["launch", "--port", "70000", "--run-dir", "{sb}/l"]),
        Case("launch --phase both", ["launch", "--phase", "both", "--run-dir", "{sb}/l"]),
        Case(
            "launch --insecure --node-auth",
            ["launch", "--insecure", "--node-auth", "--run-dir", "{sb}/l"],
        ),
        Case("launch --gpus 9", ["launch", "--gpus", "9", "--run-dir", "{sb}/l"]),
        Case("launch --gpus x", ["launch", "--gpus", "x", "--run-dir", "{sb}/l"]),
        Case("launch --shard 3/2", ["launch", "--shard", "3/2", "--run-dir", "{sb}/l"]),
        Case("launch --shard x", ["launch", "--shard", "x", "--run-dir", "{sb}/l"]),
        Case(
            "launch --wait-for-nodes 1 < supernodes",
            ["launch", "--supernodes", "2", "--wait-for-nodes", "1", "--run-dir", "{sb}/l"],
        ),
        Case(
            "launch --port in use",
            ["launch", "--port", "29812", "--run-dir", "{sb}/l", *TINY_SETS],
            None,
            port_holder,
        ),
        Case("launch --join bad address", ["launch", "--join", "nohost", "--run-dir", "{sb}/l"]),
        Case(
            "launch --join without CA",
            ["launch", "--join", "127.0.0.1:29811", "--run-dir", "{sb}/l", *TINY_SETS],
        ),
        Case(
            "launch --join nothing there",
            ["launch", "--join", "127.0.0.1:1", "--insecure", "--run-dir", "{sb}/l", *TINY_SETS],
        ),
        Case(
            "launch --join not a SuperLink",
            [
                "launch",
                "--join",
                "127.0.0.1:29811",
                "--insecure",
                "--run-dir",
                "{sb}/l",
                *TINY_SETS,
            ],
            None,
            listener,
        ),
        Case(
            "launch --join CA not PEM",
            [
                "launch",
                "--join",
                "127.0.0.1:29811",
                "--ca-cert",
                "ca.pem",
                "--run-dir",
                "{sb}/l",
                *TINY_SETS,
            ],
            files(**{"ca.pem": "not a certificate"}),
        ),
        Case(
            "launch --insecure with --ca-cert",
            ["launch", "--insecure", "--ca-cert", "x.pem", "--run-dir", "{sb}/l"],
        ),
        Case(
            "launch --join with --server-cert",
            ["launch", "--join", "h:1", "--server-cert", "x.pem", "--run-dir", "{sb}/l"],
        ),
        # data
        Case("data prepare --part-b -1", ["data", "prepare", "--out", "o", "--part-b", "-1"]),
        Case("data prepare --part-b 1.5", ["data", "prepare", "--out", "o", "--part-b", "1.5"]),
        Case("data prepare --part-b nan", ["data", "prepare", "--out", "o", "--part-b", "nan"]),
        Case("data prepare --seed -1", ["data", "prepare", "--out", "o", "--seed", "-1"]),
        Case(
            "data prepare --few-shot-threshold 1",
            ["data", "prepare", "--out", "o", "--few-shot-threshold", "1"],
        ),
        Case("data prepare --canaries -3", ["data", "prepare", "--out", "o", "--canaries", "-3"]),
        Case("data prepare --scale huge", ["data", "prepare", "--out", "o", "--scale", "huge"]),
        Case(
            "data prepare --source reddit", ["data", "prepare", "--out", "o", "--source", "reddit"]
        ),
        Case(
            "data prepare personachat no path",
            ["data", "prepare", "--out", "o", "--source", "personachat"],
        ),
        Case(
            "data prepare personachat missing path",
            ["data", "prepare", "--out", "o", "--source", "personachat", "--path", "./nope.txt"],
        ),
        Case(
            "data prepare personachat missing dir",
            ["data", "prepare", "--out", "o", "--source", "personachat", "--path", "a/b/c"],
        ),
        Case(
            "data prepare ParlAI line without tab",
            [
                "data",
                "prepare",
                "--out",
                "o",
                "--source",
                "personachat",
                "--path",
                "pc_self_original.txt",
            ],
            files(**{"pc_self_original.txt": "1 your persona: i ski.\n2 no tab here\n"}),
        ),
        Case(
            "data prepare ParlAI no number",
            ["data", "prepare", "--out", "o", "--source", "personachat", "--path", "pc.txt"],
            files(**{"pc.txt": "your persona: i ski.\n"}),
        ),
        Case(
            "data prepare ParlAI 0 clients",
            ["data", "prepare", "--out", "o", "--source", "personachat", "--path", "pc.txt"],
            files(**{"pc.txt": "1 your persona: a.\n2 hi\tyo\n1 your persona: b.\n2 x\ty\n"}),
        ),
        Case(
            "data prepare ParlAI not UTF-8",
            ["data", "prepare", "--out", "o", "--source", "personachat", "--path", "pc.txt"],
            files(**{"pc.txt": b"1 your persona: \xff\xfe\n"}),
        ),
        Case("data prepare --out is a file", ["data", "prepare", "--out", "o"], files(o="x")),
        Case("data prepare --out not empty", ["data", "prepare", "--out", "o"], files(o__keep="x")),
        Case("data stats --scale huge", ["data", "stats", "--scale", "huge"]),
        Case("data stats --part-b 2.5", ["data", "stats", "--part-b", "2.5"]),
        # audit, compare, export, chat, backbone, config
        Case("audit not a run", ["audit", "nowhere"]),
        Case("audit run without egress", ["audit", "{sb}/run"], run_dir([])),
        Case(
            "audit damaged egress line",
            ["audit", "{sb}/run"],
            run_dir(
                [],
                lambda root: (
                    (root / "egress").mkdir(),
                    (root / "egress" / "1.jsonl").write_text("{x\n"),
                ),
            ),
        ),
        Case("compare no run", ["compare", "--out", "o"]),
        Case("compare missing run", ["compare", "nowhere", "--out", "o"]),
        Case(
            "compare results.json garbage",
            ["compare", "r", "--out", "o"],
            files(**{"r__results.json": "{nope"}),
        ),
        Case(
            "compare results.json wrong keys",
            ["compare", "r", "--out", "o"],
            files(**{"r__results.json": json.dumps({"rows": []})}),
        ),
        Case(
            "compare unfinished run",
            ["compare", "{sb}/run", "--out", "o"],
            run_dir(
                [json.dumps(ROUND)],
                lambda root: (root / "results.json").write_text(
                    json.dumps({"rows": [], "config": {}})
                ),
            ),
        ),
        Case(
            "export into non-empty --out",
            ["export", "{sb}/run", "--persona", "B-0000", "--out", "o"],
            both(run_dir([]), files(o__x="x")),
        ),
        Case(
            "export --out is a file",
            ["export", "{sb}/run", "--persona", "B-0000", "--out", "o"],
            both(run_dir([]), files(o="x")),
        ),
        Case("export not a run", ["export", "nowhere", "--persona", "B-0000", "--out", "o"]),
        Case(
            "export bad persona id",
            ["export", "{sb}/run", "--persona", "../x", "--out", "o"],
            run_dir([]),
        ),
        Case("chat not a run", ["chat", "nowhere", "--persona", "B-0000"]),
        Case("backbone build --size huge", ["backbone", "build", "--size", "huge"]),
        Case("backbone info missing dir", ["backbone", "info", "--backbone", "./nope"]),
        Case("config show bad value", ["config", "show", "--set", "phase1.rounds=0"]),
        Case("config show missing file", ["config", "show", "--config", "nope.toml"]),
        Case("unknown command", ["simulat"]),
        Case("missing argument", ["compare"]),
    ]
    return found


# --- running them -------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")  # a hub id must not wait for the network
    return env


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for path in root.rglob("*"):
        try:
            info = path.lstat()
        except OSError:
            continue
        kind = "d" if path.is_dir() else "f"
        out[str(path.relative_to(root))] = (kind, info.st_size, int(info.st_mtime_ns))
    return out


@contextlib.contextmanager
def _sandbox() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fedpkt-malformed-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_case(case: Case, timeout: float) -> Outcome:
    with _sandbox() as sandbox:
        if case.setup is not None:
            case.setup(sandbox)
        other = case.background(sandbox) if case.background is not None else None
        before = _snapshot(sandbox)
        args = [a.replace("{sb}", str(sandbox)) for a in case.args]
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "cli.main", *args],
                cwd=sandbox,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as err:
            code, output = -1, f"(timed out after {timeout:.0f} s) {err.stdout or ''}"
        seconds = time.monotonic() - started
        if other is not None:
            other.kill()
            other.wait()
        after = _snapshot(sandbox)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    written = sorted(k for k in after if before.get(k) != after[k] and after[k][0] == "f")
    written += sorted(k for k in after if k not in before and after[k][0] == "d")
    return Outcome(case, code, lines, written, seconds)


def _cell(text: str, limit: int = 220) -> str:
    text = re.sub(r"/tmp/fedpkt-malformed-[A-Za-z0-9_]+", "{sb}", text)
    text = text.replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(outcomes: list[Outcome], seconds: float) -> str:
    good = sum(o.ok for o in outcomes)
    lines = [
        SECTION,
        "",
        "`bench/malformed_inputs.py`: each input runs the real CLI (`python -m cli.main`) in a "
        "fresh sandbox folder, after the files it needs were made there; *written* lists what "
        "changed in the sandbox afterwards. The aim is one line, exit code 2, no traceback, "
        "nothing written.",
        "",
        f"**Machine:** {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}),"
        f" Python {platform.python_version()}, {platform.system()}; "
        f"host {socket.gethostname()}. Date: {time.strftime('%Y-%m-%d')}. Wall time "
        f"{seconds / 60:.1f} min.",
        "",
        f"**Result:** {good} of {len(outcomes)} inputs give one line, exit code 2, no "
        f"traceback and write nothing.",
        "",
        "| # | input | exit | lines | written | message (first line) |",
        "|---:|---|---:|---:|---|---|",
    ]
    for number, o in enumerate(outcomes, start=1):
        written = ", ".join(o.written[:3]) + (" …" if len(o.written) > 3 else "")
        first = o.lines[0] if o.lines else "(no output)"
        lines.append(
            f"| {number} | {_cell(o.case.label, 80)} | {o.code} | {len(o.lines)} | "
            f"{_cell(written, 60) or 'nothing'} | {_cell(first)} |"
        )
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    current = RESULTS.read_text(encoding="utf-8")
    start = current.find(SECTION + "\n")
    if start >= 0:
        end = current.find("\n## ", start + len(SECTION))
        current = current[:start] + text + (current[end + 1 :] if end >= 0 else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(current, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="Run only inputs whose label has this text.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--no-write", action="store_true", help="Do not touch RESULTS.md.")
    args = parser.parse_args()
    chosen = [c for c in cases() if args.only in c.label]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        outcomes = list(pool.map(lambda c: run_case(c, args.timeout), chosen))
    seconds = time.monotonic() - started
    for o in outcomes:
        if not o.ok:
            wrote = ", ".join(o.written[:4]) + (" ..." if len(o.written) > 4 else "")
            print(f"NOT OK [{o.code}, {len(o.lines)} lines, written {wrote}] {o.case.label}:")
            print("   ", " / ".join(o.lines[:3])[:400])
    good = sum(o.ok for o in outcomes)
    print(json.dumps({"inputs": len(outcomes), "ok": good, "minutes": round(seconds / 60, 1)}))
    if not args.no_write and not args.only:
        write_section(render(outcomes, seconds))


if __name__ == "__main__":
    main()
