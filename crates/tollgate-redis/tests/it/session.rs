use std::time::Duration;

use tollgate_core::ChatMessage;
use tollgate_redis::{Error, SessionConfig, SessionStore, Window};

use crate::{Backend, Ctx, pattern_suite};

const HOUR: Duration = Duration::from_secs(3600);

fn store(ctx: &Ctx, i: usize, config: SessionConfig) -> SessionStore {
    SessionStore::new(ctx.conn_for(i), ctx.keys.clone(), config)
}

fn turn(i: usize) -> [ChatMessage; 2] {
    [
        ChatMessage::text("user", format!("question {i}")),
        ChatMessage::text("assistant", format!("answer {i}")),
    ]
}

pattern_suite!(
    history_comes_back_in_openai_format_with_the_system_prompt,
    windows_by_count_and_by_token_budget,
    stored_messages_are_capped,
    sessions_expire_when_idle_and_writes_keep_them_alive,
    another_owner_sees_nothing,
    writes_from_several_connections_all_land,
    a_summary_takes_the_place_of_the_messages_it_covers_in_prompts,
    a_session_restored_from_elsewhere_goes_on_with_its_numbering,
    a_restored_session_stays_no_longer_than_its_conversation_lives,
);

async fn a_summary_takes_the_place_of_the_messages_it_covers_in_prompts(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (s, other) = (
        store(&ctx, 0, SessionConfig::default()),
        store(&ctx, 1, SessionConfig::default()),
    );
    let mut pending = 0;
    for i in 0..3 {
        let written = s
            .append_or_create_logged("s", "key-a", Some("be terse"), &turn(i))
            .await
            .unwrap();
        assert!(written.pending_tokens > pending, "pending tokens grow");
        pending = written.pending_tokens;
        assert_eq!(written.appended, 2 * i as u64 + 2);
    }
    let open = other.unsummarized("s", "key-a").await.unwrap();
    assert_eq!(open.summary, None);
    assert_eq!(open.messages.len(), 6);
    assert_eq!(
        open.messages
            .iter()
            .map(|(_, _, t)| u64::from(*t))
            .sum::<u64>(),
        pending
    );
    // The first four messages are summarized (on another connection, as another process would).
    let (upto, covered) = (
        open.messages[3].0.clone(),
        open.messages[..4]
            .iter()
            .map(|(_, _, t)| u64::from(*t))
            .sum::<u64>(),
    );
    assert!(
        other
            .set_summary("s", "key-a", "they talked", &upto, covered)
            .await
            .unwrap()
    );
    assert!(
        !other
            .set_summary("s", "key-b", "hijack", &upto, covered)
            .await
            .unwrap()
    );
    // An older summary does not replace a newer one.
    assert!(
        !other
            .set_summary("s", "key-a", "older", &open.messages[1].0, 1)
            .await
            .unwrap()
    );

    let prompt = s
        .history("s", "key-a", Window::TokenBudget(10_000))
        .await
        .unwrap();
    assert_eq!(prompt[0], ChatMessage::text("system", "be terse"));
    assert_eq!(prompt[1], ChatMessage::summary("they talked"));
    assert_eq!(&prompt[2..], &turn(2));
    // Reading the session shows every message as written.
    assert_eq!(s.history("s", "key-a", Window::All).await.unwrap().len(), 7);
    let after = s.unsummarized("s", "key-a").await.unwrap();
    assert_eq!(after.summary.as_deref(), Some("they talked"));
    assert_eq!(after.messages.len(), 2);
    let written = s.append("s", "key-a", &turn(3)).await;
    assert!(written.is_ok());
    let next = s
        .append_or_create_logged("s", "key-a", None, &turn(4))
        .await
        .unwrap();
    let remaining: u64 = s
        .unsummarized("s", "key-a")
        .await
        .unwrap()
        .messages
        .iter()
        .map(|(_, _, t)| u64::from(*t))
        .sum();
    assert_eq!(next.pending_tokens, remaining);
    assert!(matches!(
        s.set_summary("s", "key-a", "x", "not-an-id", 0).await,
        Err(Error::InvalidArgument(_))
    ));
}

