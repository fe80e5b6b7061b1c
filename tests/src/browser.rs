//! A real headless browser for tests: Debian's `chromium` driven through `chromedriver`
//! (W3C WebDriver over HTTP), both running inside a testbed namespace so that the browser reaches
//! what processes of that namespace reach (an agent's admin endpoint on 127.0.0.1).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{http, netns, process::ChildGuard};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// chromedriver's port inside the namespace.
const DRIVER_PORT: u16 = 9515;

/// A browser session; dropping it closes the browser, then stops chromedriver.
pub struct Browser {
    netns: PathBuf,
    driver: SocketAddr,
    session: String,
    // Dropped after `Drop::drop` ended the session (fields drop after the body).
    _chromedriver: ChildGuard,
}

impl Browser {
    /// Starts chromedriver and a headless chromium inside `netns`; their logs and the browser
    /// profile go under `work_dir`. Fails (never skips) when either is not installed.
    pub fn start(netns: &Path, work_dir: &Path) -> anyhow::Result<Self> {
        for program in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(program).exists() {
                bail!(
                    "{program} is missing: the browser tests need Debian's chromium and chromium-driver (run `cargo xtask setup`)"
                );
            }
        }
        let mut command = netns::command_in(netns, CHROMEDRIVER)?;
        command.arg(format!("--port={DRIVER_PORT}"));
        let log = work_dir.join("chromedriver.log");
        let chromedriver = ChildGuard::spawn("chromedriver", command, log)?;
        let driver = SocketAddr::from(([127, 0, 0, 1], DRIVER_PORT));
        let deadline = Instant::now() + Duration::from_secs(30);
        // A request sent before its server runs may be accepted and never answered.
        while !chromedriver.log().contains("started successfully") {
            if Instant::now() > deadline {
                bail!("chromedriver did not start within 30 s:\n{}", chromedriver.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let status = http::get_in(netns, driver, "/status").and_then(|r| r.json::<Value>());
            if status.as_ref().is_ok_and(|v| v["value"]["ready"] == true) {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver not ready after 30 s ({status:?}):\n{}", chromedriver.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = work_dir.join("chromium-profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // Root in a namespace: chromium's own sandbox needs user namespaces.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut browser =
            Self { netns: netns.to_path_buf(), driver, session: String::new(), _chromedriver: chromedriver };
        let created =
            browser.call("POST", "/session", Some(&capabilities)).context("creating a WebDriver session")?;
        browser.session = created["sessionId"].as_str().context("no sessionId")?.to_string();
        Ok(browser)
    }

    /// One WebDriver command; returns its `value`, or fails with the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let bytes = body.map(serde_json::to_vec).transpose()?;
        let response = http::request_in(&self.netns, self.driver, method, path, bytes.as_deref())?;
        let value: Value = response.json()?;
        if response.status != 200 {
            bail!("WebDriver {method} {path}: {} {}", response.status, value["value"]);
        }
        Ok(value["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Loads `url` and waits for the page's load event.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", &self.session_path("/url"), Some(&json!({"url": url}))).map(drop)
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.call("POST", &self.session_path("/execute/sync"), Some(&json!({"script": script, "args": []})))
    }

    /// Calls `script` until its result satisfies `done`; fails with the last result.
    pub fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let value = self.execute(script)?;
            if done(&value) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("{what}: not seen within 15 s; last: {value:#}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The browser console's entries since the last call (`level`, `message`).
    pub fn console(&self) -> anyhow::Result<Vec<Value>> {
        let value = self.call("POST", &self.session_path("/se/log"), Some(&json!({"type": "browser"})))?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.session_path(""), None);
        }
    }
}
