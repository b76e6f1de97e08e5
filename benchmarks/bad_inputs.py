"""Question: how does each bad input a user can give end, and how long does it take to answer, as a user runs
it, here and before (a baseline tree)?

Every case of the bad-input table (``tests/cli/test_bad_inputs.py``: command, case, what the error line must
say) runs as its own ``python -m recoverlib.cli ...`` in a fresh copy of the table's workspace (a tiny model
made here, valid and broken inputs, a port something listens on, a samples file written with known settings).
Each is recorded with its exit status, whether stderr holds exactly one error line with the expected words and
no traceback, whether anything in the workspace changed, and the wall time to the answer (interpreter start
and imports included: what the user waits). The baseline tree (``--baseline``, e.g. a checkout of the commit
before issue 30) runs the cases its own table lacks, the same way, with a time limit: there the answers were a
traceback, a hang, or an exit 0 that mixed two runs' samples.

A second table: the whole-requests cure's hold under a malformed group tag on a real ``recoverlib serve``
(tiny model): a completion whose tag does not fit its request (refused by the server at once), a chat
completion whose tag names more requests than it has (held until ``--group-hold-s``, then served), and the
same chat completion untagged.

Not a speed benchmark: two shared cores, the load average is in the report.

Reproduce (~15 min on 2 busy cores):
    git worktree add /tmp/before <commit before issue 30>
    python -m benchmarks.bad_inputs --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.report import load_line, log_path, machine_info, machine_line, pyplot, write_table
from benchmarks.serving import tiny_model
from recoverlib.cache import cache_dir
from recoverlib.engines.vllm_support import cpu_identity
from recoverlib.tiny import adapter_paths
from tests.cli.test_bad_inputs import CASES, ERROR_LINE, build_workspace, fingerprint

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "data"


def run_case(argv: list[str], workspace: Path, expect: str, tree: Path, timeout_s: float) -> dict:
    """One case as a user runs it, with ``tree``'s recoverlib first on the path: how it ended and when."""
    before = fingerprint(workspace)
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "recoverlib.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=workspace, start_new_session=True)
    code = None
    try:
        err = proc.communicate(timeout=timeout_s)[1]
        code = proc.returncode
    except subprocess.TimeoutExpired:
        err = end_tree(proc)
    seconds = time.perf_counter() - start
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    one_line = code == 2 and len(errors) == 1 and expect in errors[0] and "Traceback" not in err
    changed = fingerprint(workspace) != before
    if code is None:
        outcome = f"no answer within {timeout_s:.0f} s"
    elif one_line and not changed:
        outcome = "one line"
    elif "Traceback" in err:
        outcome = "traceback"
    elif code == 0:
        outcome = "exit 0" + (", files changed" if changed else "")
    else:
        outcome = f"exit {code}, {len(errors)} error line(s)" + (", files changed" if changed else "")
    said = (errors or [line for line in err.splitlines() if line.strip()] or [""])[-1]
    return {"exit": "none" if code is None else str(code), "outcome": outcome, "seconds": round(seconds, 1),
            "files_changed": changed, "said": re.sub(r"\x1b\[[0-9;]*m", "", said)[:160].replace("|", "/")}


def end_tree(proc: subprocess.Popen) -> str:
    """Kill a case that did not answer and everything it started (a local Ray's processes included); its
    stderr so far."""
    import psutil

    tree = [proc.pid]
    with contextlib.suppress(psutil.NoSuchProcess):
        tree += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    for pid in tree:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    try:
        return proc.communicate(timeout=30)[1] or ""
    except subprocess.TimeoutExpired:  # something outside the tree still holds its stderr
        proc.stderr.close()
        return ""


def baseline_cases(tree: Path) -> set[tuple[str, str]]:
    """The (command, case) pairs the baseline tree's own table has."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.cli.test_bad_inputs import CASES;"
            " print('\\n'.join(f'{c[0]}\\t{c[1]}' for c in CASES))")
    out = subprocess.run([sys.executable, "-c", code, str(tree)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree).stdout
    return {tuple(line.split("\t")) for line in out.splitlines() if "\t" in line}


def table(args, template: Path) -> pd.DataFrame:
    """Every case here; the cases the baseline's table lacks, there too."""
    old = baseline_cases(args.baseline) if args.baseline else set()
    rows = []
    for command, case, make_argv, expect in CASES:
        if args.only and args.only not in f"{command}:{case}":
            continue
        trees = [("this tree", REPO)]
        if args.baseline and (command, case) not in old:
            trees.append(("baseline", args.baseline))
        for label, tree in trees:
            with tempfile.TemporaryDirectory() as tmp:
                workspace = Path(tmp) / "ws"
                shutil.copytree(template, workspace, symlinks=True)
                if label == "baseline":  # its samples files have no settings line (what it wrote itself)
                    resumable = workspace / "resumable.jsonl"
                    resumable.write_text("".join(resumable.read_text().splitlines(keepends=True)[1:]))
                argv = make_argv(workspace)
                got = run_case(argv, workspace, expect, tree, args.timeout_s)
            rows.append({"command": command, "case": case, "tree": label, **got})
            print(f"{command}:{case} [{label}] {got['outcome']} in {got['seconds']:.1f} s", flush=True)
    return pd.DataFrame(rows)


