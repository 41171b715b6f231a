//! The official `openai` and `anthropic` Python packages against real `tollgate` processes
//! (install them with `pip install -r tests/python/requirements.txt`; `scripts/install-deps.sh`
//! does).

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

mod common;

use std::process::Command;

use common::{Replica, config_file};
use serde_json::{Value, json};
use tollgate_testkit::{FakeUpstream, FakeUpstreamConfig, RedisServer};

/// Runs `tests/python/SCRIPT` with `env`; asserts it ran every check and `passed` passed.
fn run_python(script: &str, env: &[(&str, String)], passed: usize) {
    let path = format!("{}/../../tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "install the clients: pip install -r tests/python/requirements.txt\n{stderr}"
    );
    assert!(
        output.status.success(),
        "python checks failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{passed} passed, 0 failed")),
        "{stdout}"
    );
}

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
    run_python(
        "openai_client.py",
        &[
            ("OPENAI_BASE_URL", replica.url("/v1")),
            ("OPENAI_API_KEY", keys[0].clone()),
            ("TOLLGATE_LIMITED_KEY", keys[1].clone()),
        ],
        8,
    );
}

/// An agent's tool loop through `/v1/responses` with the `openai` package, on two replicas in
/// front of a fake upstream that calls tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_runs_a_tool_loop_through_responses() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let (_dir, path) = config_file(&format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\n",
        upstream.base_url()
    ));
    let a = Replica::start(&redis.url(), &path, &[]);
    let b = Replica::start(&redis.url(), &path, &[]);
    run_python(
        "responses_tools.py",
        &[
            ("OPENAI_BASE_URL", a.url("/v1")),
            ("TOLLGATE_OTHER_BASE_URL", b.url("/v1")),
        ],
        3,
    );
    // Both steps of each loop reached the upstream: 2 loops of 2 steps.
    assert_eq!(upstream.calls(), 4);
}

/// The official `anthropic` package through `/v1/messages` on two replicas, in front of an
/// OpenAI-compatible upstream that calls tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_client_runs_a_tool_loop_through_messages() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let (_dir, path) = config_file(&format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\n",
        upstream.base_url()
    ));
    let a = Replica::start(&redis.url(), &path, &[]);
    let b = Replica::start(&redis.url(), &path, &[]);
    run_python(
        "anthropic_messages.py",
        &[
            ("ANTHROPIC_BASE_URL", a.url("")),
            ("TOLLGATE_OTHER_BASE_URL", b.url("")),
        ],
        4,
    );
    // Both steps of each loop reached the upstream: 2 loops of 2 steps.
    assert_eq!(upstream.calls(), 4);
}
