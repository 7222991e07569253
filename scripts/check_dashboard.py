#!/usr/bin/env python
"""Check the MLflow dashboard of a finished, tracked run in a real browser (headless Chromium).

    .venv/bin/python scripts/check_dashboard.py --config CONFIG [--out results/dashboard_check]

Installs Debian's ``chromium`` when it is missing (``apt-get install -y chromium``, through ``sudo -n`` when
not root), serves the config's store with the lean server of ``make dashboard`` on a free loopback port, and
loads in the browser (run names and metric names come from the server's REST API):

- ``runs_table``: the address ``make dashboard`` prints (:func:`dko.dashboard.runs_url`): the runs table with
  every pipeline invocation's parent run, none of the GenAI page's marks;
- ``experiment_page``: the experiment's own page in the same UI mode: MLflow redirects it to the runs table;
- ``runs_flat``: the runs table sorted by name (MLflow then lists the job runs flat): the job runs
  (``train_electronic``, ...) are shown;
- ``parent_run``: the latest parent run's page: its headline metrics (``*_over_dko_*``, from the compare job).

For each it writes a screenshot (``<name>.png``) and the rendered DOM (``<name>.html``) to ``--out``, prints one
line, and exits 1 when a check fails, 2 when it cannot run (no store, no browser, no server).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from dko.config import load_config
from dko.dashboard import UI_QUERY, runs_url, start_server, stop_server, wait_until_up
from dko.tracking import find_experiment

BROWSERS = ("chromium", "chromium-browser")
# Text of the GenAI experiment page of MLflow 3.x (its bundled JS): the overview's tabs and the side bar's
# GenAI-only entries. The "Machine learning" page has none of them.
GENAI_MARKS = ("Training runs", "Usage", "Quality", "Tool calls", "Agent versions", "Judges")
# Text of the runs table (its toolbar and columns).
RUNS_TABLE_MARKS = ("Run Name",)


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def install_browser() -> str:
    """``apt-get install -y chromium`` (after ``apt-get update`` if the first try fails); the browser's path."""
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise RuntimeError("chromium is missing and neither root nor sudo is available: install the Debian "
                               "package 'chromium'")
        prefix = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = prefix + ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    print("installing chromium:", " ".join(install), flush=True)
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(prefix + ["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    browser = find_browser()
    if browser is None:
        raise RuntimeError("apt-get installed chromium but no 'chromium' is on PATH")
    return browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def search_runs(base_url: str, experiment_id: str) -> tuple[list[dict], list[dict]]:
    """The experiment's parent (pipeline) runs, newest first, and its job runs, from the server's REST API."""
    body = json.dumps({"experiment_ids": [experiment_id], "max_results": 1000,
                       "order_by": ["attributes.start_time DESC"]}).encode()
    request = urllib.request.Request(f"{base_url}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        runs = json.load(resp).get("runs", [])
    parents, jobs = [], []
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        (parents if tags.get("dko.kind") == "pipeline" else jobs).append(run)
    return parents, jobs


def capture(browser: str, url: str, out: Path, name: str, size: str, budget_ms: int) -> str:
    """Screenshot ``<out>/<name>.png`` and rendered DOM ``<out>/<name>.html`` of ``url``; returns the DOM."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--hide-scrollbars", f"--window-size={size}", f"--virtual-time-budget={budget_ms}",
              f"--user-data-dir={out / '.chromium-profile'}"]
    shot = out / f"{name}.png"
    subprocess.run(common + [f"--screenshot={shot}", url], check=True, capture_output=True, timeout=180)
    dom = subprocess.run(common + ["--dump-dom", url], check=True, capture_output=True, text=True, timeout=180).stdout
    (out / f"{name}.html").write_text(dom)
    return dom


def visible_text(dom: str) -> str:
    """The DOM's text without tags, scripts and styles (what the page shows, roughly)."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def check_dom(dom: str, shown: list[str] = (), one_of: list[str] = (), table: bool = True) -> list[str]:
    """What is wrong with a rendered page (empty when nothing).

    Args:
        shown: texts that must all appear (parent run names).
        one_of: texts of which at least one must appear (job run names, metric names).
        table: the page must be a runs table.
    Any of :data:`GENAI_MARKS` is a problem: the page is MLflow's GenAI view.
    """
    text = visible_text(dom)
    problems = [f"the runs table mark '{m}' is missing" for m in RUNS_TABLE_MARKS if table and m not in text]
    problems += [f"'{n}' is not shown" for n in shown if n not in text]
    if one_of and not any(name in text for name in one_of):
        problems.append(f"none of {sorted(one_of)[:4]} ... is shown")
    problems += [f"the GenAI page's mark '{m}' is shown" for m in GENAI_MARKS if m in text]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="config of a finished run with tracking.enabled")
    parser.add_argument("--out", default=None, help="folder of the screenshots (default <results_dir>/dashboard_check)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--window-size", default="1600,1400")
    parser.add_argument("--budget-ms", type=int, default=30000, help="Chromium's virtual time for the page to render")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, check_paths=False)
    out = Path(args.out or Path(cfg.results_dir) / "dashboard_check").resolve()
    out.mkdir(parents=True, exist_ok=True)
    experiment_id = find_experiment(cfg)
    if experiment_id is None:
        print(f"no experiment '{cfg.experiment}' in the store: run the pipeline with tracking.enabled first",
              file=sys.stderr)
        return 2
    try:
        browser = find_browser() or install_browser()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"no browser: {exc}", file=sys.stderr)
        return 2
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(cfg, port, log_path=out / "server.log")
    try:
        if not wait_until_up(base, timeout_s=120, proc=proc):
            print(f"the MLflow server did not start (see {out / 'server.log'})", file=sys.stderr)
            return 2
        parents, jobs = search_runs(base, experiment_id)
        if not parents:
            print(f"experiment '{cfg.experiment}' has no pipeline run", file=sys.stderr)
            return 2
        parent_names = [run["info"]["run_name"] for run in parents]
        headline = [m["key"] for m in parents[0]["data"].get("metrics", []) if "_over_dko_" in m["key"]]
        by_name = urllib.parse.quote("tags.`mlflow.runName`")
        table = runs_url(base, experiment_id)
        pages = {  # name: (address, texts that must all show, texts of which one must show, a runs table)
            "runs_table": (table, parent_names, [], True),
            "experiment_page": (f"{base}/#/experiments/{experiment_id}?{UI_QUERY}", parent_names, [], True),
            "runs_flat": (f"{table}&orderByKey={by_name}&orderByAsc=true", [], [r["info"]["run_name"] for r in jobs],
                          True),
            "parent_run": (f"{base}/#/experiments/{experiment_id}/runs/{parents[0]['info']['run_id']}?{UI_QUERY}",
                           [parent_names[0]], headline or ["(no headline metric on the parent run)"], False),
        }
        failed = False
        for name, (url, shown, one_of, is_table) in pages.items():
            dom = capture(browser, url, out, name, args.window_size, args.budget_ms)
            problems = check_dom(dom, shown, one_of, is_table)
            failed |= bool(problems)
            status = "OK " if not problems else "BAD"
            print(f"{status} {name}: {url} -> {out / (name + '.png')}" + "".join(f"\n    {p}" for p in problems))
    finally:
        stop_server(proc)
        shutil.rmtree(out / ".chromium-profile", ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