async fn a_session_restored_from_elsewhere_goes_on_with_its_numbering(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = store(&ctx, 0, SessionConfig::default());
    let stored: Vec<(String, u32)> = turn(7)
        .iter()
        .map(|m| (serde_json::to_string(m).unwrap(), 5))
        .collect();
    assert!(
        s.restore("r", "key-a", Some("sys"), 1_000, 12, &stored, HOUR)
            .await
            .unwrap()
    );
    // Redis has it now: a second restore (another instance) changes nothing.
    assert!(
        !s.restore("r", "key-a", None, 1, 1, &[], HOUR)
            .await
            .unwrap()
    );
    let h = s.history("r", "key-a", Window::All).await.unwrap();
    assert_eq!(h[0], ChatMessage::text("system", "sys"));
    assert_eq!(&h[1..], &turn(7));
    let written = s
        .append_or_create_logged("r", "key-a", None, &turn(8))
        .await
        .unwrap();
    assert_eq!(written.appended, 14);
    assert_eq!(written.created_ms, 1_000);
    assert!(written.pending_tokens >= 10);
    assert!(matches!(
        s.history("r", "key-b", Window::All).await,
        Err(Error::NotFound)
    ));
}

async fn history_comes_back_in_openai_format_with_the_system_prompt(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = store(&ctx, 0, SessionConfig::default());
    s.create("s1", "key-a", Some("You are terse."))
        .await
        .unwrap();
    let mut tool_call = ChatMessage::text("assistant", "");
    tool_call.content = serde_json::Value::Null;
    tool_call.extra.insert(
        "tool_calls".into(),
        serde_json::json!([{"id": "c1", "type": "function"}]),
    );
    s.append("s1", "key-a", &turn(1)).await.unwrap();
    s.append("s1", "key-a", std::slice::from_ref(&tool_call))
        .await
        .unwrap();
    let h = s.history("s1", "key-a", Window::All).await.unwrap();
    assert_eq!(h.len(), 4);
    assert_eq!(h[0], ChatMessage::text("system", "You are terse."));
    assert_eq!(&h[1..3], &turn(1));
    assert_eq!(
        h[3], tool_call,
        "fields tollgate does not interpret survive"
    );
    let info = s.info("s1", "key-a").await.unwrap();
    assert_eq!((info.stored, info.appended), (3, 3));
    assert_eq!(info.system.as_deref(), Some("You are terse."));
    assert!(info.updated_ms >= info.created_ms && info.created_ms > 0);
    // Appending to a session that does not exist is an error, unless asked to create it.
    assert!(matches!(
        s.append("nope", "key-a", &turn(1)).await,
        Err(Error::NotFound)
    ));
    assert_eq!(
        s.append_or_create("new", "key-a", None, &turn(1))
            .await
            .unwrap(),
        2
    );
}

