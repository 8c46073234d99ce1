"""Drives Debian's Chromium through Playwright for the dashboard tests.

Reads one JSON command per line on stdin and answers one JSON line on stdout
({"ok": true, "value": ...} or {"ok": false, "error": ...}); the test in Rust
decides what to check. Between commands it keeps Playwright's event loop
turning so console messages are recorded when they happen.
"""

import json
import os
import select
import sys
import time

from playwright.sync_api import sync_playwright

ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def main():
    executable = os.environ.get("SWITCHBOARD_CHROMIUM", "/usr/bin/chromium")
    console = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        start = time.monotonic()

        def record(kind, text, url=""):
            console.append({"type": kind, "text": text, "url": url, "at": round(time.monotonic() - start, 3)})

        # The location names the resource of a "Failed to load resource" message.
        page.on("console", lambda m: record(m.type, m.text, (m.location or {}).get("url") or ""))
        page.on("pageerror", lambda e: record("pageerror", f"{e} ({(e.stack or '').strip()})"))
        reply({"ok": True, "value": browser.version})
        while True:
            ready, _, _ = select.select([sys.stdin], [], [], 0.05)
            if not ready:
                page.wait_for_timeout(10)
                continue
            line = sys.stdin.readline()
            if not line:
                break
            try:
                command = json.loads(line)
            except ValueError as e:
                reply({"ok": False, "error": f"bad command: {e}"})
                continue
            if command.get("cmd") == "quit":
                reply({"ok": True, "value": None})
                break
            try:
                reply({"ok": True, "value": run(page, command, console)})
            except Exception as e:  # reported to the test, which fails with it
                reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
        browser.close()


def run(page, command, console):
    cmd = command["cmd"]
    selector = command.get("selector")
    if cmd == "open":
        page.goto(command["url"], wait_until="load")
        return page.url
    if cmd == "url":
        return page.url
    if cmd == "attr":
        el = page.query_selector(selector)
        return el.get_attribute(command["name"]) if el else None
    if cmd == "text":
        el = page.query_selector(selector)
        return el.text_content() if el else None
    if cmd == "visible":
        el = page.query_selector(selector)
        return bool(el and el.is_visible())
    if cmd == "count":
        return len(page.query_selector_all(selector))
    if cmd == "hover":
        page.hover(selector, position=command.get("position"))
        return None
    if cmd == "fill":
        page.fill(selector, command["value"])
        return None
    if cmd == "click":
        page.click(selector)
        return None
    if cmd == "session_storage":
        return page.evaluate("(k) => sessionStorage.getItem(k)", command["key"])
    if cmd == "screenshot":
        # From the top, so the sticky header sits where it belongs.
        page.evaluate("() => window.scrollTo(0, 0)")
        page.wait_for_timeout(100)
        page.screenshot(path=command["path"], full_page=command.get("full_page", True))
        return command["path"]
    if cmd == "viewport":
        page.set_viewport_size({"width": command["width"], "height": command["height"]})
        return None
    if cmd == "load_script":
        # Adds <script src=...> to the page (same origin, so the CSP allows it);
        # says whether it loaded.
        return page.evaluate(
            """(src) => new Promise((done) => {
                const s = document.createElement("script");
                s.src = src;
                s.onload = () => done(true);
                s.onerror = () => done(false);
                document.head.appendChild(s);
            })""",
            command["src"],
        )
    if cmd == "busy":
        # Holds the page's main thread, as a busy tab does: frames queue up
        # and are then handled in one go.
        page.evaluate("(ms) => { const end = Date.now() + ms; while (Date.now() < end) {} }", command["ms"])
        return None
    if cmd == "console":
        return list(console)
    if cmd == "eval":
        # Evaluates a JavaScript expression in the page and returns its value.
        return page.evaluate(command["js"])
    raise ValueError(f"unknown command {cmd!r}")


def reply(answer):
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
