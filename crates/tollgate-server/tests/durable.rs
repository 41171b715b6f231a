//! The Responses API, durable records (SQLite and PostgreSQL through the outbox), spend and
//! budgets, and summaries of long conversations: gateways called as tower services on real
//! redis-servers and real databases, with a fake upstream where a test must see what was sent.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, as the tests do"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_server::{AppState, Config, Gateway, app};
use tollgate_testkit::{
    FakeUpstream, FakeUpstreamConfig, PostgresDb, RedisServer, TestDatabase, unique_prefix,
};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// A gateway on `redis_url` with the database at `db_url` and its outbox writer running; `prefix`
/// lets several gateways share one Redis as replicas do.
async fn gateway(redis_url: &str, db_url: &str, prefix: &str, extra: &str) -> AppState {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    // The semantic cache is off unless `extra` configures it.
    let semantic = if extra.contains("[semantic_cache]") {
        ""
    } else {
        "[semantic_cache]\nenabled = false\n"
    };
    let text = format!(
        "[redis]\nkey_prefix = \"{prefix}\"\ncommand_timeout_ms = 500\n\
         {semantic}[outbox]\nclaim_idle_seconds = 1\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(Some(&path), &HashMap::new()).unwrap();
    let db = tollgate_db::Database::connect(db_url).await.unwrap();
    let gw = Arc::new(
        Gateway::build(config, redis_url)
            .await
            .unwrap()
            .with_database(db),
    );
    tokio::spawn(tollgate_server::serve::write_outbox(gw.clone()));
    gw
}

fn fake_provider(upstream: &FakeUpstream) -> String {
    format!(
        "[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"x\"\n",
        upstream.base_url()
    )
}

async fn call(
    gw: &AppState,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(key) = auth {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    send(gw, req.body(body).unwrap()).await
}

/// `req` through `app`, the whole answer read.
async fn send(gw: &AppState, req: Request<Body>) -> Reply {
    let response = app(gw.clone()).oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// One chat turn of `session` through `fake/m`; the answer must be a 200.
async fn session_turn(gw: &AppState, session: &str, text: &str) {
    let turn = session_turn_as(gw, None, session, text).await;
    assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
}

/// One chat turn of `session` through `fake/m`, with `key` when given; the reply as it came.
async fn session_turn_as(gw: &AppState, key: Option<&str>, session: &str, text: &str) -> Reply {
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("x-tollgate-session-id", session)
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let body =
        json!({"model": "fake/m", "messages": [{"role": "user", "content": text}]}).to_string();
    send(gw, req.body(Body::from(body)).unwrap()).await
}

async fn create_key(gw: &AppState, limits: Value) -> String {
    let created = call(
        gw,
        "POST",
        "/admin/keys",
        Some("mk"),
        Some(json!({"name": "k", "limits": limits})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    created.json()["key"].as_str().unwrap().to_owned()
}

/// One key per tenant, each named after it (the gateway's master key must be `mk`).
async fn keys_in_tenants(gw: &AppState, tenants: &[&str]) -> Vec<String> {
    let mut keys = Vec::new();
    for tenant in tenants {
        let body = json!({"name": tenant, "tenant": tenant});
        let created = call(gw, "POST", "/admin/keys", Some("mk"), Some(body)).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        keys.push(created.json()["key"].as_str().unwrap().to_owned());
    }
    keys
}

/// Waits until every durable record reached the database.
async fn drained(gw: &AppState) {
    let outbox = &gw.durable.as_ref().unwrap().outbox;
    // What was queued before (the records of every answer seen) is in the outbox first.
    outbox.flushed().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while outbox.backlog().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn flushall(redis: &RedisServer) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// The user and assistant turns the upstream received in its last request.
fn last_turns(upstream: &FakeUpstream) -> Vec<(String, String)> {
    let requests = upstream.requests();
    requests.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn turns(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_survives_flushall_from_the_database_and_stays_with_its_key() {
    for fresh in TestDatabase::both() {
        let redis = RedisServer::start();
        let upstream = FakeUpstream::start(FakeUpstreamConfig {
            chunks: 2,
            ..Default::default()
        })
        .await;
        let extra = format!(
            "[server]\nmaster_key = \"mk\"\n{}",
            fake_provider(&upstream)
        );
        let prefix = unique_prefix();
        let gw = gateway(&redis.url(), &fresh.url(), &prefix, &extra).await;
        // A second replica on the same Redis and database.
        let other = gateway(&redis.url(), &fresh.url(), &prefix, &extra).await;
        let key = create_key(&gw, json!({})).await;
        let stranger = create_key(&gw, json!({})).await;
        let answer = upstream.answer();

        let first = call(
            &gw,
            "POST",
            "/v1/responses",
            Some(&key),
            Some(json!({"model": "fake/m", "input": "q1", "instructions": "be brief"})),
        )
        .await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text);
        let first = first.json();
        assert_eq!(first["object"], "response");
        assert_eq!(first["status"], "completed");
        assert_eq!(first["output"][0]["content"][0]["text"], answer.as_str());
        assert_eq!(
            last_turns(&upstream),
            turns(&[("system", "be brief"), ("user", "q1")])
        );
        // The next step runs on the other replica: the record was in Redis before the answer.
        let second = call(
            &other,
            "POST",
            "/v1/responses",
            Some(&key),
            Some(json!({"model": "fake/m", "previous_response_id": first["id"],
                        "input": [{"role": "user", "content": [{"type": "input_text", "text": "q2"}]}]})),
        )
        .await
        .json();
        assert_eq!(second["previous_response_id"], first["id"]);
        // Instructions are the request's own: not carried along the chain.
        assert_eq!(
            last_turns(&upstream),
            turns(&[("user", "q1"), ("assistant", &answer), ("user", "q2")])
        );

        // Another key sees nothing of it.
        let theirs = call(
            &gw,
            "GET",
            &format!("/v1/responses/{}", second["id"].as_str().unwrap()),
            Some(&stranger),
            None,
        )
        .await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.text);
        let hijack = call(
            &gw,
            "POST",
            "/v1/responses",
            Some(&stranger),
            Some(json!({"model": "fake/m", "previous_response_id": second["id"], "input": "x"})),
        )
        .await;
        assert_eq!(hijack.status, StatusCode::BAD_REQUEST, "{}", hijack.text);
        assert_eq!(hijack.json()["error"]["param"], "previous_response_id");

        // Redis loses everything; the database has the chain.
        drained(&gw).await;
        flushall(&redis).await;
        let third = call(
            &gw,
            "POST",
            "/v1/responses",
            Some(&key),
            Some(json!({"model": "fake/m", "previous_response_id": second["id"], "input": "q3"})),
        )
        .await;
        assert_eq!(third.status, StatusCode::OK, "{}", third.text);
        assert_eq!(
            last_turns(&upstream),
            turns(&[
                ("user", "q1"),
                ("assistant", &answer),
                ("user", "q2"),
                ("assistant", &answer),
                ("user", "q3"),
            ])
        );
        let got = call(
            &other,
            "GET",
            &format!("/v1/responses/{}", first["id"].as_str().unwrap()),
            Some(&key),
            None,
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        assert_eq!(got.json(), first);
        // What the database had is back in Redis.
        assert!(matches!(
            gw.responses
                .get(first["id"].as_str().unwrap())
                .await
                .unwrap(),
            tollgate_redis::StoredResponse::Found(_)
        ));

        // Deleted is deleted: in Redis, and in the database once Redis is gone again.
        let id = third.json()["id"].as_str().unwrap().to_owned();
        let deleted = call(
            &gw,
            "DELETE",
            &format!("/v1/responses/{id}"),
            Some(&key),
            None,
        )
        .await;
        assert_eq!(deleted.json()["deleted"], true);
        let path = format!("/v1/responses/{id}");
        assert_eq!(
            call(&other, "GET", &path, Some(&key), None).await.status,
            StatusCode::NOT_FOUND
        );
        drained(&gw).await;
        flushall(&redis).await;
        assert_eq!(
            call(&other, "GET", &path, Some(&key), None).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_is_stored_before_it_completes() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let db = sqlite.url();
    let prefix = unique_prefix();
    let gw = gateway(&redis.url(), &db, &prefix, "").await;
    let other = gateway(&redis.url(), &db, &prefix, "").await;
    let reply = call(
        &gw,
        "POST",
        "/v1/responses",
        None,
        Some(json!({"model": "mock/echo", "input": "tell me about streams", "stream": true})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let events = sse_events(&reply.text);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let deltas: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    for (i, (kind, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], kind.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
    assert!(completed["usage"]["output_tokens"].as_u64().unwrap() > 0);
    // Readable on another replica the moment the stream ended.
    let got = call(
        &other,
        "GET",
        &format!("/v1/responses/{}", completed["id"].as_str().unwrap()),
        None,
        None,
    )
    .await;
    assert_eq!(got.json(), *completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_responses_requests_get_clear_errors() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let db = sqlite.url();
    let gw = gateway(&redis.url(), &db, &unique_prefix(), "").await;
    for (body, param) in [
        (json!({"model": "mock/echo"}), None),
        (json!({"model": "mock/echo", "input": ""}), Some("input")),
        (json!({"model": "mock/echo", "input": 7}), Some("input")),
        (
            json!({"model": "mock/echo", "input": [{"role": "robot", "content": "x"}]}),
            Some("input[0].role"),
        ),
        (
            json!({"model": "mock/echo", "input": [{"type": "function_call_output", "output": "x"}]}),
            Some("input[0].call_id"),
        ),
        (
            json!({"model": "mock/echo", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            Some("input[0].content[0].type"),
        ),
        (
            json!({"model": "mock/echo", "input": "x", "tools": [{"type": "web_search"}]}),
            Some("tools[0].type"),
        ),
        (
            json!({"model": "mock/echo", "input": "x", "previous_response_id": "resp_nope"}),
            Some("previous_response_id"),
        ),
        (
            json!({"model": "mock/echo", "input": "x", "bogus": 1}),
            None,
        ),
    ] {
        let reply = call(&gw, "POST", "/v1/responses", None, Some(body.clone())).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert!(!error["message"].as_str().unwrap().is_empty());
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{body}: {}", reply.text);
        }
    }
    let unknown = call(
        &gw,
        "POST",
        "/v1/responses",
        None,
        Some(json!({"model": "nope/x", "input": "x"})),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    let missing = call(&gw, "GET", "/v1/responses/resp_missing", None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["type"], "not_found_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_budget_stops_a_key_at_the_right_request_across_replicas() {
    let redis = RedisServer::start();
    let db = PostgresDb::create();
    // No cache: every request goes upstream and costs.
    let extra = "[server]\nmaster_key = \"mk\"\n[cache]\nenabled = false\n\
                 [prices.\"mock/echo\"]\ninput_per_million = 1000.0\noutput_per_million = 2000.0\n";
    let prefix = unique_prefix();
    let replicas = [
        gateway(&redis.url(), &db.url(), &prefix, extra).await,
        gateway(&redis.url(), &db.url(), &prefix, extra).await,
    ];
    let body = json!({"model": "mock/echo", "temperature": 0, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "the same question"}]});
    // One request's cost, measured on a key without a budget.
    let probe = create_key(&replicas[0], json!({})).await;
    let usage = call(
        &replicas[0],
        "POST",
        "/v1/chat/completions",
        Some(&probe),
        Some(body.clone()),
    )
    .await
    .json()["usage"]
        .clone();
    let cost = (usage["prompt_tokens"].as_f64().unwrap() * 1000.0
        + usage["completion_tokens"].as_f64().unwrap() * 2000.0)
        / 1e6;
    assert!(cost > 0.0);
    // Three requests fit under 2.5 requests' worth: the third passes the budget, the fourth
    // finds it spent.
    let key = create_key(&replicas[0], json!({"daily_budget_usd": cost * 2.5})).await;
    for i in 0..3 {
        let reply = call(
            &replicas[i % 2],
            "POST",
            "/v1/chat/completions",
            Some(&key),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {}: {}",
            i + 1,
            reply.text
        );
    }
    for replica in &replicas {
        let refused = call(
            replica,
            "POST",
            "/v1/chat/completions",
            Some(&key),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.text
        );
        let error = &refused.json()["error"];
        assert_eq!(error["code"], "budget_exceeded");
        assert_eq!(error["type"], "insufficient_quota");
        assert!(error["message"].as_str().unwrap().contains("daily budget"));
        let retry: u64 = refused.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=86_400).contains(&retry));
        // The Responses API is held to the same budget.
        let refused = call(
            replica,
            "POST",
            "/v1/responses",
            Some(&key),
            Some(json!({"model": "mock/echo", "input": "x"})),
        )
        .await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    }

    // Spend per key and model, from Redis and from the database.
    drained(&replicas[0]).await;
    let key_id = call(&replicas[0], "GET", "/admin/keys", Some("mk"), None)
        .await
        .json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] != Value::Null && k["limits"]["daily_budget_usd"].is_number())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let spend = call(
        &replicas[1],
        "GET",
        &format!("/admin/spend?key={key_id}"),
        Some("mk"),
        None,
    )
    .await
    .json();
    let entry = &spend["data"][0];
    let today = entry["today"]["total_usd"].as_f64().unwrap();
    assert!((today - 3.0 * cost).abs() < 1e-9, "{spend}");
    assert!((entry["today"]["models"]["mock/echo"].as_f64().unwrap() - today).abs() < 1e-12);
    let recorded = &entry["recorded"][0];
    assert_eq!(recorded["model"], "mock/echo");
    assert_eq!(recorded["requests"], 3);
    assert!((recorded["cost_usd"].as_f64().unwrap() - 3.0 * cost).abs() < 1e-9);
    assert_eq!(
        db.query(&format!(
            "SELECT COUNT(*) FROM usage_records WHERE key_id = '{key_id}'"
        )),
        "3"
    );
    // Without the master key, no spend.
    let denied = call(&replicas[0], "GET", "/admin/spend", Some(&key), None).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_read_back_from_the_database_and_goes_on() {
    for fresh in TestDatabase::both() {
        let redis = RedisServer::start();
        let upstream = FakeUpstream::start(FakeUpstreamConfig {
            chunks: 1,
            ..Default::default()
        })
        .await;
        let gw = gateway(
            &redis.url(),
            &fresh.url(),
            &unique_prefix(),
            &fake_provider(&upstream),
        )
        .await;
        let created = call(
            &gw,
            "POST",
            "/v1/sessions",
            None,
            Some(json!({"id": "s1", "system": "be kind"})),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        for q in ["a", "b"] {
            session_turn(&gw, "s1", q).await;
        }
        // The session is written after the answer: wait for it to reach the database.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            drained(&gw).await;
            let n = gw
                .durable
                .as_ref()
                .unwrap()
                .db
                .session_messages("s1", 100)
                .await
                .unwrap()
                .len();
            if n == 4 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{n} session messages in the database"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        flushall(&redis).await;

        let messages = call(&gw, "GET", "/v1/sessions/s1/messages", None, None).await;
        assert_eq!(messages.status, StatusCode::OK, "{}", messages.text);
        let contents: Vec<String> = messages.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect();
        let w = upstream.answer();
        assert_eq!(contents, ["be kind", "a", w.as_str(), "b", w.as_str()]);
        let info = call(&gw, "GET", "/v1/sessions/s1", None, None).await.json();
        assert_eq!(info["appended"], 4);

        // It goes on where it stopped: the history is sent, the numbering continues.
        session_turn(&gw, "s1", "c").await;
        assert_eq!(
            last_turns(&upstream),
            turns(&[
                ("system", "be kind"),
                ("user", "a"),
                ("assistant", &w),
                ("user", "b"),
                ("assistant", &w),
                ("user", "c")
            ])
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            drained(&gw).await;
            let seqs: Vec<i64> = gw
                .durable
                .as_ref()
                .unwrap()
                .db
                .session_messages("s1", 100)
                .await
                .unwrap()
                .iter()
                .map(|m| m.seq)
                .collect();
            if seqs == [1, 2, 3, 4, 5, 6] {
                break;
            }
            assert!(Instant::now() < deadline, "{seqs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Another owner cannot read it back.
        let deleted = call(&gw, "DELETE", "/v1/sessions/s1", None, None).await;
        assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
        drained(&gw).await;
        flushall(&redis).await;
        assert_eq!(
            call(&gw, "GET", "/v1/sessions/s1/messages", None, None)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chain_is_summarized_and_sent_as_summary_plus_recent_turns() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 3,
        ..Default::default()
    })
    .await;
    let sqlite = TestDatabase::sqlite();
    let db = sqlite.url();
    // The mock writes the summaries; the fake upstream answers the chain and shows what it got.
    let extra = format!(
        "{}[summaries]\nmodel = \"mock/summarizer\"\ntoken_budget = 60\nkeep_recent_tokens = 25\n",
        fake_provider(&upstream)
    );
    let gw = gateway(&redis.url(), &db, &unique_prefix(), &extra).await;
    let long =
        "please remember that the launch code is seven four nine and the meeting is on tuesday";
    let mut previous: Option<String> = None;
    let mut summarized = None;
    for step in 0..6 {
        let mut body = json!({"model": "fake/m", "input": format!("step {step}: {long}")});
        if let Some(p) = &previous {
            body["previous_response_id"] = json!(p);
        }
        let reply = call(&gw, "POST", "/v1/responses", None, Some(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let id = reply.json()["id"].as_str().unwrap().to_owned();
        // Wait for the background summary of this step, if one is due.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tollgate_redis::StoredResponse::Found(bytes) = gw.responses.get(&id).await.unwrap()
            else {
                panic!("response {id} not stored");
            };
            let record: Value = serde_json::from_slice(&bytes).unwrap();
            if record["version"] == 2 {
                summarized = Some(record);
                break;
            }
            if record["context"]["tokens"].as_u64().unwrap() <= 60 || Instant::now() > deadline {
                assert!(Instant::now() <= deadline, "no summary for {id}: {record}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        previous = Some(id);
    }
    let record = summarized.expect("a summary was written");
    let summary = record["context"]["summary"].as_str().unwrap();
    assert!(!summary.is_empty());
    let kept = record["context"]["messages"].as_array().unwrap().len();
    assert!(kept >= 2, "{record}");
    // The last request sent: the summary, then only recent turns, then its input.
    let sent = last_turns(&upstream);
    assert_eq!(sent[0].0, "system");
    assert!(
        sent[0]
            .1
            .starts_with("Summary of the earlier conversation:"),
        "{sent:?}"
    );
    assert!(sent.len() < 2 * 6, "{sent:?}");
    assert_eq!(
        sent.last().unwrap(),
        &("user".to_owned(), format!("step 5: {long}"))
    );
    assert!(
        !sent.iter().any(|(_, c)| c.starts_with("step 0:")),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_session_is_summarized_and_prompts_carry_the_summary() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 3,
        ..Default::default()
    })
    .await;
    let sqlite = TestDatabase::sqlite();
    let db = sqlite.url();
    let extra = format!(
        "{}[summaries]\nmodel = \"mock/summarizer\"\ntoken_budget = 60\nkeep_recent_tokens = 25\n",
        fake_provider(&upstream)
    );
    let gw = gateway(&redis.url(), &db, &unique_prefix(), &extra).await;
    let long = "note that the invoice number is 4471 and the customer prefers email over phone";
    for turn in 0..4 {
        session_turn(&gw, "long", &format!("turn {turn}: {long}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .sessions
        .unsummarized("long", "open")
        .await
        .unwrap()
        .summary
        .is_none()
    {
        assert!(Instant::now() < deadline, "the session was not summarized");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    session_turn(&gw, "long", &format!("turn 4: {long}")).await;
    let sent = last_turns(&upstream);
    assert!(
        sent[0].0 == "system"
            && sent[0]
                .1
                .starts_with("Summary of the earlier conversation:"),
        "{sent:?}"
    );
    assert!(
        !sent.iter().any(|(_, c)| c.starts_with("turn 0:")),
        "{sent:?}"
    );
    assert_eq!(sent.last().unwrap().1, format!("turn 4: {long}"));
    // The session itself still shows every message.
    let all = call(&gw, "GET", "/v1/sessions/long/messages", None, None)
        .await
        .json();
    assert_eq!(all["data"].as_array().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_of_the_openapi_document_is_served() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let db = sqlite.url();
    let gw = gateway(&redis.url(), &db, &unique_prefix(), "").await;
    let served = call(&gw, "GET", "/openapi.json", None, None).await;
    assert_eq!(served.headers["content-type"], "application/json");
    let doc = served.json();
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(tollgate_server::app::OPENAPI).unwrap()
    );
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 26);
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let reply = call(
                &gw,
                &method.to_uppercase(),
                &concrete,
                None,
                Some(json!({})),
            )
            .await;
            assert_ne!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert!(
                !reply.text.contains("unknown path"),
                "{method} {path} is documented but not served"
            );
        }
    }
}

/// Deletes every key whose name holds `part`, as an eviction would.
async fn forget(redis: &RedisServer, part: &str) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{part}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "no key holds {part:?}");
    redis::cmd("DEL")
        .arg(&keys)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// A session id is its creator's for life: while Redis holds the session, after Redis forgot
/// it, and on another replica, another key naming it gets a clear 400 (never a 200 that leaves
/// the session out), never its messages, and never its ownership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_never_changes_hands_even_after_redis_forgets_it() {
    for fresh in TestDatabase::both() {
        let redis = RedisServer::start();
        let upstream = FakeUpstream::start(FakeUpstreamConfig {
            chunks: 1,
            ..Default::default()
        })
        .await;
        let extra = format!(
            "[server]\nmaster_key = \"mk\"\n{}",
            fake_provider(&upstream)
        );
        let prefix = unique_prefix();
        let gw = gateway(&redis.url(), &fresh.url(), &prefix, &extra).await;
        let other = gateway(&redis.url(), &fresh.url(), &prefix, &extra).await;
        let keys: Vec<Value> = ["owner", "intruder"]
            .iter()
            .map(|name| json!({"name": name}))
            .collect();
        let mut made = Vec::new();
        for body in keys {
            let created = call(&gw, "POST", "/admin/keys", Some("mk"), Some(body)).await;
            assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
            made.push(created.json());
        }
        let (owner, intruder) = (
            made[0]["key"].as_str().unwrap().to_owned(),
            made[1]["key"].as_str().unwrap().to_owned(),
        );
        let db = &gw.durable.as_ref().unwrap().db;

        let turn = session_turn_as(&gw, Some(&owner), "team-notes", "the code is 4417").await;
        assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
        // While Redis holds it.
        let probe =
            session_turn_as(&other, Some(&intruder), "team-notes", "what is the code?").await;
        assert_eq!(probe.status, StatusCode::BAD_REQUEST, "{}", probe.text);
        assert_eq!(probe.json()["error"]["param"], "x-tollgate-session-id");
        // After Redis forgot it (evicted or expired: the keys stay), on either replica, chat or
        // create.
        drained(&gw).await;
        forget(&redis, "team-notes").await;
        for replica in [&gw, &other] {
            let probe =
                session_turn_as(replica, Some(&intruder), "team-notes", "what is the code?").await;
            assert_eq!(probe.status, StatusCode::BAD_REQUEST, "{}", probe.text);
            assert_eq!(probe.json()["error"]["param"], "x-tollgate-session-id");
            let create = call(
                replica,
                "POST",
                "/v1/sessions",
                Some(&intruder),
                Some(json!({"id": "team-notes"})),
            )
            .await;
            assert_eq!(create.status, StatusCode::BAD_REQUEST, "{}", create.text);
            let read = call(
                replica,
                "GET",
                "/v1/sessions/team-notes/messages",
                Some(&intruder),
                None,
            )
            .await;
            assert_eq!(read.status, StatusCode::NOT_FOUND, "{}", read.text);
        }
        assert!(
            upstream
                .requests()
                .iter()
                .all(|r| !r.to_string().contains("what is the code")),
            "a refused request reached the upstream"
        );
        drained(&gw).await;
        let row = db.session("team-notes").await.unwrap().unwrap();
        assert_eq!(row.owner, made[0]["id"].as_str().unwrap());
        // The owner goes on where it stopped, from the database, on the other replica.
        let turn = session_turn_as(&other, Some(&owner), "team-notes", "and the room?").await;
        assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
        let sent = last_turns(&upstream);
        assert_eq!(sent[0], ("user".to_owned(), "the code is 4417".to_owned()));
        assert_eq!(sent.last().unwrap().1, "and the room?");
    }
}

/// Keys on Redis that hold `part` in their name.
async fn redis_keys(redis: &RedisServer, part: &str) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("*{part}*"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Waits until the database holds `n` messages of session `id`.
async fn stored_messages(gw: &AppState, id: &str, n: usize) -> Vec<tollgate_db::SessionMessageRow> {
    let db = &gw.durable.as_ref().unwrap().db;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        drained(gw).await;
        let rows = db.session_messages(id, 100).await.unwrap();
        if rows.len() == n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} messages of {id} in the database, not {n}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sessions as the design sets their lives (`ttl_seconds`, `idle_ttl_seconds`): an idle
/// session leaves Redis but not the database, and its next use on any replica reads it back;
/// once the conversation's life is over it is gone everywhere, its messages too, while its id
/// stays its owner's, who starts afresh under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_leaves_redis_and_an_ended_one_leaves_the_database() {
    for fresh in TestDatabase::both() {
        let redis = RedisServer::start();
        let upstream = FakeUpstream::start(FakeUpstreamConfig {
            chunks: 1,
            ..Default::default()
        })
        .await;
        let extra = format!(
            "[server]\nmaster_key = \"mk\"\n[sessions]\nttl_seconds = 3\nidle_ttl_seconds = 1\n{}",
            fake_provider(&upstream)
        );
        let prefix = unique_prefix();
        let gw = gateway(&redis.url(), &fresh.url(), &prefix, &extra).await;
        let other = gateway(&redis.url(), &fresh.url(), &prefix, &extra).await;
        let owner = create_key(&gw, json!({})).await;
        let intruder = create_key(&gw, json!({})).await;
        let id = "trip-plans";

        let turn = session_turn_as(&gw, Some(&owner), id, "we land at 9").await;
        assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
        stored_messages(&gw, id, 2).await;
        let turn = session_turn_as(&gw, Some(&owner), "packing", "two bags").await;
        assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
        stored_messages(&gw, "packing", 2).await;
        assert!(!redis_keys(&redis, id).await.is_empty());

        // Idle for longer than idle_ttl_seconds: out of Redis, still in the database.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(redis_keys(&redis, id).await, Vec::<String>::new());
        let read = call(
            &other,
            "GET",
            &format!("/v1/sessions/{id}/messages"),
            Some(&owner),
            None,
        )
        .await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text);
        assert_eq!(read.json()["data"][0]["content"], "we land at 9");
        let turn = session_turn_as(&other, Some(&owner), id, "and leave at 5").await;
        assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
        assert_eq!(
            last_turns(&upstream)[0],
            ("user".to_owned(), "we land at 9".to_owned())
        );
        stored_messages(&gw, id, 4).await;

        // Past ttl_seconds since the last message: the conversation is over on every replica.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        for replica in [&gw, &other] {
            let read = call(
                replica,
                "GET",
                &format!("/v1/sessions/{id}"),
                Some(&owner),
                None,
            )
            .await;
            assert_eq!(read.status, StatusCode::NOT_FOUND, "{}", read.text);
        }
        // Its id is still the owner's.
        let probe = session_turn_as(&other, Some(&intruder), id, "what time?").await;
        assert_eq!(probe.status, StatusCode::BAD_REQUEST, "{}", probe.text);
        assert_eq!(probe.json()["error"]["param"], "x-tollgate-session-id");
        // The owner starts afresh under it: no old history is sent, and the database holds
        // only the new conversation.
        let turn = session_turn_as(&gw, Some(&owner), id, "a new trip").await;
        assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
        assert_eq!(last_turns(&upstream), turns(&[("user", "a new trip")]));
        let rows = stored_messages(&gw, id, 2).await;
        assert!(
            rows[0].message.contains("a new trip"),
            "{}",
            rows[0].message
        );
        // A conversation over whose end nobody has read yet starts afresh the same way, its
        // messages numbered after the old ones (so none can collide with an old message that a
        // slower replica's outbox writer has not deleted yet).
        let turn = session_turn_as(&other, Some(&owner), "packing", "one bag").await;
        assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
        assert_eq!(last_turns(&upstream), turns(&[("user", "one bag")]));
        let rows = stored_messages(&gw, "packing", 2).await;
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
        assert!(rows[0].message.contains("one bag"), "{}", rows[0].message);
    }
}

/// A key revoked on one replica stops working on another within a second or so, well before
/// the other's cached lookup would expire (10 s): revocations are announced, and polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_on_every_replica_at_once() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let prefix = unique_prefix();
    let extra = "[server]\nmaster_key = \"mk\"\n";
    let gw = gateway(&redis.url(), &sqlite.url(), &prefix, extra).await;
    let other = gateway(&redis.url(), &sqlite.url(), &prefix, extra).await;
    tokio::spawn(tollgate_server::serve::keep_keys_fresh(other.clone()));
    let created = call(
        &gw,
        "POST",
        "/admin/keys",
        Some("mk"),
        Some(json!({"name": "k"})),
    )
    .await;
    let (key, id) = {
        let c = created.json();
        (
            c["key"].as_str().unwrap().to_owned(),
            c["id"].as_str().unwrap().to_owned(),
        )
    };
    // The other replica has the key in its cache.
    let models = call(&other, "GET", "/v1/models", Some(&key), None).await;
    assert_eq!(models.status, StatusCode::OK);
    let revoked = call(
        &gw,
        "DELETE",
        &format!("/admin/keys/{id}"),
        Some("mk"),
        None,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    let since = Instant::now();
    loop {
        let r = call(&other, "GET", "/v1/models", Some(&key), None).await;
        if r.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the revoked key still works on the other replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The events of an SSE body, as (event name, data).
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let kind = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (kind.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// An agent's loop through `/v1/responses`, each step on the other replica: the model calls two
/// functions, the client sends their outputs with `previous_response_id`, the model answers
/// from them; the upstream sees the calls and outputs in order, streamed or not, and the cache
/// replays a tool-calling answer as the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_loop_runs_through_responses_with_function_calls_on_two_replicas() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let upstream = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let extra = fake_provider(&upstream);
    let prefix = unique_prefix();
    let a = gateway(&redis.url(), &sqlite.url(), &prefix, &extra).await;
    let b = gateway(&redis.url(), &sqlite.url(), &prefix, &extra).await;
    let tools = json!([
        {"type": "function", "name": "weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "function", "name": "time", "parameters": {"type": "object", "properties": {}}, "strict": false},
    ]);
    for stream in [false, true] {
        let body = json!({"model": "fake/m", "input": format!("plan a trip (stream {stream})"),
                          "tools": tools, "tool_choice": "auto", "stream": stream});
        let reply = call(&a, "POST", "/v1/responses", None, Some(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let first = if stream {
            let events = sse_events(&reply.text);
            let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
            // Two function-call items, no empty message: added, argument deltas, done.
            assert_eq!(
                kinds[..3],
                [
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added"
                ]
            );
            assert_eq!(
                kinds
                    .iter()
                    .filter(|k| **k == "response.output_item.added")
                    .count(),
                2,
                "{kinds:?}"
            );
            assert_eq!(
                kinds
                    .iter()
                    .filter(|k| **k == "response.function_call_arguments.done")
                    .count(),
                2
            );
            assert!(!kinds.contains(&"response.output_text.delta"), "{kinds:?}");
            for (i, (kind, data)) in events.iter().enumerate() {
                assert_eq!(data["sequence_number"], i, "{kind}");
            }
            for at in 0..2 {
                let deltas: String = events
                    .iter()
                    .filter(|(k, d)| {
                        k == "response.function_call_arguments.delta" && d["output_index"] == at
                    })
                    .map(|(_, d)| d["delta"].as_str().unwrap())
                    .collect();
                assert_eq!(deltas, format!("{{\"i\": {at}}}"));
                let (_, added) = events
                    .iter()
                    .find(|(k, d)| k == "response.output_item.added" && d["output_index"] == at)
                    .unwrap();
                assert_eq!(added["item"]["type"], "function_call");
                assert_eq!(added["item"]["status"], "in_progress");
            }
            events.last().unwrap().1["response"].clone()
        } else {
            reply.json()
        };
        assert_eq!(first["status"], "completed");
        assert_eq!(first["tools"], tools);
        let output = first["output"].as_array().unwrap();
        assert_eq!(output.len(), 2, "{first}");
        for (i, (item, name)) in output.iter().zip(["weather", "time"]).enumerate() {
            assert_eq!(item["type"], "function_call");
            assert_eq!(item["status"], "completed");
            assert_eq!(item["name"], name);
            assert_eq!(item["arguments"], format!("{{\"i\": {i}}}"));
            assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
        }
        // The upstream got chat tools, translated field by field.
        let sent = upstream.requests().last().unwrap().clone();
        assert_eq!(
            sent["tools"][0],
            json!({"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
        );
        assert_eq!(sent["tools"][1]["function"]["strict"], false);
        assert_eq!(sent["tool_choice"], "auto");

        // The client runs the functions and continues on the other replica.
        let outputs: Vec<Value> = output
            .iter()
            .map(|item| {
                json!({"type": "function_call_output", "call_id": item["call_id"],
                               "output": format!("{} is fine", item["name"].as_str().unwrap())})
            })
            .collect();
        let reply = call(
            &b,
            "POST",
            "/v1/responses",
            None,
            Some(
                json!({"model": "fake/m", "previous_response_id": first["id"], "tools": tools,
                        "input": outputs, "stream": stream}),
            ),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let second = if stream {
            let events = sse_events(&reply.text);
            events.last().unwrap().1["response"].clone()
        } else {
            reply.json()
        };
        assert_eq!(
            second["output"][0]["content"][0]["text"],
            "tools said: weather is fine, time is fine"
        );
        // Upstream saw the question, the assistant's calls and each output, in order.
        let sent = upstream.requests().last().unwrap().clone();
        let messages = sent["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "tool", "tool"]);
        let calls = messages[1]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        for (call, item) in calls.iter().zip(output) {
            assert_eq!(call["id"], item["call_id"]);
            assert_eq!(call["function"]["name"], item["name"]);
            assert_eq!(call["function"]["arguments"], item["arguments"]);
        }
        assert_eq!(messages[2]["tool_call_id"], output[0]["call_id"]);
        assert_eq!(messages[3]["content"], "time is fine");
        // The stored chain keeps all of it: a third step sees calls, outputs and the answer.
        let third = call(
            &a,
            "POST",
            "/v1/responses",
            None,
            Some(
                json!({"model": "fake/m", "previous_response_id": second["id"], "input": "thanks"}),
            ),
        )
        .await;
        assert_eq!(third.status, StatusCode::OK, "{}", third.text);
        let sent = upstream.requests().last().unwrap().clone();
        let roles: Vec<&str> = sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            ["user", "assistant", "tool", "tool", "assistant", "user"]
        );
    }

    // A deterministic tool-calling request is cached: the hit is the same calls, and it counts
    // no upstream call.
    let body = json!({"model": "fake/m", "input": "cache me", "tools": tools, "temperature": 0});
    let miss = call(&a, "POST", "/v1/responses", None, Some(body.clone()))
        .await
        .json();
    let calls = upstream.calls();
    let hit = call(&b, "POST", "/v1/responses", None, Some(body)).await;
    assert_eq!(hit.headers.get("x-tollgate-cache").unwrap(), "hit");
    assert_eq!(upstream.calls(), calls);
    let hit = hit.json();
    for (m, h) in miss["output"]
        .as_array()
        .unwrap()
        .iter()
        .zip(hit["output"].as_array().unwrap())
    {
        assert_eq!(m["call_id"], h["call_id"]);
        assert_eq!(m["arguments"], h["arguments"]);
    }
}

/// Hosted tools cannot run through a gateway: each is a 400 naming it; so is a malformed
/// function tool or tool choice.
#[tokio::test]
async fn hosted_tools_and_malformed_tools_are_refused_by_name() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let gw = gateway(&redis.url(), &sqlite.url(), &unique_prefix(), "").await;
    let f = json!({"type": "function", "name": "f"});
    for (tools, choice, param, says) in [
        (
            json!([{"type": "web_search"}]),
            None,
            "tools[0].type",
            "web_search",
        ),
        (
            json!([f, {"type": "file_search", "vector_store_ids": ["x"]}]),
            None,
            "tools[1].type",
            "file_search",
        ),
        (
            json!([{"type": "code_interpreter"}]),
            None,
            "tools[0].type",
            "code_interpreter",
        ),
        (
            json!([{"type": "computer_use_preview"}]),
            None,
            "tools[0].type",
            "computer_use_preview",
        ),
        (json!([{"type": "function"}]), None, "tools[0].name", "name"),
        (
            json!([{"type": "function", "name": "f", "colour": 1}]),
            None,
            "tools[0].colour",
            "colour",
        ),
        (
            json!([f]),
            Some(json!({"type": "web_search_preview"})),
            "tool_choice.type",
            "web_search_preview",
        ),
        (
            json!([f]),
            Some(json!({"type": "function"})),
            "tool_choice.name",
            "name",
        ),
        (
            json!([f]),
            Some(json!("sometimes")),
            "tool_choice",
            "tool_choice",
        ),
        (json!([]), Some(json!("required")), "tool_choice", "tools"),
    ] {
        let mut body = json!({"model": "mock/echo", "input": "x", "tools": tools});
        if let Some(choice) = choice {
            body["tool_choice"] = choice;
        }
        let reply = call(&gw, "POST", "/v1/responses", None, Some(body.clone())).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        let error = &reply.json()["error"];
        assert_eq!(error["param"], param, "{body}: {}", reply.text);
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{body}: {}",
            reply.text
        );
    }
    for (input, param) in [
        (
            json!([{"type": "function_call_output", "output": "x"}]),
            "input[0].call_id",
        ),
        (
            json!([{"type": "function_call", "call_id": "c", "arguments": "{}"}]),
            "input[0].name",
        ),
        (
            json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]),
            "input[0].arguments",
        ),
        (
            json!([{"type": "web_search_call", "id": "ws_1"}]),
            "input[0].type",
        ),
    ] {
        let body = json!({"model": "mock/echo", "input": input});
        let reply = call(&gw, "POST", "/v1/responses", None, Some(body.clone())).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        assert_eq!(
            reply.json()["error"]["param"],
            param,
            "{body}: {}",
            reply.text
        );
    }
}

/// A Messages request with `x-api-key` on replica `gw`.
async fn messages(gw: &AppState, key: Option<&str>, path: &str, body: Value) -> Reply {
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    send(gw, req.body(Body::from(body.to_string())).unwrap()).await
}

/// Anthropic's Messages API in front of an OpenAI-compatible upstream: an agent's tool loop
/// (`tool_use`, then `tool_result`), each step on another replica, streamed and not; the cache
/// answers a repeated deterministic request; errors come in Anthropic's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_api_runs_a_tool_loop_in_front_of_any_provider() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let upstream = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let extra = format!(
        "[server]\nmaster_key = \"mk\"\n{}",
        fake_provider(&upstream)
    );
    let prefix = unique_prefix();
    let a = gateway(&redis.url(), &sqlite.url(), &prefix, &extra).await;
    let b = gateway(&redis.url(), &sqlite.url(), &prefix, &extra).await;
    let key = create_key(&a, json!({})).await;
    let tools = json!([
        {"name": "weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "time", "input_schema": {"type": "object"}}
    ]);
    for stream in [false, true] {
        let question = json!({"role": "user", "content": format!("plan a trip (stream {stream})")});
        let body = json!({"model": "fake/m", "max_tokens": 200, "system": "Be brief.",
                          "tools": tools, "messages": [question], "stream": stream});
        let reply = messages(&a, Some(&key), "/v1/messages", body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let content: Vec<Value> = if stream {
            let events = sse_events(&reply.text);
            let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(kinds[0], "message_start");
            assert_eq!(kinds[kinds.len() - 2..], ["message_delta", "message_stop"]);
            assert_eq!(
                kinds
                    .iter()
                    .filter(|k| **k == "content_block_start")
                    .count(),
                2,
                "{kinds:?}"
            );
            assert_eq!(
                kinds.iter().filter(|k| **k == "content_block_stop").count(),
                2,
                "{kinds:?}"
            );
            for (kind, data) in &events {
                assert_eq!(data["type"], kind.as_str());
            }
            let delta = &events[events.len() - 2].1;
            assert_eq!(delta["delta"]["stop_reason"], "tool_use");
            assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
            // Fold the blocks as Anthropic's SDKs do.
            (0..2)
                .map(|index| {
                    let (_, start) = events
                        .iter()
                        .find(|(k, d)| k == "content_block_start" && d["index"] == index)
                        .unwrap();
                    let partial: String = events
                        .iter()
                        .filter(|(k, d)| k == "content_block_delta" && d["index"] == index)
                        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
                        .collect();
                    let mut block = start["content_block"].clone();
                    block["input"] = serde_json::from_str(&partial).unwrap();
                    block
                })
                .collect()
        } else {
            let answer = reply.json();
            assert_eq!(answer["type"], "message");
            assert_eq!(answer["role"], "assistant");
            assert_eq!(answer["model"], "fake/m");
            assert_eq!(answer["stop_reason"], "tool_use");
            assert_eq!(
                answer["usage"],
                json!({"input_tokens": 10, "output_tokens": 5})
            );
            answer["content"].as_array().unwrap().clone()
        };
        assert_eq!(content.len(), 2, "{content:?}");
        for (i, (block, name)) in content.iter().zip(["weather", "time"]).enumerate() {
            assert_eq!(block["type"], "tool_use");
            assert_eq!(block["name"], name);
            assert_eq!(block["input"], json!({"i": i}));
        }
        let sent = upstream.requests().last().unwrap().clone();
        assert_eq!(
            sent["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            sent["tools"][0],
            json!({"type": "function", "function": {"name": "weather", "description": "Weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
        );
        // The client runs the tools and goes on, on the other replica.
        let results: Vec<Value> = content
            .iter()
            .map(|b| {
                json!({"type": "tool_result", "tool_use_id": b["id"],
                            "content": format!("{} ok", b["name"].as_str().unwrap())})
            })
            .collect();
        let body = json!({"model": "fake/m", "max_tokens": 200, "tools": tools, "stream": stream,
                          "messages": [question, {"role": "assistant", "content": content},
                                       {"role": "user", "content": results}]});
        let reply = messages(&b, Some(&key), "/v1/messages", body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let text = if stream {
            sse_events(&reply.text)
                .iter()
                .filter(|(k, _)| k == "content_block_delta")
                .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_owned())
                .collect::<String>()
        } else {
            let answer = reply.json();
            assert_eq!(answer["stop_reason"], "end_turn");
            answer["content"][0]["text"].as_str().unwrap().to_owned()
        };
        assert_eq!(text, "tools said: weather ok, time ok");
        let sent = upstream.requests().last().unwrap().clone();
        let roles: Vec<&str> = sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "tool", "tool"]);
        assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], content[0]["id"]);
        assert_eq!(sent["messages"][2]["tool_call_id"], content[0]["id"]);
    }

    // A deterministic request is answered from the cache on the other replica, the same answer.
    let body = json!({"model": "fake/m", "max_tokens": 50, "temperature": 0,
                      "messages": [{"role": "user", "content": "cache me"}]});
    let miss = messages(&a, Some(&key), "/v1/messages", body.clone()).await;
    let calls = upstream.calls();
    let hit = messages(&b, Some(&key), "/v1/messages", body).await;
    assert_eq!(hit.headers.get("x-tollgate-cache").unwrap(), "hit");
    assert_eq!(upstream.calls(), calls);
    assert_eq!(hit.json()["content"], miss.json()["content"]);

    // Tokens are counted without a call.
    let counted = messages(
        &a,
        Some(&key),
        "/v1/messages/count_tokens",
        json!({"model": "fake/m", "messages": [{"role": "user", "content": "how many tokens is this?"}]}),
    )
    .await;
    assert_eq!(counted.status, StatusCode::OK, "{}", counted.text);
    assert!(counted.json()["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(upstream.calls(), calls);

    // Errors in Anthropic's shape, from the handler and from the layers in front of it.
    for (key, body, status, kind) in [
        (
            Some(key.as_str()),
            json!({"model": "fake/m", "messages": [{"role": "user", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
        (
            Some(key.as_str()),
            json!({"model": "fake/m", "max_tokens": 5, "top_k": 3, "messages": [{"role": "user", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
        (
            None,
            json!({"model": "fake/m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        ),
        (
            Some("tg-wrong"),
            json!({"model": "fake/m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        ),
        (
            Some(key.as_str()),
            json!({"model": "nope/x", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            StatusCode::NOT_FOUND,
            "not_found_error",
        ),
    ] {
        let reply = messages(&a, key, "/v1/messages", body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        let error = reply.json();
        assert_eq!(error["type"], "error", "{}", reply.text);
        assert_eq!(error["error"]["type"], kind, "{}", reply.text);
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
}

/// OpenAI's chat API in front of Anthropic's Messages API (a fake that checks `x-api-key` and
/// `anthropic-version` and answers in Anthropic's format): an agent's tool loop, each step on
/// another replica, streamed and not, checked field by field both ways; prompt-cache tokens are
/// prompt tokens; an upstream that refuses the key is an error the client can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_api_runs_a_tool_loop_in_front_of_an_anthropic_upstream() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        api_key: Some("sk-ant".into()),
        ..FakeUpstreamConfig::default()
    })
    .await;
    let extra = format!(
        "[server]\nmaster_key = \"mk\"\n\
         [providers.ant]\nkind = \"anthropic\"\nbase_url = \"{0}\"\napi_key = \"sk-ant\"\n\
         [providers.badkey]\nkind = \"anthropic\"\nbase_url = \"{0}\"\napi_key = \"sk-wrong\"\n",
        upstream.anthropic_base_url()
    );
    let prefix = unique_prefix();
    let a = gateway(&redis.url(), &sqlite.url(), &prefix, &extra).await;
    let b = gateway(&redis.url(), &sqlite.url(), &prefix, &extra).await;
    let key = create_key(&a, json!({})).await;
    let tools = json!([
        {"type": "function", "function": {"name": "weather", "description": "Weather",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "time"}}
    ]);
    for stream in [false, true] {
        let question = json!({"role": "user", "content": format!("plan a trip (stream {stream})")});
        let mut body = json!({"model": "ant/m", "max_tokens": 100, "stream": stream, "tools": tools,
                              "tool_choice": "required", "stop": "END",
                              "messages": [{"role": "system", "content": "Be brief."}, question]});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let reply = call(&a, "POST", "/v1/chat/completions", Some(&key), Some(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let answer = chat_answer(&reply.text, stream);
        assert_eq!(
            answer["choices"][0]["finish_reason"], "tool_calls",
            "{answer}"
        );
        assert_eq!(
            answer["usage"]["prompt_tokens"], 10,
            "4 input + 6 read from the cache"
        );
        let calls = answer["choices"][0]["message"]["tool_calls"].clone();
        let names: Vec<&str> = calls
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["weather", "time"], "{answer}");
        for (i, call) in calls.as_array().unwrap().iter().enumerate() {
            assert!(call["id"].as_str().unwrap().starts_with("toolu_"), "{call}");
            let arguments: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(arguments, json!({"i": i}));
        }
        // What Anthropic received, field by field.
        let sent = upstream.requests().last().unwrap().clone();
        assert_eq!(sent["system"], "Be brief.");
        assert_eq!(sent["max_tokens"], 100);
        assert_eq!(sent["stop_sequences"], json!(["END"]));
        assert_eq!(sent["tool_choice"], json!({"type": "any"}));
        assert_eq!(
            sent["tools"],
            json!([{"name": "weather", "description": "Weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                   {"name": "time", "input_schema": {"type": "object", "properties": {}}}])
        );
        assert_eq!(sent["messages"], json!([question]));

        // The client runs the tools and goes on, on the other replica.
        let mut turns = vec![question.clone(), answer["choices"][0]["message"].clone()];
        for call in calls.as_array().unwrap() {
            turns.push(json!({"role": "tool", "tool_call_id": call["id"],
                              "content": format!("{} ok", call["function"]["name"].as_str().unwrap())}));
        }
        let body = json!({"model": "ant/m", "max_tokens": 100, "stream": stream, "tools": tools,
                          "messages": turns});
        let reply = call(&b, "POST", "/v1/chat/completions", Some(&key), Some(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let answer = chat_answer(&reply.text, stream);
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "tools said: weather ok, time ok"
        );
        let sent = upstream.requests().last().unwrap().clone();
        assert_eq!(
            sent["messages"][1],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": calls[0]["id"], "name": "weather", "input": {"i": 0}},
                {"type": "tool_use", "id": calls[1]["id"], "name": "time", "input": {"i": 1}}]})
        );
        assert_eq!(
            sent["messages"][2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "weather ok"},
                {"type": "tool_result", "tool_use_id": calls[1]["id"], "content": "time ok"}]})
        );
    }

    // The upstream refuses a wrong key: the client gets an error, not an empty answer.
    let calls = upstream.calls();
    let body = json!({"model": "badkey/m", "messages": [{"role": "user", "content": "hi"}]});
    let reply = call(&a, "POST", "/v1/chat/completions", Some(&key), Some(body)).await;
    assert!(
        reply.status.is_client_error() || reply.status.is_server_error(),
        "{}",
        reply.text
    );
    assert!(
        reply.json()["error"]["message"].is_string(),
        "{}",
        reply.text
    );
    assert_eq!(
        upstream.calls(),
        calls,
        "a refused key is not a counted call"
    );
}

/// A chat answer, folded from its chunks when streamed, in the non-streamed shape.
fn chat_answer(text: &str, stream: bool) -> Value {
    if !stream {
        return serde_json::from_str(text).unwrap();
    }
    let mut content = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let (mut finish, mut usage) = (Value::Null, Value::Null);
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
        content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.push(json!({"id": call["id"], "type": "function",
                                  "function": {"name": call["function"]["name"], "arguments": ""}}));
            }
            let arguments = format!(
                "{}{}",
                calls[i]["function"]["arguments"].as_str().unwrap(),
                call["function"]["arguments"].as_str().unwrap_or("")
            );
            calls[i]["function"]["arguments"] = Value::String(arguments);
        }
    }
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message = json!({"role": "assistant", "content": null, "tool_calls": calls});
    }
    json!({"choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage})
}

/// Identical deterministic tool-calling requests in flight together share one upstream call, on
/// two replicas, streamed and not, and get the same calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_tool_calling_requests_in_flight_share_one_upstream_call() {
    let redis = RedisServer::start();
    let sqlite = TestDatabase::sqlite();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunk_delay: Duration::from_millis(60),
        ..FakeUpstreamConfig::default()
    })
    .await;
    let extra = fake_provider(&upstream);
    let prefix = unique_prefix();
    let a = gateway(&redis.url(), &sqlite.url(), &prefix, &extra).await;
    let b = gateway(&redis.url(), &sqlite.url(), &prefix, &extra).await;
    let body = |stream: bool| {
        json!({"model": "fake/m", "temperature": 0, "stream": stream,
               "tools": [{"type": "function", "function": {"name": "weather"}},
                         {"type": "function", "function": {"name": "time"}}],
               "messages": [{"role": "user", "content": "together"}]})
    };
    let leader = call(&a, "POST", "/v1/chat/completions", None, Some(body(false)));
    let follower = async {
        // Starts once the leader's call is under way.
        tokio::time::sleep(Duration::from_millis(40)).await;
        call(&b, "POST", "/v1/chat/completions", None, Some(body(true))).await
    };
    let (leader, follower) = tokio::join!(leader, follower);
    assert_eq!(leader.status, StatusCode::OK, "{}", leader.text);
    assert_eq!(follower.status, StatusCode::OK, "{}", follower.text);
    assert_eq!(upstream.calls(), 1);
    let calls = leader.json()["choices"][0]["message"]["tool_calls"].clone();
    assert_eq!(calls.as_array().unwrap().len(), 2, "{calls}");
    // The follower's stream folds into the same calls.
    let mut folded = tollgate_core::Aggregator::default();
    for data in follower
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
    {
        if let Ok(chunk) = serde_json::from_str::<tollgate_core::ChatChunk>(data) {
            folded.push(&chunk);
        }
    }
    let folded = folded.finish();
    assert_eq!(folded.choices[0].message.extra["tool_calls"], calls);
    assert_eq!(
        folded.choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );
}

/// `/admin/requests` lists the newest requests from the usage records, of one tenant when
/// asked, newest first; a bad limit is a 400 naming it; without a database it says why not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_requests_come_from_the_usage_records_per_tenant() {
    for fresh in TestDatabase::both() {
        let redis = RedisServer::start();
        let gw = gateway(
            &redis.url(),
            &fresh.url(),
            &unique_prefix(),
            "[server]\nmaster_key = \"mk\"\n",
        )
        .await;
        let keys = keys_in_tenants(&gw, &["acme", "globex"]).await;
        for (key, question) in [(&keys[0], "one"), (&keys[1], "two"), (&keys[0], "three")] {
            let body =
                json!({"model": "mock/echo", "messages": [{"role": "user", "content": question}]});
            let r = call(&gw, "POST", "/v1/chat/completions", Some(key), Some(body)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
        drained(&gw).await;
        let all = call(&gw, "GET", "/admin/requests", Some("mk"), None).await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.text);
        assert_eq!(all.json()["data"].as_array().unwrap().len(), 3);
        let acme = call(
            &gw,
            "GET",
            "/admin/requests?tenant=acme&limit=1",
            Some("mk"),
            None,
        )
        .await;
        let rows = acme.json()["data"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["tenant"], "acme");
        assert_eq!(rows[0]["model"], "mock/echo");
        let newest = all.json()["data"][0]["created_ms"].as_i64().unwrap();
        assert!(rows[0]["created_ms"].as_i64().unwrap() <= newest);
        let bad = call(&gw, "GET", "/admin/requests?limit=0", Some("mk"), None).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
        assert_eq!(bad.json()["error"]["param"], "limit");
        let tenant_key = call(&gw, "GET", "/admin/requests", Some(&keys[0]), None).await;
        assert_eq!(tenant_key.status, StatusCode::FORBIDDEN);
    }
}

/// `/admin/timeline` counts what every replica answered, step by step, from the usage records:
/// upstream answers with their cost, exact and semantic hits with what they saved, of one tenant
/// when asked; quiet steps are zeros; a bad window is a 400 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_counts_every_replicas_answers_by_kind() {
    for fresh in TestDatabase::both() {
        let redis = RedisServer::start();
        let prefix = unique_prefix();
        let extra = "[server]\nmaster_key = \"mk\"\n\
                     [semantic_cache]\nenabled = true\nembedding_model = \"mock/embed\"\n\
                     threshold = 0.9\nlookup_budget_ms = 60000\n\
                     [prices.\"mock/echo\"]\ninput_per_million = 1000.0\noutput_per_million = 2000.0\n";
        let a = gateway(&redis.url(), &fresh.url(), &prefix, extra).await;
        let b = gateway(&redis.url(), &fresh.url(), &prefix, extra).await;
        let keys = keys_in_tenants(&a, &["acme", "globex"]).await;
        let words = "one two three four five six seven eight";
        let reordered = "eight seven six five four three two one";
        let mut miss_cost = 0.0;
        for (gw, key, question, temperature, cache) in [
            (&a, &keys[0], words, 0.0, "miss"),
            (&b, &keys[0], words, 0.0, "hit"),
            (&a, &keys[0], reordered, 0.0, "semantic"),
            (&b, &keys[1], "another question", 0.7, "bypass"),
        ] {
            let body = json!({"model": "mock/echo", "temperature": temperature,
                              "messages": [{"role": "user", "content": question}]});
            let r = call(gw, "POST", "/v1/chat/completions", Some(key), Some(body)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let answered = r
                .headers
                .get("x-tollgate-cache")
                .map(|v| v.to_str().unwrap());
            assert_eq!(answered, Some(cache), "{question}");
            if cache == "miss" {
                let usage = &r.json()["usage"];
                miss_cost = (usage["prompt_tokens"].as_f64().unwrap() * 1000.0
                    + usage["completion_tokens"].as_f64().unwrap() * 2000.0)
                    / 1e6;
            }
        }
        drained(&a).await;
        drained(&b).await;
        let total = |timeline: &Value, name: &str| -> f64 {
            timeline["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|step| step[name].as_f64().unwrap())
                .sum()
        };
        let all = call(&b, "GET", "/admin/timeline?minutes=5", Some("mk"), None).await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.text);
        let all = all.json();
        assert_eq!(all["step_ms"], 60_000);
        // Five minutes back from now, in whole minutes: six steps, the quiet ones as zeros.
        assert_eq!(all["data"].as_array().unwrap().len(), 6, "{all}");
        for (name, want) in [
            ("requests", 4.0),
            ("exact", 1.0),
            ("semantic", 1.0),
            ("coalesced", 0.0),
        ] {
            assert_eq!(total(&all, name), want, "{name}: {all}");
        }
        // Two upstream answers cost something; each hit saved what the answer it gave cost.
        assert!(total(&all, "spend_usd") > miss_cost, "{all}");
        let saved = total(&all, "saved_usd");
        assert!(
            miss_cost > 0.0 && (saved - 2.0 * miss_cost).abs() < 1e-9,
            "{all}"
        );
        let globex = call(
            &a,
            "GET",
            "/admin/timeline?minutes=5&tenant=globex",
            Some("mk"),
            None,
        )
        .await
        .json();
        assert_eq!(total(&globex, "requests"), 1.0, "{globex}");
        assert_eq!(total(&globex, "exact") + total(&globex, "semantic"), 0.0);
        // A week is the longest window, in steps of an hour.
        let week = call(&a, "GET", "/admin/timeline?minutes=10080", Some("mk"), None).await;
        assert_eq!(week.json()["step_ms"], 3_600_000);
        assert_eq!(total(&week.json(), "requests"), 4.0);
        let bad = call(&a, "GET", "/admin/timeline?minutes=0", Some("mk"), None).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
        assert_eq!(bad.json()["error"]["param"], "minutes");
        // The request listing says how each was answered.
        let listed = call(&a, "GET", "/admin/requests", Some("mk"), None)
            .await
            .json();
        let mut served: Vec<String> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["served"].as_str().unwrap().to_owned())
            .collect();
        served.sort();
        assert_eq!(served, ["exact", "semantic", "upstream", "upstream"]);
    }
}

/// `/admin/sessions` and `/admin/responses` list what the database keeps, of one tenant when
/// asked, and a session's messages read back from it; read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reads_each_tenants_sessions_and_responses() {
    for fresh in TestDatabase::both() {
        let redis = RedisServer::start();
        let gw = gateway(
            &redis.url(),
            &fresh.url(),
            &unique_prefix(),
            "[server]\nmaster_key = \"mk\"\n",
        )
        .await;
        let keys = keys_in_tenants(&gw, &["acme", "globex"]).await;
        for (key, session) in [(&keys[0], "acme-chat"), (&keys[1], "globex-chat")] {
            let req = axum::http::Request::builder()
                .method("POST")
                .uri("/v1/chat/completions")
                .header("x-tollgate-session-id", session)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {key}"));
            let body =
                json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hello"}]});
            let r = send(&gw, req.body(Body::from(body.to_string())).unwrap()).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let r = call(
                &gw,
                "POST",
                "/v1/responses",
                Some(key),
                Some(json!({"model": "mock/echo", "input": format!("a question of {session}")})),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
        stored_messages(&gw, "acme-chat", 2).await;
        stored_messages(&gw, "globex-chat", 2).await;
        drained(&gw).await;

        let all = call(&gw, "GET", "/admin/sessions", Some("mk"), None).await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.text);
        assert_eq!(all.json()["data"].as_array().unwrap().len(), 2);
        let acme = call(&gw, "GET", "/admin/sessions?tenant=acme", Some("mk"), None).await;
        let sessions = acme.json()["data"].as_array().unwrap().clone();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0]["id"], "acme-chat");
        assert_eq!(sessions[0]["tenant"], "acme");
        let messages = call(
            &gw,
            "GET",
            "/admin/sessions/acme-chat/messages",
            Some("mk"),
            None,
        )
        .await;
        let messages = messages.json()["data"].as_array().unwrap().clone();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["message"]["content"], "hello");
        let missing = call(
            &gw,
            "GET",
            "/admin/sessions/nope/messages",
            Some("mk"),
            None,
        )
        .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);

        let globex = call(
            &gw,
            "GET",
            "/admin/responses?tenant=globex",
            Some("mk"),
            None,
        )
        .await;
        let responses = globex.json()["data"].as_array().unwrap().clone();
        assert_eq!(responses.len(), 1, "{responses:?}");
        assert_eq!(responses[0]["tenant"], "globex");
        assert_eq!(responses[0]["model"], "mock/echo");
        assert!(!responses[0]["output_text"].as_str().unwrap().is_empty());
        let nobody = call(
            &gw,
            "GET",
            "/admin/responses?tenant=initech",
            Some("mk"),
            None,
        )
        .await;
        assert_eq!(nobody.json()["data"], json!([]));
        let tenant_key = call(&gw, "GET", "/admin/sessions", Some(&keys[0]), None).await;
        assert_eq!(tenant_key.status, StatusCode::FORBIDDEN);
    }
}
