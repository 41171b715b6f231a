//! The official `openai` Python package against a real `tollgate` process (install it with
//! `pip install -r tests/python/requirements.txt`; `scripts/install-deps.sh` does).

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

mod common;

use std::process::Command;

use common::{Replica, config_file};
use serde_json::{Value, json};
use tollgate_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_works_against_tollgate() {
    let redis = RedisServer::start();
    let (_dir, path) = config_file("[server]\nmaster_key = \"mk\"\n");
    let replica = Replica::start(&redis.url(), &path, &[]);
    tollgate_providers::init_tls();
    let http = reqwest::Client::new();
    let mut keys = Vec::new();
    for limits in [json!({}), json!({"rpm": 1})] {
        let created: Value = http
            .post(replica.url("/admin/keys"))
            .bearer_auth("mk")
            .json(&json!({"name": "python", "limits": limits}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.push(created["key"].as_str().unwrap().to_owned());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/openai_client.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .env("OPENAI_BASE_URL", replica.url("/v1"))
        .env("OPENAI_API_KEY", &keys[0])
        .env("TOLLGATE_LIMITED_KEY", &keys[1])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "install the client: pip install -r tests/python/requirements.txt"
    );
    assert!(
        output.status.success(),
        "python checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("8 passed, 0 failed"), "{stdout}");
}
