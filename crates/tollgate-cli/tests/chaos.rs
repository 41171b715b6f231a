//! Faults under load, with real `tollgate` processes: a gateway killed mid-stream, upstreams
//! failing in bursts and streaming slowly, clients that stop reading. (Redis restarted under load
//! is in `replicas.rs`; a writer killed under load in `durable.rs`.)

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

mod common;

use std::time::Duration;

use common::{Replica, config_file, sse_events};
use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_testkit::{FakeUpstream, FakeUpstreamConfig, RedisServer};

fn client() -> reqwest::Client {
    common::client(Duration::from_secs(60))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends the streamed request `body` to `doomed`, reads `events` of its events, then kills the
/// process (as a crash would); the token stream's id and what was read.
async fn killed_after(
    doomed: &mut Replica,
    http: &reqwest::Client,
    body: &Value,
    events: usize,
) -> (String, String) {
    let started = http
        .post(doomed.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let id = started.headers()["x-tollgate-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut reading = started.bytes_stream();
    let mut text = String::new();
    while sse_events(&text).len() < events {
        text.push_str(&String::from_utf8_lossy(
            &reading.next().await.unwrap().unwrap(),
        ));
    }
    doomed.kill();
    (id, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_stream_is_resumed_on_another_and_ends_in_an_error_not_a_hang() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 200,
        chunk_delay: Duration::from_millis(30),
        fail_first: 0,
        ..Default::default()
    })
    .await;
    let (_dir, path) = config_file(&format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\n[streams]\nproducer_timeout_seconds = 1\n",
        upstream.base_url()
    ));
    let mut doomed = Replica::start(&redis.url(), &path, &[]);
    let survivor = Replica::start(&redis.url(), &path, &[]);
    let http = client();
    let body = json!({"model": "up/m", "stream": true, "temperature": 0.7,
                      "messages": [{"role": "user", "content": "a long story"}]});
    // The process running the generation dies (as a crash would).
    let (id, text) = killed_after(&mut doomed, &http, &body, 5).await;
    let mut seen = sse_events(&text);
    let last = seen.last().unwrap().0.unwrap();

    // The client resumes on the other process: what was written is there, then a clear error.
    let rest = http
        .get(survivor.url(&format!("/v1/streams/{id}")))
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    seen.extend(sse_events(&rest));
    let ids: Vec<u64> = seen.iter().map(|(i, _)| i.unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "no chunk lost or repeated: {ids:?}"
    );
    assert!(ids.len() < 200, "the generation cannot have finished");
    let final_event: Value = serde_json::from_str(
        rest.lines()
            .rev()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(final_event["error"]["code"], "stream_interrupted", "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_upstream_errors_and_slow_streams_are_absorbed_by_retries_and_fallback() {
    let redis = RedisServer::start();
    // One deployment is down (every answer a 500), half of another's answers are 500s, and the
    // third streams slowly (a first token after 100 ms, then 200 tokens/s).
    let (_dir, path) = config_file(
        "[providers.down]\nkind = \"mock\"\nerror_rate = 1.0\n\
         [providers.flaky]\nkind = \"mock\"\nerror_rate = 0.5\n\
         [providers.slow]\nkind = \"mock\"\ntokens_per_second = 200.0\nfirst_token_latency_ms = 100\n\
         [aliases.chat]\ndeployments = [{ model = \"down/m\", weight = 2 }, { model = \"flaky/m\", weight = 2 }, { model = \"slow/m\", weight = 1 }]\n\
         [retry]\nmax_retries = 1\nbase_backoff_ms = 5\nmax_backoff_ms = 20\n\
         [cache]\nenabled = false\n",
    );
    let replicas = [
        Replica::start(&redis.url(), &path, &[]),
        Replica::start(&redis.url(), &path, &[]),
    ];
    let http = client();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (http, url) = (http.clone(), replicas[c % 2].url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..15 {
                let body = json!({"model": "chat", "stream": i % 2 == 0, "max_tokens": 8,
                                  "messages": [{"role": "user", "content": format!("client {c} asks {i}")}]});
                let r = http.post(&url).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                let route = r.headers().get("x-tollgate-route").map(|v| v.to_str().unwrap().to_owned());
                let text = r.text().await.unwrap();
                // A streamed answer that started must also end properly.
                if i % 2 == 0 && status == 200 {
                    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
                }
                statuses.push((status, route));
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    assert_eq!(statuses.len(), 120);
    assert!(
        statuses.iter().all(|(s, _)| *s == 200),
        "every request answered: {statuses:?}"
    );
    // The deployment that is down never answered; the others did.
    let routes: std::collections::BTreeSet<String> =
        statuses.into_iter().filter_map(|(_, r)| r).collect();
    assert!(!routes.contains("down/m"), "{routes:?}");
    assert!(
        routes.contains("slow/m") && routes.contains("flaky/m"),
        "{routes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_stall_no_one_else_and_memory_stays_bounded() {
    let redis = RedisServer::start();
    let (_dir, path) = config_file("[cache]\nenabled = false\n");
    let replica = Replica::start(&redis.url(), &path, &[]);
    let http = client();
    // Warm up, then measure.
    for _ in 0..20 {
        http.post(replica.url("/v1/chat/completions"))
            .json(&json!({"model": "mock/echo", "messages": [{"role": "user", "content": "warm"}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let before = rss_kib(replica.pid());
    // 30 clients ask for long streams (about 200 KB each) and never read past the headers.
    let long: String = (0..4000).map(|i| format!("w{i} ")).collect();
    let mut stalled = Vec::new();
    for _ in 0..30 {
        let r = http
            .post(replica.url("/v1/chat/completions"))
            .json(
                &json!({"model": "mock/echo", "stream": true, "max_tokens": 4096,
                          "messages": [{"role": "user", "content": long}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        stalled.push(r);
    }
    // Everyone else is served as usual meanwhile.
    for i in 0..100 {
        let r = http
            .post(replica.url("/v1/chat/completions"))
            .json(&json!({"model": "mock/echo", "messages": [{"role": "user", "content": format!("question {i}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert!(answer["choices"][0]["message"]["content"].is_string());
    }
    let during = rss_kib(replica.pid());
    assert!(
        during < before + 128 * 1024,
        "RSS grew from {before} KiB to {during} KiB with 30 stalled readers"
    );
    // The stalled clients can still read their whole answers.
    for r in stalled.drain(..3) {
        let text = r.text().await.unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"));
    }
    drop(stalled);
}

/// The leader of identical requests dies mid-generation: an identical request on another
/// gateway notices within the producer timeout and takes the work over, instead of waiting for
/// the dead leader's lease to expire (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_request_takes_over_from_a_leader_whose_gateway_died() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 40,
        chunk_delay: Duration::from_millis(50),
        fail_first: 0,
        ..Default::default()
    })
    .await;
    let (_dir, path) = config_file(&format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\n[streams]\nproducer_timeout_seconds = 1\n",
        upstream.base_url()
    ));
    let mut doomed = Replica::start(&redis.url(), &path, &[]);
    let survivor = Replica::start(&redis.url(), &path, &[]);
    let http = client();
    let body = json!({"model": "up/m", "stream": true, "temperature": 0,
                      "messages": [{"role": "user", "content": "one answer for all"}]});
    killed_after(&mut doomed, &http, &body, 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let since = std::time::Instant::now();
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let answer = http
        .post(survivor.url("/v1/chat/completions"))
        .json(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        upstream.answer().as_str()
    );
    assert!(
        since.elapsed() < Duration::from_secs(20),
        "waited for the dead leader's lease ({:?})",
        since.elapsed()
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "the survivor generated it again, once"
    );
}

/// A leader may die before its token stream exists (during the semantic lookup or the limits):
/// nothing then shows it dead but its single-flight lease, so the lease lasts only the producer
/// timeout and is renewed from the moment it is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_lease_lasts_the_producer_timeout_and_is_renewed_while_it_works() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 40,
        chunk_delay: Duration::from_millis(50),
        fail_first: 0,
        ..Default::default()
    })
    .await;
    let (_dir, path) = config_file(&format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\n[streams]\nproducer_timeout_seconds = 1\n",
        upstream.base_url()
    ));
    let leader = Replica::start(&redis.url(), &path, &[]);
    let http = client();
    let body = json!({"model": "up/m", "stream": true, "temperature": 0,
                      "messages": [{"role": "user", "content": "a long answer"}]});
    let started = http
        .post(leader.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    let mut reading = started.bytes_stream();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut lease_ttls = Vec::new();
    for _ in 0..3 {
        let leases: Vec<String> = redis::cmd("KEYS")
            .arg("*:l:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(leases.len(), 1, "{leases:?}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&leases[0])
            .query_async(&mut conn)
            .await
            .unwrap();
        lease_ttls.push(ttl);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Never longer than the producer timeout, and still held well past it: renewed.
    assert!(
        lease_ttls.iter().all(|&t| t > 0 && t <= 1000),
        "{lease_ttls:?}"
    );
    while reading.next().await.is_some() {}
}
