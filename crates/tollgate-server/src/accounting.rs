//! Usage, spend and budgets, and the durable records every request leaves.
//!
//! Each request that reaches a model (or is answered from the cache) records its tokens and cost:
//! the cost is charged to the key's spend counters in Redis at once (what budgets are checked
//! against), and a usage record goes through the outbox to the database (what reports read).
//! Prices come from `[prices."MODEL"]`, for the model asked for, else the deployment that
//! answered, else the compiled-in prices of common models (`config/prices.toml`, by the
//! upstream's model name); a model without a price costs nothing.
//!
//! Budgets: per UTC day and month, and over any window (`budgets`, e.g. dollars per hour),
//! checked before a request goes upstream; a charge that takes a window's spend past a share of
//! its budget (`alert_at`) sets off one alert, whichever replica charged: an event on the key's
//! tenant's `budget-alerts` stream and a POST to `alerts.webhook_url`.

use std::sync::Arc;

use serde_json::json;
use tollgate_core::Usage;
use tollgate_db::{Record, Served, UsageRow};
use tollgate_redis::{Budget, BudgetAlert, SpendPeriod, WindowBudget};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::Gateway;

/// Who a request is charged to.
#[derive(Debug, Clone)]
pub struct Payer {
    /// The API key id (`open`, `master` without one).
    pub subject: String,
    pub tenant: String,
    /// Its budgets over windows (the key's own, else its tier's).
    pub budgets: Vec<crate::config::WindowBudget>,
}

impl From<&Principal> for Payer {
    fn from(p: &Principal) -> Self {
        Payer {
            subject: p.subject.clone(),
            tenant: p.tenant.clone(),
            budgets: p.limits.budgets.clone().unwrap_or_default(),
        }
    }
}

/// Budgets of the configuration as the ledger takes them, each with its window as written.
fn ledger_windows(budgets: &[crate::config::WindowBudget]) -> Vec<(WindowBudget, String)> {
    budgets
        .iter()
        .filter_map(|b| {
            Some((
                WindowBudget {
                    window: b.duration()?,
                    limit_nanos: nanos(b.usd),
                    alert_at: b.alert_at.clone(),
                },
                b.window.trim().to_owned(),
            ))
        })
        .collect()
}

/// The cost of `usage` on `model` (or on `route`, the deployment that served it), in billionths
/// of a dollar.
pub fn cost_nanos(gw: &Gateway, model: &str, route: Option<&str>, usage: &Usage) -> i64 {
    gw.config.price(model, route).map_or(0, |p| {
        (p.cost(usage.prompt_tokens, usage.completion_tokens) * 1e9).round() as i64
    })
}