async fn windows_by_count_and_by_token_budget(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = store(&ctx, 0, SessionConfig::default());
    s.create("s", "o", Some("sys")).await.unwrap();
    for i in 0..10 {
        s.append("s", "o", &turn(i)).await.unwrap();
    }
    let last3 = s.history("s", "o", Window::LastN(3)).await.unwrap();
    assert_eq!(last3.len(), 4);
    assert_eq!(last3[0].role, "system");
    assert_eq!(last3[1].text_content(), "answer 8");
    assert_eq!(last3[3].text_content(), "answer 9");
    // Each message costs 4 + 2 (role) + 3 (text) = 9 estimated tokens, the system prompt 4 + 2 + 1 = 7.
    let window = s
        .history("s", "o", Window::TokenBudget(7 + 9 * 4 + 5))
        .await
        .unwrap();
    assert_eq!(window.len(), 5, "system + the 4 newest messages fit");
    assert_eq!(window[1].text_content(), "question 8");
    assert_eq!(
        s.history("s", "o", Window::TokenBudget(0))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn stored_messages_are_capped(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = store(
        &ctx,
        0,
        SessionConfig {
            max_messages: 6,
            ..SessionConfig::default()
        },
    );
    s.create("s", "o", None).await.unwrap();
    for i in 0..10 {
        assert!(s.append("s", "o", &turn(i)).await.unwrap() <= 6);
    }
    let h = s.history("s", "o", Window::All).await.unwrap();
    assert_eq!(h.len(), 6);
    assert_eq!(h[0].text_content(), "question 7");
    assert_eq!(s.info("s", "o").await.unwrap().appended, 20);
}

async fn sessions_expire_when_idle_and_writes_keep_them_alive(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = store(
        &ctx,
        0,
        SessionConfig {
            idle_ttl: Duration::from_millis(700),
            ..SessionConfig::default()
        },
    );
    s.create("kept", "o", Some("sys")).await.unwrap();
    s.create("idle", "o", Some("sys")).await.unwrap();
    s.append("idle", "o", &turn(0)).await.unwrap();
    // Writes every 300 ms keep "kept" alive well past its idle TTL.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.append("kept", "o", &turn(i)).await.unwrap();
    }
    assert_eq!(s.history("kept", "o", Window::All).await.unwrap().len(), 11);
    assert!(matches!(
        s.history("idle", "o", Window::All).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(s.info("idle", "o").await, Err(Error::NotFound)));
}

async fn another_owner_sees_nothing(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = store(&ctx, 0, SessionConfig::default());
    s.create("s", "alice", Some("secret system prompt"))
        .await
        .unwrap();
    s.append("s", "alice", &turn(0)).await.unwrap();
    assert!(matches!(
        s.history("s", "mallory", Window::All).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(s.info("s", "mallory").await, Err(Error::NotFound)));
    assert!(matches!(
        s.append("s", "mallory", &turn(1)).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        s.append_or_create("s", "mallory", None, &turn(1)).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        s.delete("s", "mallory").await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        s.create("s", "mallory", None).await,
        Err(Error::Conflict(_))
    ));
    // Nothing of mallory's attempts landed.
    assert_eq!(s.history("s", "alice", Window::All).await.unwrap().len(), 3);
    s.delete("s", "alice").await.unwrap();
    assert!(matches!(
        s.history("s", "alice", Window::All).await,
        Err(Error::NotFound)
    ));
}

async fn writes_from_several_connections_all_land(b: Backend) {
    let ctx = Ctx::new(b, 3).await;
    store(&ctx, 0, SessionConfig::default())
        .create("shared", "o", None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let s = store(&ctx, i, SessionConfig::default());
        tasks.push(tokio::spawn(async move {
            s.append("shared", "o", &turn(i)).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let h = store(&ctx, 1, SessionConfig::default())
        .history("shared", "o", Window::All)
        .await
        .unwrap();
    assert_eq!(h.len(), 60);
    // Each turn's two messages were appended together, in order.
    for pair in h.chunks(2) {
        assert_eq!(pair[0].role, "user");
        assert_eq!(
            pair[1].text_content(),
            pair[0].text_content().replace("question", "answer")
        );
    }
}

async fn a_restored_session_stays_no_longer_than_its_conversation_lives(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = store(&ctx, 0, SessionConfig::default());
    let stored = vec![(serde_json::to_string(&turn(0)[0]).unwrap(), 5)];
    // Idle TTL a day, but the conversation has 400 ms left: Redis keeps it 400 ms.
    assert!(
        s.restore(
            "short",
            "o",
            None,
            1,
            1,
            &stored,
            Duration::from_millis(400)
        )
        .await
        .unwrap()
    );
    assert!(
        s.restore("long", "o", None, 1, 1, &stored, HOUR)
            .await
            .unwrap()
    );
    assert_eq!(s.history("short", "o", Window::All).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(matches!(
        s.history("short", "o", Window::All).await,
        Err(Error::NotFound)
    ));
    assert_eq!(s.history("long", "o", Window::All).await.unwrap().len(), 1);
}
