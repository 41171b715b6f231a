//! The dashboard at `/ui` in a real headless Chromium (Debian's, driven through its
//! ChromeDriver over the WebDriver protocol), against a real `tollgate` process: the pages load
//! with no console errors, a key created in the page works over the API, and the overview's
//! chart shows a request just made. Screenshots of every tab are kept in the target directory
//! (`CARGO_TARGET_TMPDIR/ui-screenshots`).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, as the tests do"
)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Replica, client, config_file};
use serde_json::{Value, json};
use tollgate_testkit::RedisServer;

/// The W3C name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one headless Chromium session; both end when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver: {e} (scripts/install-test-deps.sh installs Debian's chromium and chromium-driver)")
            });
        let base = format!("http://127.0.0.1:{port}");
        let http = client(Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"]},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {path}: {error}"))
    }

    /// A WebDriver command's value, or the error it answered.
    async fn try_command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let mut reply: Value = request.send().await.unwrap().json().await.unwrap();
        let value = reply["value"].take();
        match value.get("error") {
            Some(_) => Err(value),
            None => Ok(value),
        }
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        let body = json!({"script": script, "args": []});
        self.command(reqwest::Method::POST, "/execute/sync", Some(body))
            .await
    }

    async fn element(&self, css: &str) -> String {
        let body = json!({"using": "css selector", "value": css});
        let found = self
            .command(reqwest::Method::POST, "/element", Some(body))
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Clicks what `css` selects. A table the page redraws as it refreshes may replace the
    /// element between finding and clicking it (a stale element): it is found again.
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let element = self.element(css).await;
            let path = format!("/element/{element}/click");
            match self
                .try_command(reqwest::Method::POST, &path, Some(json!({})))
                .await
            {
                Ok(_) => return,
                Err(e) if e["error"] == "stale element reference" && Instant::now() < deadline => {}
                Err(e) => panic!("WebDriver click on {css}: {e}"),
            }
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Waits until `script` returns true.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.script(script).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot as `name.png` among the test artifacts.
    async fn screenshot(&self, name: &str) {
        let png = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// The browser console's errors (failed loads, script errors, CSP violations).
    async fn console_errors(&self) -> Vec<String> {
        let url = format!("{}/session/{}/se/log", self.base, self.session);
        let reply: Value = self
            .http
            .post(url)
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session first: ChromeDriver quits its Chromium then (killed at once, it would
        // leave Chromium running). A plain blocking request, since this runs outside the runtime.
        let _ = (|| -> std::io::Result<()> {
            use std::io::{Read, Write};
            let address = self.base.trim_start_matches("http://");
            let mut tcp = std::net::TcpStream::connect(address)?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                tcp,
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            )?;
            tcp.read_to_end(&mut Vec::new()).map(drop)
        })();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_manages_keys_and_charts_traffic_in_a_real_browser() {
    let redis = RedisServer::start();
    // `slow/echo` generates 20 words a second: long enough to watch.
    let (_dir, config) = config_file(
        "[server]\nmaster_key = \"mk\"\n[providers.slow]\nkind = \"mock\"\nmodels = [\"slow/echo\"]\ntokens_per_second = 20.0\n",
    );
    let gateway = Replica::start(&redis.url(), &config, &[]);
    let http = client(Duration::from_secs(30));
    let browser = Browser::start().await;

    // The page asks for the master key; a wrong one is refused, the right one lets in.
    browser.open(&gateway.url("/ui")).await;
    browser
        .until(
            "the sign-in form",
            "return !document.getElementById('login').hidden",
        )
        .await;
    browser.type_into("#master-key", "not-it").await;
    browser.click("#login-form button").await;
    browser
        .until(
            "the refusal",
            "return document.getElementById('login-error').textContent.includes('not the master key')",
        )
        .await;
    browser
        .script("document.getElementById('master-key').value = ''; return true")
        .await;
    browser.type_into("#master-key", "mk").await;
    browser.click("#login-form button").await;
    browser
        .until(
            "the overview",
            "return !document.getElementById('app').hidden && window.__series.rps.length > 0",
        )
        .await;

    // A key created in the page works over the API, with the limits given in the page.
    browser.click("[data-tab=keys]").await;
    browser
        .type_into("#key-form input[name=name]", "from-the-page")
        .await;
    browser.type_into("#key-form input[name=rpm]", "100").await;
    browser.click("#key-form button").await;
    browser
        .until(
            "the new key",
            "return document.getElementById('new-key').textContent.length > 10",
        )
        .await;
    let key = browser
        .script("return document.getElementById('new-key').textContent")
        .await;
    let key = key.as_str().unwrap();
    browser
        .until("the key in the list", "return document.querySelector('#key-table tbody').textContent.includes('from-the-page')")
        .await;
    browser.screenshot("keys").await;
    let answer = http
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-tollgate-session-id", "ui-session")
        .json(&json!({"model": "mock/echo", "temperature": 0,
                      "messages": [{"role": "user", "content": "hello from the page's key"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let keys: Value = http
        .get(gateway.url("/admin/keys"))
        .bearer_auth("mk")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let made = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "from-the-page")
        .unwrap();
    assert_eq!(made["limits"]["rpm"], 100);

    // The overview's chart shows that request.
    browser.click("[data-tab=overview]").await;
    browser
        .until(
            "the request in the chart",
            "const c = document.getElementById('chart-rps'); return Number(c.dataset.requests) >= 1 && Number(c.dataset.max) > 0",
        )
        .await;
    browser.screenshot("overview").await;

    // The request made with the page's key is among the recent ones (from the database).
    browser.click("[data-tab=requests]").await;
    browser
        .until("the request among the recent ones", "return document.querySelector('#request-table tbody').textContent.includes('mock/echo')")
        .await;
    browser.screenshot("requests").await;
    // And, now that the database has it, in the overview's history of every replica.
    browser.click("[data-tab=overview]").await;
    browser
        .until(
            "the request in the history",
            "const c = document.getElementById('history-requests'); return Number(c.dataset.requests) >= 1 && Number(c.dataset.points) === 61",
        )
        .await;
    browser.screenshot("overview-history").await;

    // Its session, and the session's messages, in the conversations (from the database).
    browser.click("[data-tab=conversations]").await;
    browser
        .until("the session", "return document.querySelector('#session-table tbody').textContent.includes('ui-session')")
        .await;
    browser.click("#session-table button.link").await;
    browser
        .until("its messages", "return document.querySelector('#message-table tbody').textContent.includes(\"hello from the page's key\")")
        .await;
    browser.screenshot("conversations").await;

    // A generation running now is listed, and watched as its tokens arrive.
    let words: Vec<String> = (0..40).map(|i| format!("word{i}")).collect();
    let running = {
        let http = http.clone();
        let url = gateway.url("/v1/chat/completions");
        let body = json!({"model": "slow/echo", "stream": true, "max_tokens": 46,
                          "messages": [{"role": "user", "content": words.join(" ")}]});
        let key = key.to_owned();
        tokio::spawn(async move {
            let reply = http
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            reply.text().await.unwrap()
        })
    };
    browser.click("[data-tab=live]").await;
    browser
        .until(
            "the running generation",
            "return document.querySelector('#live-table tbody').textContent.includes('slow/echo')",
        )
        .await;
    browser.click("#live-table button").await;
    browser
        .until(
            "its tokens",
            "return document.getElementById('watch-text').textContent.includes('word')",
        )
        .await;
    browser.screenshot("live").await;
    browser
        .until(
            "its end",
            "return document.getElementById('watch-state').textContent === '(ended)'",
        )
        .await;
    let watched = browser
        .script("return document.getElementById('watch-text').textContent")
        .await;
    assert!(watched.as_str().unwrap().contains("word39"), "{watched}");
    assert!(running.await.unwrap().contains("word39"));
    browser
        .until(
            "no generation running",
            "return !document.querySelector('#live-table tbody').textContent.includes('slow/echo')",
        )
        .await;

    // Every other tab loads and shows what the API has.
    browser.click("[data-tab=cache]").await;
    browser
        .until(
            "the cache's model",
            "return document.querySelector('#cache-table tbody').textContent.includes('mock/echo')",
        )
        .await;
    browser.screenshot("cache").await;
    browser.click("[data-tab=spend]").await;
    browser
        .until(
            "the spend table",
            "return document.getElementById('status').textContent.startsWith('updated')",
        )
        .await;
    browser.screenshot("spend").await;
    browser.click("[data-tab=models]").await;
    browser.screenshot("models").await;

    // A revoked key stops working.
    browser.click("[data-tab=keys]").await;
    browser
        .until(
            "the key list",
            "return document.querySelectorAll('#key-table button').length === 1",
        )
        .await;
    browser
        .script("window.confirm = () => true; return true")
        .await;
    browser.click("#key-table button").await;
    browser
        .until("the list without it", "return !document.querySelector('#key-table tbody').textContent.includes('from-the-page')")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(
                &json!({"model": "mock/echo", "messages": [{"role": "user", "content": "again"}]}),
            )
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked key still works: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without a master key (as `make run` starts it, open on loopback), an empty key signs in.
    let (_open_dir, open_config) = config_file("");
    let open = Replica::start(&redis.url(), &open_config, &[]);
    browser.open(&open.url("/ui")).await;
    browser
        .until(
            "the sign-in form",
            "return !document.getElementById('login').hidden",
        )
        .await;
    browser.click("#login-form button").await;
    browser
        .until(
            "the overview",
            "return !document.getElementById('app').hidden && window.__series.rps.length > 0",
        )
        .await;

    let errors = browser.script("return window.__errors").await;
    assert_eq!(errors, json!([]), "script errors in the page");
    let console: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        // The wrong master key's refusal is an expected 403 in the console.
        .filter(|m| !m.contains("status of 403"))
        .collect();
    assert!(console.is_empty(), "console errors: {console:?}");
}
