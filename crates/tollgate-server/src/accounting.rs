//! Usage, spend and budgets, and the durable records every request leaves.
//!
//! Each request that reaches a model (or is answered from the cache) records its tokens and cost:
//! the cost is charged to the key's spend counters in Redis at once (what budgets are checked
//! against), and a usage record goes through the outbox to the database (what reports read).
//! Prices come from `[prices."MODEL"]`, for the model asked for, else the deployment that
//! answered; a model without a price costs nothing.

use std::sync::Arc;

use tollgate_core::Usage;
use tollgate_db::{Record, UsageRow};
use tollgate_redis::{Budget, SpendPeriod};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::Gateway;

/// Who a request is charged to.
#[derive(Debug, Clone)]
pub struct Payer {
    /// The API key id (`open`, `master` without one).
    pub subject: String,
    pub tenant: String,
}

impl From<&Principal> for Payer {
    fn from(p: &Principal) -> Self {
        Payer {
            subject: p.subject.clone(),
            tenant: p.tenant.clone(),
        }
    }
}

/// The cost of `usage` on `model` (or on `route`, the deployment that served it), in billionths
/// of a dollar.
pub fn cost_nanos(gw: &Gateway, model: &str, route: Option<&str>, usage: &Usage) -> i64 {
    let price = gw
        .config
        .prices
        .get(model)
        .or_else(|| route.and_then(|r| gw.config.prices.get(r)));
    price.map_or(0, |p| {
        (p.cost(usage.prompt_tokens, usage.completion_tokens) * 1e9).round() as i64
    })
}

/// Dollars to billionths of a dollar.
pub fn nanos(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

/// Refuses the request when one of the principal's budgets is spent. Redis unreachable: the
/// budget cannot be read and the request goes on (spend is still recorded in the database).
pub async fn check_budget(gw: &Gateway, principal: &Principal) -> Result<(), ApiError> {
    let budgets: Vec<Budget> = [
        (SpendPeriod::Day, principal.limits.daily_budget_usd),
        (SpendPeriod::Month, principal.limits.monthly_budget_usd),
    ]
    .into_iter()
    .filter_map(|(period, usd)| {
        usd.map(|usd| Budget {
            period,
            limit_nanos: nanos(usd),
        })
    })
    .collect();
    if budgets.is_empty() {
        return Ok(());
    }
    match gw
        .spend
        .check(&principal.subject, &budgets, tollgate_db::now_ms() as u64)
        .await
    {
        Ok(None) => Ok(()),
        Ok(Some(spent)) => Err(ApiError::BudgetExceeded {
            message: format!(
                "the {} budget of ${:.2} for this key is spent (${:.4} so far); it resets in {} s",
                spent.budget.period.name(),
                spent.budget.limit_nanos as f64 / 1e9,
                spent.spent_nanos as f64 / 1e9,
                spent.resets_in.as_secs().max(1)
            ),
            retry_after: spent.resets_in,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "budget unreadable (Redis); letting the request through");
            Ok(())
        }
    }
}

/// Records what a request used: its cost added to the key's spend and its usage record to the
/// outbox, concurrently (one round trip's wait for both).
pub async fn record_usage(
    gw: &Arc<Gateway>,
    payer: &Payer,
    model: &str,
    route: Option<&str>,
    usage: &Usage,
    cached: bool,
) {
    let used = Used::of(gw, payer, model, route, usage, cached);
    tokio::join!(used.spend.charge(gw), submit(gw, vec![used.record]));
}

/// What one request used: its cost and its usage record.
pub struct Used {
    pub record: Record,
    pub spend: Spend,
}

/// A cost to add to a key's spend.
pub struct Spend {
    subject: String,
    model: String,
    cost_nanos: i64,
    at_ms: i64,
}

impl Used {
    /// Prices `usage` (nothing when `cached`).
    pub fn of(
        gw: &Gateway,
        payer: &Payer,
        model: &str,
        route: Option<&str>,
        usage: &Usage,
        cached: bool,
    ) -> Used {
        let cost = if cached {
            0
        } else {
            cost_nanos(gw, model, route, usage)
        };
        let now = tollgate_db::now_ms();
        Used {
            record: Record::Usage(UsageRow {
                // Time-ordered, so rows are appended at the end of the primary key's index
                // rather than scattered through it.
                id: format!("use_{}", uuid::Uuid::now_v7().simple()),
                key_id: payer.subject.clone(),
                tenant: payer.tenant.clone(),
                model: model.to_owned(),
                prompt_tokens: usage.prompt_tokens as i64,
                completion_tokens: usage.completion_tokens as i64,
                cost_nanos: cost,
                cached,
                created_ms: now,
            }),
            spend: Spend {
                subject: payer.subject.clone(),
                model: model.to_owned(),
                cost_nanos: cost,
                at_ms: now,
            },
        }
    }
}

impl Spend {
    /// Adds the cost to the key's spend (what costs nothing sends nothing). Awaited before an
    /// answer ends, so the key's next request sees it.
    pub async fn charge(&self, gw: &Gateway) {
        if self.cost_nanos > 0
            && let Err(e) = gw
                .spend
                .charge(
                    &self.subject,
                    &self.model,
                    self.cost_nanos,
                    self.at_ms as u64,
                )
                .await
        {
            tracing::warn!(error = %e, "could not add a request's cost to its key's spend");
        }
    }
}

/// [`submit`] without waiting (for records whose cost is nothing: no spend to charge).
pub fn send(gw: &Gateway, records: Vec<Record>) {
    if let Some(durable) = &gw.durable {
        durable.outbox.send(records);
    }
}

/// Sends durable records to the database (through the outbox); without a database, drops them.
pub async fn submit(gw: &Gateway, records: Vec<Record>) {
    let Some(durable) = &gw.durable else { return };
    if let Err(e) = durable.outbox.push(records).await {
        tracing::error!(error = %e, "durable records lost: neither the outbox nor the database took them");
    }
}
