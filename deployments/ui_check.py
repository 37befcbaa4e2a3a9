"""Headless-browser check of the Prefect UI: start a custom `self-improve` run through the form.

Opens the UI (Chromium from Debian, driven by Playwright), goes Deployments -> self-improve -> Run ->
Custom run, names the run, replaces the `config` parameter through the field's JSON input with the
given overrides applied, submits, then confirms through the REST API that the run carries the changed
parameter and completes. Saves screenshots of the form and of the result.

    apt-get install -y chromium && pip install playwright        # once; no browser download needed
    python deployments/ui_check.py --url http://127.0.0.1:4200 sample.k=3 loop.max_rounds=1

Needs a server with the deployments applied and a `cpu` worker. Exit status 0 when the run completed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _api(base: str, path: str, body: dict | None = None, tries: int = 6):
    req = urllib.request.Request(
        f"{base}/api{path}", data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST",
    )
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:  # a busy SQLite-backed server answers 503: retry
            if err.code not in (429, 503) or attempt == tries - 1:
                raise
        time.sleep(1 + attempt)


def _runs_named(base: str, run_name: str) -> list[dict]:
    return _api(base, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [run_name]}}})


def submit_custom_run(base: str, config: dict, run_name: str, shots: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        # Only the server under test: the UI also tries to reach outside hosts (analytics).
        ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())
        page = ctx.new_page()
        page.goto(base + "/")
        page.get_by_role("link", name="Deployments", exact=True).click()
        page.locator('a[href*="/deployments/deployment/"]').filter(has_text="self-improve").first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Custom run", exact=True).click()
        page.get_by_label("Name (Optional)", exact=True).wait_for()  # the form renders after the page
        page.get_by_label("Run Name", exact=True).fill(run_name)
        page.get_by_role("button", name="Open menu").first.click()  # the `config` parameter's menu
        page.get_by_role("menuitem", name="Use JSON Input", exact=True).click()
        editor = page.locator(".cm-content").first
        editor.click()
        page.keyboard.press("Control+a")
        page.keyboard.press("Delete")
        page.keyboard.insert_text(json.dumps(config, indent=1))  # insert_text: no auto-closed brackets
        # Leave the editor before submitting, so the form holds the JSON just typed.
        page.get_by_label("Run Name", exact=True).click()
        page.screenshot(path=str(shots / "ui-form.png"))
        submit = page.get_by_role("button", name="Submit", exact=True)
        try:
            # Twice in full CI runs on 2 cores the page stayed on the form after one click (alone it
            # returns in seconds), so a form still showing after 45 s with no run created is submitted again.
            for attempt in range(2):
                submit.click()
                try:
                    page.wait_for_url("**/deployments/deployment/**tab=Runs**", timeout=45_000 if attempt == 0 else 180_000)
                    break
                except Exception:
                    if attempt or _runs_named(base, run_name):
                        raise
                    page.screenshot(path=str(shots / "ui-after-first-submit.png"), full_page=True)
            page.get_by_role("link", name=run_name).first.wait_for(timeout=120_000)
        except Exception:
            page.screenshot(path=str(shots / "ui-after-submit.png"), full_page=True)  # what the page showed
            raise
        page.screenshot(path=str(shots / "ui-submitted.png"))
        browser.close()


def wait_completed(base: str, run_name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        runs = _runs_named(base, run_name)
        if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return runs[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_name} not finished after {timeout:.0f} s")
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the default run config")
    ap.add_argument("--url", default="http://127.0.0.1:4200", help="server base URL (no /api)")
    ap.add_argument("--screenshots", default=".", help="folder for ui-form.png and ui-submitted.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the run to finish")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from selffeed.config import RunConfig, load_config

    run_name = f"ui-{uuid.uuid4().hex[:8]}"
    # The flow names its runs after the run (config.name), so both names must agree to find it.
    config = load_config(None, [f"name={run_name}", *args.overrides]).model_dump(mode="json")
    run_name = config["name"]
    shots = Path(args.screenshots)
    shots.mkdir(parents=True, exist_ok=True)
    submit_custom_run(args.url.rstrip("/"), config, run_name, shots, args.chromium)
    run = wait_completed(args.url.rstrip("/"), run_name, args.timeout)
    changed = {o.split("=", 1)[0] for o in args.overrides}
    print(f"run {run_name}: {run['state_type']}; parameters changed through the form: {', '.join(sorted(changed))}")
    # Compare as configs: the form may re-serialise numbers (1.0 is submitted as 1).
    if RunConfig.model_validate(run["parameters"]["config"]) != RunConfig.model_validate(config):
        print("the run's parameters differ from what the form was given", file=sys.stderr)
        return 1
    return 0 if run["state_type"] == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