/// Dollars to billionths of a dollar.
pub fn nanos(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

/// Refuses the request when one of the principal's budgets is spent. Redis unreachable: the
/// budget cannot be read and the request goes on (spend is still recorded in the database).
pub async fn check_budget(
    gw: &Gateway,
    principal: &Principal,
    model: &str,
) -> Result<(), ApiError> {
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
    let windows = scoped_budgets(
        gw,
        &principal.subject,
        &principal.tenant,
        principal.limits.budgets.as_deref().unwrap_or_default(),
        model,
    );
    if !windows.is_empty() {
        check_windows(gw, &windows).await?;
    }
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

/// Whose spend a budget over a window limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    /// An API key's (its own budgets, else its tier's).
    Key,
    /// Every key of a tenant (`[tenants.NAME] budgets`).
    Tenant,
    /// Every request to a model (`[capacity."MODEL"] budgets`).
    Model,
}

/// The budgets over windows of one scope, and whose spend they count.
#[derive(Debug, Clone)]
pub struct ScopedBudgets {
    pub scope: BudgetScope,
    /// The key id, tenant or model.
    pub name: String,
    /// Its spend's subject in the ledger (the key id; `tenant:NAME`, `model:NAME`).
    subject: String,
    /// Each budget, with its window as written (`1h`).
    budgets: Vec<(WindowBudget, String)>,
}

impl ScopedBudgets {
    fn windows(&self) -> Vec<WindowBudget> {
        self.budgets.iter().map(|(b, _)| b.clone()).collect()
    }

    /// "for this key", "for tenant acme", "for model gpt-4o".
    fn whose(&self) -> String {
        match self.scope {
            BudgetScope::Key => "for this key".to_owned(),
            BudgetScope::Tenant => format!("for tenant {}", self.name),
            BudgetScope::Model => format!("for model {}", self.name),
        }
    }
}

/// The budgets over windows a request of key `subject` (with its `own` budgets) of `tenant` to
/// `model` counts against: its key's, its tenant's and the model's, those that have any
/// (nothing is built for the others: this runs for every request).
pub fn scoped_budgets(
    gw: &Gateway,
    subject: &str,
    tenant: &str,
    own: &[crate::config::WindowBudget],
    model: &str,
) -> Vec<ScopedBudgets> {
    let sources: [(BudgetScope, &[crate::config::WindowBudget]); 3] = [
        (BudgetScope::Key, own),
        (
            BudgetScope::Tenant,
            gw.config
                .tenants
                .get(tenant)
                .map_or(&[][..], |t| &t.budgets),
        ),
        (
            BudgetScope::Model,
            gw.config
                .capacity
                .get(model)
                .map_or(&[][..], |c| &c.budgets),
        ),
    ];
    sources
        .into_iter()
        .filter(|(_, budgets)| !budgets.is_empty())
        .map(|(scope, budgets)| {
            let (name, subject) = match scope {
                BudgetScope::Key => (subject.to_owned(), subject.to_owned()),
                BudgetScope::Tenant => (tenant.to_owned(), format!("tenant:{tenant}")),
                BudgetScope::Model => (model.to_owned(), format!("model:{model}")),
            };
            ScopedBudgets {
                scope,
                name,
                subject,
                budgets: ledger_windows(budgets),
            }
        })
        .collect()
}

/// Refuses the request if a budget of `scopes` is spent (their reads sent at once).
async fn check_windows(gw: &Gateway, scopes: &[ScopedBudgets]) -> Result<(), ApiError> {
    let reads = scopes
        .iter()
        .map(|s| async move { gw.spend.windows(&s.subject, &s.windows(), 0).await });
    for (scoped, read) in scopes.iter().zip(futures::future::join_all(reads).await) {
        let spends = match read {
            Ok((spends, _)) => spends,
            Err(e) => {
                tracing::warn!(error = %e, "budget unreadable (Redis); letting the request through");
                continue;
            }
        };
        for ((budget, window), spend) in scoped.budgets.iter().zip(spends) {
            if spend.spent_nanos >= budget.limit_nanos {
                return Err(ApiError::BudgetExceeded {
                    message: format!(
                        "the budget of ${:.2} per {window} {} is spent (${:.4} within the last {window}); spend starts leaving the window in {} s",
                        budget.limit_nanos as f64 / 1e9,
                        scoped.whose(),
                        spend.spent_nanos as f64 / 1e9,
                        spend.frees_in.as_secs().max(1)
                    ),
                    retry_after: spend.frees_in.max(std::time::Duration::from_secs(1)),
                });
            }
        }
    }
    Ok(())
}

/// Records what a request used: its cost added to the key's spend and its usage record to the
/// outbox, concurrently (one round trip's wait for both).
pub async fn record_usage(
    gw: &Arc<Gateway>,
    payer: &Payer,
    model: &str,
    route: Option<&str>,
    usage: &Usage,
    served: Served,
) {
    let used = Used::of(gw, payer, model, route, usage, served);
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
    tenant: String,
    model: String,
    cost_nanos: i64,
    at_ms: i64,
    budgets: Vec<ScopedBudgets>,
}

impl Used {
    /// Prices `usage` (nothing when served from a cache).
    pub fn of(
        gw: &Gateway,
        payer: &Payer,
        model: &str,
        route: Option<&str>,
        usage: &Usage,
        served: Served,
    ) -> Used {
        let cost = if served.cached() {
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
                served,
                created_ms: now,
            }),
            spend: Spend {
                subject: payer.subject.clone(),
                tenant: payer.tenant.clone(),
                model: model.to_owned(),
                cost_nanos: cost,
                at_ms: now,
                budgets: if cost > 0 {
                    scoped_budgets(gw, &payer.subject, &payer.tenant, &payer.budgets, model)
                } else {
                    Vec::new()
                },
            },
        }
    }
}

