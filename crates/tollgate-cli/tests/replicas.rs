//! Several `tollgate` processes on one Redis: limits, coalescing, streams and sessions hold
//! across them; Redis dying under load slows tollgate down without taking it down.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

mod common;

use std::time::{Duration, Instant};

use common::{Replica, config_file, sse_events};
use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_testkit::{FakeUpstream, FakeUpstreamConfig, RedisServer};

fn client() -> reqwest::Client {
    common::client(Duration::from_secs(30))
}

fn upstream_config(upstream: &FakeUpstream, extra: &str) -> String {
    format!(
        "[redis]\ncommand_timeout_ms = 300\n[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up/m\"]\n{extra}",
        upstream.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rpm_limit_holds_exactly_across_three_processes() {
    let redis = RedisServer::start();
    let (_dir, path) = config_file("[server]\nmaster_key = \"mk\"\n");
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let key = replicas[0]
        .create_key(&http, json!({"name": "load", "limits": {"rpm": 20}}))
        .await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (http, url, key) = (
            http.clone(),
            replicas[i % 3].url("/v1/chat/completions"),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "mock/echo", "temperature": 0.9, "messages": [{"role": "user", "content": format!("q{i}")}]});
            http.post(url).bearer_auth(key).json(&body).send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        40,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_capacity_holds_across_processes_and_keys_and_cache_hits_do_not_use_it() {
    let redis = RedisServer::start();
    let (_dir, path) = config_file(
        "[server]\nmaster_key = \"mk\"\n[capacity.\"mock/echo\"]\nrpm = 12\nmax_concurrency = 50\n",
    );
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(
            replicas[0]
                .create_key(
                    &http,
                    json!({"name": format!("team-{i}"), "tenant": "acme"}),
                )
                .await,
        );
    }
    let ask = |replica: usize, key: usize, body: Value| {
        let request = http
            .post(replicas[replica].url("/v1/chat/completions"))
            .bearer_auth(&keys[key])
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    // One cacheable question goes upstream (one of the 12) and is cached for the tenant.
    let cached = json!({"model": "mock/echo", "temperature": 0, "messages": [{"role": "user", "content": "cached"}]});
    assert_eq!(ask(0, 0, cached.clone()).await.status(), 200);
    // 36 fresh questions from 3 keys over 2 processes: the other 11 pass.
    let asks = (0..36).map(|i| {
        let body = json!({"model": "mock/echo", "temperature": 0.9, "messages": [{"role": "user", "content": format!("q{i}")}]});
        ask(i % 2, i % 3, body)
    });
    let answers = futures::future::join_all(asks).await;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    assert_eq!(
        ok,
        11,
        "{:?}",
        answers.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
    let key_2_answered = (2..36)
        .step_by(3)
        .filter(|&i| answers[i].status() == 200)
        .count() as u64;
    for refused in answers.into_iter().filter(|r| r.status() != 200) {
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().contains_key("retry-after"));
        let body: Value = refused.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("mock/echo's capacity in requests per minute"),
            "{message}"
        );
    }
    // The capacity is spent, yet the cached answer is served to every key on every process.
    for i in 0..6 {
        let r = ask(i % 2, i % 3, cached.clone()).await;
        assert_eq!(r.status(), 200, "{i}: {:?}", r.text().await);
        assert_eq!(r.headers()["x-tollgate-cache"], "hit", "{i}");
    }
    // The keys' own limits were not charged for what the model refused: of its 600 a minute,
    // key 2 has used its fresh questions answered, its 2 hits and this one.
    let r = ask(1, 2, cached).await;
    let remaining: u64 = r.headers()["x-ratelimit-remaining-requests"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(remaining, 600 - key_2_answered - 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queue_for_a_slot_first_come_first_served_across_processes() {
    let redis = RedisServer::start();
    // One slot, answers that take 300 ms.
    let (_dir, path) = config_file(
        "[server]\nmaster_key = \"mk\"\n[providers.slow]\nkind = \"mock\"\nmodels = [\"slow/m\"]\nfirst_token_latency_ms = 300\n",
    );
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let key = replicas[0]
        .create_key(
            &http,
            json!({"name": "gpu", "limits": {"max_concurrency": 1, "queue_wait_seconds": 20}}),
        )
        .await;
    let ask = |i: usize, wait: Option<&str>| {
        let mut request = http
            .post(replicas[i % 2].url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "slow/m", "temperature": 0.9, "messages": [{"role": "user", "content": format!("q{i}")}]}));
        if let Some(w) = wait {
            request = request.header("x-tollgate-queue-wait", w);
        }
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            let position = r
                .headers()
                .get("x-tollgate-queue-position")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (status, position, Instant::now())
        }
    };
    // Four requests arrive 50 ms apart, alternating processes: the first takes the slot, the
    // others wait in order of arrival and are answered one after another, in that order.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(tokio::spawn(ask(i, None)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One that will not wait is refused at once, while the others hold or wait for the slot.
    let (status, position, refused_at) = ask(9, Some("0")).await;
    assert_eq!((status, position), (429, None));
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    assert!(refused_at < done[1].2, "refused without waiting its turn");
    assert!(done.iter().all(|(s, ..)| *s == 200), "{done:?}");
    assert_eq!(
        done.iter().map(|(_, p, _)| *p).collect::<Vec<_>>(),
        [None, Some(1), Some(2), Some(3)]
    );
    for pair in done.windows(2) {
        assert!(pair[0].2 < pair[1].2, "answered in order of arrival");
    }
    // One slot for answers of 300 ms each: four take at least 1.2 s.
    assert!(done[3].2 - start >= Duration::from_millis(1200));

    // A client that leaves while it waits gives its place up; one whose wait runs out is
    // refused, told how long it waited.
    let holder = tokio::spawn(ask(20, None));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let leaving = http
        .post(replicas[1].url("/v1/chat/completions"))
        .bearer_auth(&key)
        .timeout(Duration::from_millis(100))
        .json(&json!({"model": "slow/m", "temperature": 0.9, "messages": [{"role": "user", "content": "gone"}]}))
        .send()
        .await;
    assert!(leaving.is_err(), "the client gave up");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = http
        .post(replicas[0].url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-tollgate-queue-wait", "0.05")
        .json(&json!({"model": "slow/m", "temperature": 0.9, "messages": [{"role": "user", "content": "impatient"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["x-tollgate-queue-position"],
        "1",
        "first: the one that left is gone"
    );
    assert!(r.headers().contains_key("x-tollgate-queue-wait-ms"));
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("concurrent requests") && message.contains("in the queue"),
        "{message}"
    );
    assert_eq!(holder.await.unwrap().0, 200);
}

/// An HTTP endpoint that answers 200 to every POST and keeps the bodies.
struct Webhook {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Webhook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok() {
                    kept.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Webhook { url, bodies }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_per_hour_holds_across_processes_and_its_alert_goes_out_once() {
    let redis = RedisServer::start();
    let hook = Webhook::start();
    // A dollar a token: each answer costs some ten dollars.
    let (_dir, path) = config_file(&format!(
        "[server]\nmaster_key = \"mk\"\n[prices.\"mock/echo\"]\ninput_per_million = 1000000.0\noutput_per_million = 1000000.0\n[alerts]\nwebhook_url = \"{}\"\n",
        hook.url
    ));
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let key = replicas[0].create_key(&http, json!({"name": "spender", "tenant": "acme", "limits": {"budgets": [{"window": "1h", "usd": 100, "alert_at": [0.5]}]}})).await;
    // Its alerts, read through the bus like any event (the stream is the tenant's).
    let group = http
        .post(replicas[1].url("/v1/events/budget-alerts/groups"))
        .bearer_auth(&key)
        .json(&json!({"group": "ops", "start": "beginning"}))
        .send()
        .await
        .unwrap();
    assert!(group.status().is_success(), "{}", group.status());
    // Questions alternate between the processes until the budget refuses one.
    let mut answered = 0;
    let refused = loop {
        let r = http
            .post(replicas[answered % 2].url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "mock/echo", "temperature": 0.9, "messages": [{"role": "user", "content": format!("question number {answered}")}]}))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            break r;
        }
        answered += 1;
        assert!(answered < 50, "the budget never refused");
    };
    assert!(answered >= 3, "{answered}");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("$100.00 per 1h"), "{message}");
    // One alert at half the budget, however many requests and processes charged past it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hook.bodies.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alerts = hook.bodies.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["window"], "1h");
    assert_eq!(alerts[0]["share"], 0.5);
    assert_eq!(alerts[0]["tenant"], "acme");
    assert!(alerts[0]["spent_usd"].as_f64().unwrap() >= 50.0);
    let read: Value = http
        .post(replicas[0].url("/v1/events/budget-alerts/groups/ops/read"))
        .bearer_auth(&key)
        .json(&json!({"consumer": "c1", "count": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = read["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_budget_binds_its_keys_together_and_a_models_binds_everyone() {
    let redis = RedisServer::start();
    let hook = Webhook::start();
    // A dollar a token; acme's keys together get $40 an hour, everyone together $100 an hour
    // of mock/echo.
    let (_dir, path) = config_file(&format!(
        "[server]\nmaster_key = \"mk\"\n[prices.\"mock/echo\"]\ninput_per_million = 1000000.0\noutput_per_million = 1000000.0\n[alerts]\nwebhook_url = \"{}\"\n[tenants.acme]\nbudgets = [{{ window = \"1h\", usd = 40, alert_at = [0.5] }}]\n[capacity.\"mock/echo\"]\nbudgets = [{{ window = \"1h\", usd = 100, alert_at = [0.5] }}]\n",
        hook.url
    ));
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let mut keys = Vec::new();
    for (name, tenant) in [("a1", "acme"), ("a2", "acme"), ("g1", "globex")] {
        keys.push(
            replicas[0]
                .create_key(&http, json!({"name": name, "tenant": tenant}))
                .await,
        );
    }
    // Asks with the keys in turn, over both processes, until one is refused; its message.
    let spend = |keys: Vec<String>| {
        let (http, urls) = (
            http.clone(),
            [
                replicas[0].url("/v1/chat/completions"),
                replicas[1].url("/v1/chat/completions"),
            ],
        );
        async move {
            for i in 0..60 {
                let r = http
                    .post(&urls[i % 2])
                    .bearer_auth(&keys[i % keys.len()])
                    .json(&json!({"model": "mock/echo", "temperature": 0.9, "messages": [{"role": "user", "content": format!("question number {i}")}]}))
                    .send()
                    .await
                    .unwrap();
                if r.status() != 200 {
                    assert_eq!(r.status(), 429);
                    let body: Value = r.json().await.unwrap();
                    return (i, body["error"]["message"].as_str().unwrap().to_owned());
                }
            }
            panic!("no budget refused");
        }
    };
    let (answered, message) = spend(keys[..2].to_vec()).await;
    assert!(answered >= 2, "both of acme's keys spent: {answered}");
    assert!(
        message.contains("$40.00 per 1h for tenant acme"),
        "{message}"
    );
    let (_, message) = spend(keys[2..].to_vec()).await;
    assert!(
        message.contains("$100.00 per 1h for model mock/echo"),
        "{message}"
    );
    // One alert per budget: the tenant's (with its tenant), the model's (with none).
    let deadline = Instant::now() + Duration::from_secs(5);
    while hook.bodies.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut alerts = hook.bodies.lock().unwrap().clone();
    alerts.sort_by_key(|a| a["scope"].as_str().unwrap_or("").to_owned());
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(
        (alerts[0]["scope"].as_str(), alerts[0]["name"].as_str()),
        (Some("model"), Some("mock/echo"))
    );
    assert!(alerts[0].get("tenant").is_none(), "{alerts:?}");
    assert_eq!(
        (alerts[1]["scope"].as_str(), alerts[1]["tenant"].as_str()),
        (Some("tenant"), Some("acme"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_goes_to_the_deployment_with_room_and_each_deployments_capacity_holds() {
    let redis = RedisServer::start();
    // Two deployments behind one alias, 3 and 2 requests a minute each.
    let (_dir, path) = config_file(
        "[aliases.smart]\ndeployments = [{ model = \"mock/a\", weight = 1 }, { model = \"mock/b\", weight = 1 }]\n[capacity.\"mock/a\"]\nrpm = 3\n[capacity.\"mock/b\"]\nrpm = 2\n",
    );
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let mut routes = Vec::new();
    let mut refused = Vec::new();
    for i in 0..8 {
        let r = http
            .post(replicas[i % 2].url("/v1/chat/completions"))
            .json(&json!({"model": "smart", "temperature": 0.9, "messages": [{"role": "user", "content": format!("q{i}")}]}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            routes.push(r.headers()["x-tollgate-route"].to_str().unwrap().to_owned());
        } else {
            assert_eq!(r.status(), 429);
            let body: Value = r.json().await.unwrap();
            refused.push(body["error"]["message"].as_str().unwrap().to_owned());
        }
    }
    // Whichever the router picks first, a full deployment hands the request to the other: all
    // five slots of the minute are used, none over.
    routes.sort();
    assert_eq!(
        routes,
        ["mock/a", "mock/a", "mock/a", "mock/b", "mock/b"],
        "{refused:?}"
    );
    assert_eq!(refused.len(), 3);
    assert!(
        refused
            .iter()
            .all(|m| m.contains("'s capacity in requests per minute")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_identical_requests_over_three_processes_make_one_upstream_call() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 12,
        chunk_delay: Duration::from_millis(40),
        fail_first: 0,
        ..Default::default()
    })
    .await;
    let (_dir, path) = config_file(&upstream_config(&upstream, ""));
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (http, url) = (http.clone(), replicas[i % 3].url("/v1/chat/completions"));
        let stream = i % 2 == 0;
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "up/m", "temperature": 0, "stream": stream, "messages": [{"role": "user", "content": "the same question"}]});
            let response = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let text = response.text().await.unwrap();
            if stream {
                sse_events(&text).into_iter().map(|(_, c)| c).collect::<String>()
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                v["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
            }
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            upstream.answer(),
            "every caller gets the whole answer"
        );
    }
    assert_eq!(
        upstream.calls(),
        1,
        "one upstream call for thirty identical requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_started_on_one_process_is_read_and_resumed_on_others() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 40,
        chunk_delay: Duration::from_millis(15),
        fail_first: 0,
        ..Default::default()
    })
    .await;
    let (_dir, path) = config_file(&upstream_config(&upstream, ""));
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let body = json!({"model": "up/m", "stream": true, "temperature": 0.5, "messages": [{"role": "user", "content": "long story"}]});
    let started = http
        .post(replicas[0].url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let id = started.headers()["x-tollgate-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // The first client goes away at once; the generation goes on.
    drop(started);
    // A reader on the second process takes some events, then its connection drops.
    let mut reader = http
        .get(replicas[1].url(&format!("/v1/streams/{id}")))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut text = String::new();
    while sse_events(&text).len() < 10 {
        text.push_str(&String::from_utf8_lossy(
            &reader.next().await.unwrap().unwrap(),
        ));
    }
    drop(reader);
    let mut seen = sse_events(&text);
    // Keep only whole events (the last one may have been cut mid-way).
    let last_id = seen.last().unwrap().0.unwrap();
    // It resumes on the third process from its last id.
    let rest = http
        .get(replicas[2].url(&format!("/v1/streams/{id}")))
        .header("last-event-id", last_id.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    seen.extend(sse_events(&rest));
    let ids: Vec<u64> = seen.iter().map(|(i, _)| i.unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "no chunk lost or repeated: {ids:?}"
    );
    let whole: String = seen.into_iter().map(|(_, c)| c).collect();
    assert_eq!(whole, upstream.answer());
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_shared_between_processes() {
    let redis = RedisServer::start();
    let (_dir, path) = config_file("");
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let body = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "remember the number 42"}]});
    let r = http
        .post(replicas[0].url("/v1/chat/completions"))
        .header("x-tollgate-session-id", "shared-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let messages = loop {
        let v: Value = http
            .get(replicas[1].url("/v1/sessions/shared-1/messages"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["data"].as_array().is_some_and(|d| d.len() == 2) || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(messages["data"][0]["content"], "remember the number 42");
    assert_eq!(messages["data"][1]["role"], "assistant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_under_load_slows_tollgate_down_and_it_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let (_dir, path) = config_file("[redis]\ncommand_timeout_ms = 300\n");
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| r.url("/v1/chat/completions"))
        .collect();
    let ask = move |i: usize| {
        let (http, url) = (client(), urls[i % 2].clone());
        async move {
            let body = json!({"model": "mock/echo", "temperature": 0, "messages": [{"role": "user", "content": "cached question"}]});
            let r = http.post(url).json(&body).send().await.unwrap();
            let cache = r
                .headers()
                .get("x-tollgate-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), cache)
        }
    };
    assert_eq!(ask(0).await.0, 200);
    assert_eq!(ask(1).await, (200, Some("hit".to_owned())));
    // Load runs while Redis dies: every request is still answered.
    let load = {
        let ask = ask.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..80 {
                statuses.push(ask(i).await.0);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    let during = ask(0).await;
    assert_eq!(
        during,
        (200, Some("bypass".to_owned())),
        "answered without Redis"
    );
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    redis.restart();
    let back = Instant::now();
    loop {
        let (status, cache) = ask(1).await;
        assert_eq!(status, 200);
        if cache.as_deref() != Some("bypass") {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not recovered within 5 s of Redis coming back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every replica is ready again within the same 5 s (a connection may still be reconnecting).
    for replica in &replicas {
        loop {
            let ready = http
                .get(replica.url("/readyz"))
                .send()
                .await
                .unwrap()
                .status();
            if ready == 200 {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(5),
                "not ready within 5 s of Redis coming back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_stream_finish_before_exiting() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 20,
        chunk_delay: Duration::from_millis(40),
        fail_first: 0,
        ..Default::default()
    })
    .await;
    let (_dir, path) = config_file(&upstream_config(&upstream, ""));
    let mut replica = Replica::start(&redis.url(), &path, &[]);
    let body = json!({"model": "up/m", "stream": true, "messages": [{"role": "user", "content": "take your time"}]});
    let response = client()
        .post(replica.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut text = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).into_owned();
    replica.terminate();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: {text}"
    );
    assert_eq!(
        sse_events(&text)
            .into_iter()
            .map(|(_, c)| c)
            .collect::<String>(),
        upstream.answer()
    );
    let status = replica
        .wait_exit(Duration::from_secs(10))
        .expect("tollgate exits once drained");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_can_live_on_a_redis_of_its_own() {
    let main = RedisServer::start();
    let cache = RedisServer::start();
    let (_dir, path) = config_file(&format!("[redis]\ncache_url = \"{}\"\n", cache.url()));
    let replica = Replica::start(&main.url(), &path, &[]);
    let http = client();
    let body = json!({"model": "mock/echo", "temperature": 0, "messages": [{"role": "user", "content": "where am I cached"}]});
    // One request with a session (its keys stay on the main Redis), then the same request twice.
    let r = http
        .post(replica.url("/v1/chat/completions"))
        .header("x-tollgate-session-id", "s1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = http
            .post(replica.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        seen.push(r.headers()["x-tollgate-cache"].to_str().unwrap().to_owned());
    }
    // The session was new (no history), so its request was this very request: both are hits.
    assert_eq!(seen, ["hit", "hit"]);
    let keys = |url: String| {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("KEYS")
            .arg("tg:*")
            .query::<Vec<String>>(&mut c)
            .unwrap()
    };
    // The session exchange is recorded in the background: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !keys(main.url()).iter().any(|k| k.starts_with("tg:{s:")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (in_main, in_cache) = (keys(main.url()), keys(cache.url()));
    assert!(
        in_cache.iter().any(|k| k.starts_with("tg:{c:")),
        "{in_cache:?}"
    );
    assert!(
        !in_main.iter().any(|k| k.starts_with("tg:{c:")),
        "cache entries leaked into the main Redis: {in_main:?}"
    );
    assert!(
        in_main.iter().any(|k| k.starts_with("tg:{s:")),
        "sessions stay on the main Redis: {in_main:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_vectors_events_and_the_outbox_each_live_on_a_redis_of_their_own() {
    let main = RedisServer::start();
    let own: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();
    let (_dir, path) = config_file(&format!(
        "[redis]\nfeatures_url = \"{}\"\nvectors_url = \"{}\"\nevents_url = \"{}\"\noutbox_url = \"{}\"\n[vectors]\nembedding_model = \"mock/embed\"\n",
        own[0].url(),
        own[1].url(),
        own[2].url(),
        own[3].url()
    ));
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&main.url(), &path, &[]))
        .collect();
    let http = client();
    let send = |r: usize, method: reqwest::Method, path: &str, body: Value| {
        let request = http.request(method, replicas[r].url(path)).json(&body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            let body = r.json::<Value>().await.unwrap();
            assert!(status.is_success(), "{status}: {body}");
            body
        }
    };
    // Written through one process, read through the other.
    send(
        0,
        reqwest::Method::PUT,
        "/v1/features/user/u1/profile",
        json!({"features": {"age": 41}}),
    )
    .await;
    let got = send(
        1,
        reqwest::Method::GET,
        "/v1/features/user/u1?groups=profile",
        Value::Null,
    )
    .await;
    assert_eq!(got["groups"]["profile"]["features"]["age"], 41, "{got}");
    send(
        0,
        reqwest::Method::PUT,
        "/v1/vectors/docs/cat",
        json!({"text": "the cat sat on the mat"}),
    )
    .await;
    let found = send(
        1,
        reqwest::Method::POST,
        "/v1/vectors/docs/search",
        json!({"text": "cat on a mat", "k": 1}),
    )
    .await;
    assert_eq!(found["data"][0]["id"], "cat");
    send(
        0,
        reqwest::Method::POST,
        "/v1/events/orders/groups",
        json!({"group": "billing"}),
    )
    .await;
    send(
        0,
        reqwest::Method::POST,
        "/v1/events/orders",
        json!({"order": "o1"}),
    )
    .await;
    let read = send(
        1,
        reqwest::Method::POST,
        "/v1/events/orders/groups/billing/read",
        json!({"consumer": "c1", "count": 10}),
    )
    .await;
    assert_eq!(read["data"].as_array().map(Vec::len), Some(1), "{read}");
    // A chat request's usage record goes through the outbox.
    send(
        1,
        reqwest::Method::POST,
        "/v1/chat/completions",
        json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let keys = |url: String| {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("KEYS")
            .arg("tg:*")
            .query::<Vec<String>>(&mut c)
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while keys(own[3].url()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_main = keys(main.url());
    for (server, prefix) in own
        .iter()
        .zip(["tg:{f:", "tg:{v:", "tg:{ev:", "tg:{ev:outbox}"])
    {
        let held = keys(server.url());
        assert!(
            held.iter().any(|k| k.starts_with(prefix)),
            "{prefix}: {held:?}"
        );
        assert!(
            !in_main.iter().any(|k| k.starts_with(prefix)),
            "{prefix} leaked into the main Redis: {in_main:?}"
        );
    }
    assert!(
        !keys(own[2].url())
            .iter()
            .any(|k| k.starts_with("tg:{ev:outbox}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_change_through_one_process_takes_effect_on_all_within_a_second() {
    let redis = RedisServer::start();
    let (_dir, path) = config_file("[server]\nmaster_key = \"mk\"\n");
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let route_of = |replica: usize, user: &str| {
        let (http, url, user) = (
            http.clone(),
            replicas[replica].url("/v1/chat/completions"),
            user.to_owned(),
        );
        async move {
            let body = json!({"model": "smart", "temperature": 0.3, "messages": [{"role": "user", "content": "hi"}]});
            let r = http
                .post(url)
                .bearer_auth("mk")
                .header("x-tollgate-user", user)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("x-tollgate-route")
                    .map(|v| v.to_str().unwrap().to_owned()),
            )
        }
    };
    assert_eq!(route_of(1, "u").await.0, 404, "no model named smart yet");
    let put = |model: Value| {
        let (http, url) = (http.clone(), replicas[0].url("/admin/models/smart"));
        async move {
            http.put(url)
                .bearer_auth("mk")
                .json(&model)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let experiment = json!({
        "deployments": [{"name": "a", "model": "mock/a"}, {"name": "b", "model": "mock/b"}],
        "experiment": {"name": "smart-rollout", "arms": [{"deployment": "a", "percent": 50}, {"deployment": "b", "percent": 50}]}
    });
    assert_eq!(put(experiment).await, 200);
    let changed = Instant::now();
    for r in 1..3 {
        loop {
            if route_of(r, "u").await.0 == 200 {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "replica {r} did not apply the change within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Sticky arms: a user gets the same deployment on every process; users spread over both.
    let mut seen = std::collections::BTreeSet::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let routes: Vec<_> = futures::future::join_all((0..3).map(|r| route_of(r, &user))).await;
        assert!(
            routes.windows(2).all(|w| w[0] == w[1]),
            "{user}: {routes:?}"
        );
        seen.insert(routes[0].1.clone().unwrap());
    }
    assert_eq!(seen.len(), 2, "both arms get users: {seen:?}");
    // Disabling one deployment moves everyone to the other, everywhere.
    let only_b = json!({"deployments": [{"name": "a", "model": "mock/a", "status": "disabled"}, {"name": "b", "model": "mock/b"}]});
    assert_eq!(put(only_b).await, 200);
    let changed = Instant::now();
    for r in 0..3 {
        loop {
            if route_of(r, "user-1").await.1.as_deref() == Some("b") {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "replica {r} still routes to a"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let bad = put(json!({"deployments": [{"name": "x", "model": "nobody/x"}]})).await;
    assert_eq!(bad, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_written_through_one_process_is_found_by_the_next_search_on_every_other() {
    let redis = RedisServer::start();
    let (_dir, path) = config_file("[vectors]\nembedding_model = \"mock/embed\"\n");
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let search = |replica: &Replica, text: &str| {
        let (http, url) = (http.clone(), replica.url("/v1/vectors/docs/search"));
        let body = json!({"text": text, "k": 1});
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let found: Value = r.json().await.unwrap();
            found["data"][0]["id"].as_str().map(str::to_owned)
        }
    };
    let put = |replica: &Replica, id: &str, text: &str| {
        let (http, url) = (http.clone(), replica.url(&format!("/v1/vectors/docs/{id}")));
        let body = json!({"text": text, "tags": {"kind": "note"}});
        async move {
            let r = http.put(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    put(&replicas[0], "cat", "the cat sat on the mat").await;
    put(&replicas[0], "rain", "heavy rain expected tomorrow").await;
    // Each process loads the collection on first use and answers at once.
    for replica in &replicas {
        assert_eq!(
            search(replica, "cat on a mat").await.as_deref(),
            Some("cat")
        );
    }
    // A write on one process: the very next search on the others sees it, with no wait.
    for round in 0..20 {
        let id = format!("doc{round}");
        let text = format!("unique marker {round} zebra{round}");
        put(&replicas[round % 3], &id, &text).await;
        let other = &replicas[(round + 1) % 3];
        assert_eq!(search(other, &text).await.as_deref(), Some(id.as_str()));
    }
    // A process started afterwards rebuilds the collection from Redis.
    replicas[2].kill();
    replicas[2] = Replica::start(&redis.url(), &path, &[]);
    assert_eq!(
        search(&replicas[2], "rain tomorrow").await.as_deref(),
        Some("rain")
    );
    let info: Value = http
        .get(replicas[2].url("/v1/vectors/docs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["count"], 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cached_on_one_process_is_a_semantic_hit_on_another() {
    let redis = RedisServer::start();
    let (_dir, path) = config_file(
        "[semantic_cache]\nenabled = true\nthreshold = 0.8\nlookup_budget_ms = 60000\n",
    );
    let replicas: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&redis.url(), &path, &[]))
        .collect();
    let http = client();
    let ask = |replica: &Replica, text: &str| {
        let (http, url) = (http.clone(), replica.url("/v1/chat/completions"));
        let body = json!({"model": "mock/echo", "temperature": 0, "messages": [{"role": "user", "content": text}]});
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-tollgate-cache"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(
        ask(&replicas[0], "What is the capital of France?").await,
        "miss"
    );
    // The other process finds it by meaning on its very next lookup.
    assert_eq!(
        ask(&replicas[1], "what's the capital of france").await,
        "semantic"
    );
    assert_eq!(ask(&replicas[1], "How do I bake bread?").await, "miss");
    assert_eq!(ask(&replicas[0], "how do i bake bread").await, "semantic");
}
