//! A real browser for the dashboard tests: Debian's Chromium driven by
//! Playwright for Python (`tests/browser/driver.py`), one JSON command per line.
//!
//! `./scripts/test.sh` installs both (apt `chromium`, and `playwright` from PyPI
//! into a virtual environment under `~/.cache/switchboard`). The Python used is
//! `$SWITCHBOARD_PLAYWRIGHT_PYTHON`, else that environment's, else `python3`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One console message (`kind` is `error`, `warning`, `info`, …, or
/// `pageerror` for an uncaught exception); `url` is where it was logged — for
/// a "Failed to load resource" message, the resource.
#[derive(Debug, Clone)]
pub struct ConsoleMessage {
    pub kind: String,
    pub text: String,
    pub url: String,
}

pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub version: String,
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_PLAYWRIGHT_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = PathBuf::from(home).join(".cache/switchboard/playwright/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

impl Browser {
    /// Starts Chromium; panics with what to install when it cannot.
    pub fn start() -> Self {
        let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/driver.py");
        let mut child = Command::new(python())
            .arg(driver)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with playwright is needed: run ./scripts/test.sh (it installs chromium and playwright)");
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = BufReader::new(child.stdout.take().expect("driver stdout"));
        let mut browser = Self {
            child,
            stdin,
            stdout,
            version: String::new(),
        };
        let hello = browser.read().unwrap_or_else(|e| {
            panic!("the browser did not start ({e}): run ./scripts/test.sh, which installs Debian's chromium and playwright for Python")
        });
        browser.version = hello.as_str().unwrap_or_default().to_string();
        browser
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("the browser driver exited".into());
        }
        let answer: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if answer["ok"] == true {
            Ok(answer["value"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or("?").to_string())
        }
    }

    /// Runs one driver command; panics on failure.
    pub fn cmd(&mut self, command: Value) -> Value {
        self.try_cmd(command.clone())
            .unwrap_or_else(|e| panic!("browser command {command} failed: {e}"))
    }

    pub fn try_cmd(&mut self, command: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{command}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        self.read()
    }

    pub fn open(&mut self, url: &str) {
        self.cmd(json!({"cmd": "open", "url": url}));
    }

    pub fn attr(&mut self, selector: &str, name: &str) -> Option<String> {
        self.cmd(json!({"cmd": "attr", "selector": selector, "name": name}))
            .as_str()
            .map(str::to_owned)
    }

    pub fn text(&mut self, selector: &str) -> Option<String> {
        self.cmd(json!({"cmd": "text", "selector": selector}))
            .as_str()
            .map(str::to_owned)
    }

    pub fn visible(&mut self, selector: &str) -> bool {
        self.cmd(json!({"cmd": "visible", "selector": selector})) == true
    }

    /// A numeric attribute (NaN when absent or not a number).
    pub fn number(&mut self, selector: &str, name: &str) -> f64 {
        self.attr(selector, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&mut Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if Instant::now() > deadline {
                let status = self.text("#conn-text").unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for {what} (page status: {status:?})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Returns once the page has painted two more frames: what an input
    /// just triggered (a hover's tooltip, drawn on the next frame) is drawn.
    pub fn frames_painted(&mut self) {
        self.cmd(json!({
            "cmd": "eval",
            "js": "new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))"
        }));
    }

    /// Waits until an attribute has a value.
    pub fn wait_attr(&mut self, selector: &str, name: &str, value: &str, timeout: Duration) {
        let what = format!("{selector}[{name}={value:?}]");
        self.wait_for(&what, timeout, |b| {
            (b.attr(selector, name).as_deref() == Some(value)).then_some(())
        });
    }

    /// Console messages and page errors so far, oldest first.
    pub fn console(&mut self) -> Vec<ConsoleMessage> {
        self.cmd(json!({"cmd": "console"}))
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| ConsoleMessage {
                kind: m["type"].as_str().unwrap_or_default().to_string(),
                text: m["text"].as_str().unwrap_or_default().to_string(),
                url: m["url"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    pub fn screenshot(&mut self, path: &std::path::Path) {
        self.cmd(json!({"cmd": "screenshot", "path": path, "full_page": true}));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