impl Spend {
    /// Adds the cost to the key's spend (what costs nothing sends nothing). Awaited before an
    /// answer ends, so the key's next request sees it.
    pub async fn charge(&self, gw: &Gateway) {
        if self.cost_nanos > 0 && !self.budgets.is_empty() {
            let charges = self.budgets.iter().map(|s| async move {
                gw.spend
                    .windows(&s.subject, &s.windows(), self.cost_nanos)
                    .await
            });
            for (scoped, charged) in self
                .budgets
                .iter()
                .zip(futures::future::join_all(charges).await)
            {
                match charged {
                    Ok((_, alerts)) => {
                        for alert in alerts {
                            self.alert(gw, scoped, alert).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not add a request's cost to its budget windows");
                    }
                }
            }
        }
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

impl Spend {
    /// Sends `alert` (of `scoped`'s budgets) out: the webhook, and for a key's or a tenant's
    /// budget an event on the tenant's `budget-alerts` stream (a model's budget is the
    /// operator's business, not a tenant's).
    async fn alert(&self, gw: &Gateway, scoped: &ScopedBudgets, alert: BudgetAlert) {
        let Some((budget, window)) = scoped.budgets.get(alert.budget) else {
            return;
        };
        let scope = match scoped.scope {
            BudgetScope::Key => "key",
            BudgetScope::Tenant => "tenant",
            BudgetScope::Model => "model",
        };
        let mut body = json!({
            "object": "budget.alert",
            "scope": scope,
            "name": scoped.name,
            "window": window,
            "budget_usd": budget.limit_nanos as f64 / 1e9,
            "spent_usd": alert.spent_nanos as f64 / 1e9,
            "share": alert.share,
            "at_ms": self.at_ms,
        });
        if scoped.scope != BudgetScope::Model {
            body["tenant"] = json!(self.tenant);
            body["key_id"] = json!(self.subject);
        }
        tracing::warn!(scope, name = %scoped.name, window = %window, share = alert.share, "budget alert");
        let text = body.to_string();
        if scoped.scope != BudgetScope::Model {
            let stream = crate::auth::tenant_scoped(&self.tenant, "budget-alerts");
            if let Err(e) = gw
                .events
                .publish(&stream, &[("alert", text.as_bytes())])
                .await
            {
                tracing::warn!(error = %e, "could not publish a budget alert");
            }
        }
        let url = &gw.config.alerts.webhook_url;
        if !url.is_empty() {
            let request = gw
                .webhooks
                .post(url)
                .header("content-type", "application/json")
                .body(text)
                .send();
            tokio::spawn(async move {
                match request.await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "the alert webhook refused a budget alert")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not send a budget alert to the webhook")
                    }
                }
            });
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
    queue(gw, records).await;
}

/// [`submit`] in two steps: the records are queued now, behind every record this process queued
/// before them, and the future returned waits for them to reach the outbox.
pub fn queue(gw: &Gateway, records: Vec<Record>) -> impl Future<Output = ()> + use<> {
    let queued = gw.durable.as_ref().map(|d| d.outbox.enqueue(records));
    async move {
        if let Some(queued) = queued
            && let Err(e) = queued.await
        {
            tracing::error!(error = %e, "durable records lost: neither the outbox nor the database took them");
        }
    }
}
