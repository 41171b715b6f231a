//! The operator's operations, shared by `/admin` and the CLI: keys and their limits, spend,
//! cache statistics.

use serde_json::{Value, json};

use crate::config::Limits;
use crate::error::ApiError;
use crate::state::Gateway;

/// Creates a key after checking its tier and limits (shared by HTTP and the CLI).
pub async fn create_key(
    gw: &Gateway,
    name: String,
    tier: Option<String>,
    tenant: Option<String>,
    limits: Option<Limits>,
) -> Result<(tollgate_redis::ApiKeyRecord, String), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad("`name` must not be empty", Some("name")));
    }
    let tier = tier.unwrap_or_else(|| gw.config.limits.default_tier.clone());
    if !gw.config.tiers.contains_key(&tier) {
        let known: Vec<&str> = gw.config.tiers.keys().map(String::as_str).collect();
        return Err(ApiError::bad(
            format!(
                "no tier named {tier:?} (tiers: {}); define it as [tiers.{tier}] in the configuration",
                known.join(", ")
            ),
            Some("tier"),
        ));
    }
    let limits = limits.unwrap_or_default();
    for (what, v) in [
        ("rpm", limits.rpm),
        ("tpm", limits.tpm),
        ("max_concurrency", limits.max_concurrency),
    ] {
        if v == Some(0) {
            return Err(ApiError::bad(
                format!("limits.{what} must be at least 1"),
                Some("limits"),
            ));
        }
    }
    for b in limits.budgets.iter().flatten() {
        if let Some(problem) = b.problem() {
            return Err(ApiError::bad(
                format!("limits.budgets: {problem}"),
                Some("limits"),
            ));
        }
    }
    if limits
        .queue_wait_seconds
        .is_some_and(|w| !(0.0..=3600.0).contains(&w))
    {
        return Err(ApiError::bad(
            "limits.queue_wait_seconds must be between 0 and 3600",
            Some("limits"),
        ));
    }
    for (what, v) in [
        ("daily_budget_usd", limits.daily_budget_usd),
        ("monthly_budget_usd", limits.monthly_budget_usd),
    ] {
        if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
            return Err(ApiError::bad(
                format!("limits.{what} must be a number of dollars, 0 or more"),
                Some("limits"),
            ));
        }
    }
    let limits = serde_json::to_value(&limits).unwrap_or_default();
    gw.api_keys
        .create(
            &name,
            &tier,
            tenant.as_deref().filter(|t| !t.is_empty()),
            limits,
        )
        .await
        .map_err(|e| match e {
            e if e.is_unavailable() => ApiError::Unavailable(format!("keys: {e}")),
            e => ApiError::bad(e.to_string(), None),
        })
}

/// Spend of one key today and this month (UTC), in dollars, per model and in all.
pub async fn key_spend(gw: &Gateway, key_id: &str) -> Result<Value, ApiError> {
    let now = tollgate_db::now_ms() as u64;
    let mut out = serde_json::Map::new();
    for (name, period) in [
        ("today", tollgate_redis::SpendPeriod::Day),
        ("this_month", tollgate_redis::SpendPeriod::Month),
    ] {
        let spend = gw
            .spend
            .spend(key_id, period, now)
            .await
            .map_err(|e| match e {
                e if e.is_unavailable() => ApiError::Unavailable(format!("spend: {e}")),
                e => ApiError::bad(e.to_string(), Some("key")),
            })?;
        let models: serde_json::Map<String, Value> = spend
            .models
            .iter()
            .map(|(m, n)| (m.clone(), json!(*n as f64 / 1e9)))
            .collect();
        out.insert(
            name.into(),
            json!({"total_usd": spend.total_nanos as f64 / 1e9, "models": models}),
        );
    }
    Ok(Value::Object(out))
}

/// Spend per key (one key, or every key with `open` and `master`): today and this month per
/// model (from Redis, where budgets are checked), and since the first record (from the
/// database, when there is one).
pub async fn spend_report(gw: &Gateway, key: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<String> = match key {
        Some(k) if k.is_empty() || k.len() > 200 || k.chars().any(char::is_control) => {
            return Err(ApiError::bad(
                "key must be a key id: 1 to 200 characters, none of them control characters",
                Some("key"),
            ));
        }
        Some(k) => vec![k.to_owned()],
        None => gw
            .api_keys
            .list()
            .await?
            .into_iter()
            .map(|k| k.id)
            .chain(["open".to_owned(), "master".to_owned()])
            .collect(),
    };
    let mut data = Vec::new();
    for id in &ids {
        let mut entry = key_spend(gw, id).await?;
        entry["key"] = Value::String(id.clone());
        if let Some(durable) = &gw.durable {
            let rows = durable.db.spend(Some(id), 0).await?;
            entry["recorded"] = Value::Array(
                rows.iter()
                    .map(|r| {
                        json!({"model": r.model, "requests": r.requests,
                               "prompt_tokens": r.prompt_tokens,
                               "completion_tokens": r.completion_tokens,
                               "cost_usd": r.cost_nanos as f64 / 1e9})
                    })
                    .collect(),
            );
        }
        data.push(entry);
    }
    Ok(data)
}

/// Cache statistics of every model with cached entries (shared by HTTP and the CLI).
pub async fn cache_stats(gw: &Gateway) -> Result<Value, ApiError> {
    let mut data = Vec::new();
    for model in gw.cache.models().await? {
        let s = gw.cache.stats(&model).await?;
        let lookups = s.hits + s.misses;
        let price = gw.config.price(&model, None).unwrap_or_default();
        data.push(json!({
            "model": model,
            "hits": s.hits,
            "misses": s.misses,
            "hit_rate": if lookups == 0 { 0.0 } else { s.hits as f64 / lookups as f64 },
            "saved_prompt_tokens": s.saved_prompt_tokens,
            "saved_completion_tokens": s.saved_completion_tokens,
            "saved_dollars": price.cost(s.saved_prompt_tokens, s.saved_completion_tokens),
        }));
    }
    Ok(json!({"object": "list", "data": data}))
}
