//! The official `openai` and `anthropic` Python packages against real `tollgate` processes
//! (in the test environment `scripts/install-test-deps.sh` makes; `make test` runs it).

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

mod common;

use std::process::Command;

use common::{Replica, config_file};
use serde_json::{Value, json};
use tollgate_testkit::{FakeUpstream, FakeUpstreamConfig, RedisServer};

/// Runs `tests/python/SCRIPT` with `env`; asserts it ran every check and `passed` passed.
fn run_python(script: &str, env: &[(&str, String)], passed: usize) {
    let path = format!("{}/../../tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(tollgate_testkit::python_tool("python3"))
        .arg(path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "install the clients: scripts/install-test-deps.sh\n{stderr}"
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
        keys.push(
            replica
                .create_key(&http, json!({"name": "python", "limits": limits}))
                .await,
        );
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

/// A fake upstream of each wire format (OpenAI-compatible, Anthropic's Messages API, with an
/// API key it checks) and a configuration naming it provider `up`.
async fn tool_upstreams() -> Vec<(FakeUpstream, String)> {
    let mut upstreams = Vec::new();
    for kind in ["openai", "anthropic"] {
        let upstream = FakeUpstream::start(FakeUpstreamConfig {
            api_key: Some("sk-up".into()),
            ..FakeUpstreamConfig::default()
        })
        .await;
        let base_url = match kind {
            "openai" => upstream.base_url(),
            _ => upstream.anthropic_base_url(),
        };
        let config = format!(
            "[providers.up]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\napi_key = \"sk-up\"\n"
        );
        upstreams.push((upstream, config));
    }
    upstreams
}

/// An agent's tool loop through `/v1/responses` with the `openai` package, on two replicas in
/// front of a fake upstream that calls tools, of either wire format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_runs_a_tool_loop_through_responses() {
    let redis = RedisServer::start();
    for (upstream, config) in tool_upstreams().await {
        let (_dir, path) = config_file(&config);
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
        assert_eq!(upstream.calls(), 4, "{config}");
        // The loop's second step carried the calls and their outputs, in the upstream's format.
        let second = &upstream.requests()[1];
        assert_eq!(
            tool_results(second),
            ["get_weather ok", "get_time ok"],
            "{second}"
        );
    }
}

/// The official `anthropic` package through `/v1/messages` on two replicas, in front of a fake
/// upstream that calls tools, of either wire format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_client_runs_a_tool_loop_through_messages() {
    let redis = RedisServer::start();
    for (upstream, config) in tool_upstreams().await {
        let (_dir, path) = config_file(&config);
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
        assert_eq!(upstream.calls(), 4, "{config}");
        let first = &upstream.requests()[0];
        let second = &upstream.requests()[1];
        assert_eq!(
            tool_results(second),
            ["get_weather ok", "get_time ok"],
            "{second}"
        );
        // The system prompt reached the upstream in its format.
        let system = match first.get("system") {
            Some(Value::String(system)) => system.clone(),
            _ => first["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        };
        assert_eq!(system, "Be brief.", "{first}");
    }
}

/// The tool results a recorded upstream request ends with, in either wire format.
fn tool_results(request: &Value) -> Vec<String> {
    let messages = request["messages"].as_array().unwrap();
    match &messages.last().unwrap()["content"] {
        // Anthropic: tool_result blocks in the last user turn.
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "tool_result")
            .map(|b| b["content"].as_str().unwrap().to_owned())
            .collect(),
        // OpenAI: one tool message per result.
        _ => messages
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect(),
    }
}