def cure_hold(folder: Path, hold_s: float) -> pd.DataFrame:
    """The whole-requests cure under malformed tags on a real server: seconds to each answer."""
    import requests

    from recoverlib.engines import EngineConfig
    from recoverlib.serve import ServeConfig, VllmServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = folder / "model"
    serve = ServeConfig(port=port, group_hold_s=hold_s)
    rows = []
    with VllmServer(model, {}, EngineConfig(), serve, log_path("bad_inputs_server")) as server:
        chat = {"model": str(model), "messages": [{"role": "user", "content": "Rewrite this."}],
                "max_tokens": 8, "temperature": 0}
        cases = [
            ("completion, tag size 3 for 2 prompts x n=2", "/completions",
             {"model": str(model), "prompt": ["one", "two"], "n": 2, "max_tokens": 8, "temperature": 1.0,
              "vllm_xargs": {"recoverlib_group": "g1", "recoverlib_group_size": 3}}),
            ("chat completion, tag size 2 for 1 request", "/chat/completions",
             {**chat, "vllm_xargs": {"recoverlib_group": "g2", "recoverlib_group_size": 2}}),
            ("chat completion, no tag", "/chat/completions", chat),
        ]
        for label, path, body in cases:
            start = time.perf_counter()
            resp = requests.post(server.url + path, json=body, timeout=hold_s + 120)
            rows.append({"request": label, "status": resp.status_code,
                         "seconds": round(time.perf_counter() - start, 2), "hold_s": hold_s})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Left: the cases the baseline ran, seconds to the answer here and there (a hang drawn at its limit).
    Right: seconds to the answer over every case here."""
    plt = pyplot()
    frame = frame.assign(label=frame["command"] + ":" + frame["case"])
    here = frame[frame.tree == "this tree"].set_index("label")
    base = frame[frame.tree == "baseline"].set_index("label")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(4.0, 0.3 * len(base) + 1)),
                                      gridspec_kw={"width_ratios": [2, 1]})
    if len(base):
        labels = list(base.index)
        ys = range(len(labels))
        left.barh([y + 0.2 for y in ys], here.loc[labels, "seconds"], height=0.4, label="this tree")
        left.barh([y - 0.2 for y in ys], base["seconds"], height=0.4, color="tab:red", alpha=0.6,
                  label="baseline")
        for y, label in zip(ys, labels, strict=True):
            left.text(base.loc[label, "seconds"], y - 0.2, f" {base.loc[label, 'outcome']}", va="center",
                      fontsize=6)
        left.set_yticks(list(ys), labels, fontsize=7)
        left.set_xlabel("seconds to the answer")
        left.legend(loc="lower right")
        left.set_title("the cases the baseline's table lacks")
    right.hist(here["seconds"], bins=30)
    right.set_xlabel("seconds to the answer")
    right.set_ylabel("cases")
    right.set_title(f"every case here ({len(here)})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, default=None, help="a checkout to run the cases its table lacks")
    p.add_argument("--timeout-s", type=float, default=180.0, help="time limit per case")
    p.add_argument("--hold-s", type=float, default=10.0, help="--group-hold-s of the cure table's server")
    p.add_argument("--only", default=None, help="only cases whose command:case contains this")
    p.add_argument("--no-cure", action="store_true", help="skip the server (the cure's table)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot-only", action="store_true", help="redraw the plot from the committed csv")
    args = p.parse_args(argv)
    out_dir = args.out or REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        plot(pd.read_csv(out_dir / "bad_inputs.csv"), out_dir / "bad_inputs.png")
        return
    folder = tiny_model(cache_dir("bench-serving") / "tiny3", adapters=3)  # the tests' tiny model
    load_before, start = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        template = build_workspace(Path(tmp), folder / "model", adapter_paths(folder), DATA / "sample.csv",
                                   DATA / "sample_truth.csv", busy.getsockname()[1])
        frame = table(args, template)
    cure = None if args.no_cure else cure_hold(folder, args.hold_s)
    load_after = os.getloadavg()
    here = frame[frame.tree == "this tree"]
    notes = [
        f"Machine: {machine_line(machine_info())}",
        f"{load_line(load_before, load_after)}; {time.perf_counter() - start:.0f} s in all",
        f"This tree: {len(here)} cases, {int((here.outcome == 'one line').sum())} one line with nothing"
        f" changed; seconds median {here.seconds.median():.1f}, max {here.seconds.max():.1f}",
        f"Baseline: {args.baseline or 'none'} (the cases its own table lacks; limit {args.timeout_s:.0f} s)",
        "Command: python -m benchmarks.bad_inputs" + (" --baseline BEFORE" if args.baseline else ""),
    ]
    name = "bad_inputs"
    title = f"Bad inputs per command, as a user runs them ({cpu_identity()[0]})"
    write_table(frame, out_dir, name, title, notes)
    plot(frame, out_dir / f"{name}.png")
    if cure is not None:
        write_table(cure, out_dir, "cure_hold", "The whole-requests cure under malformed group tags"
                    f" ({cpu_identity()[0]})", [f"Machine: {machine_line(machine_info())}",
                                                 load_line(load_before, load_after),
                                                 "Command: python -m benchmarks.bad_inputs"])
    print((out_dir / f"{name}.md").read_text()[:3000])


if __name__ == "__main__":
    main()
