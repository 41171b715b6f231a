//! Spend per API key and model, per UTC day and month, and budgets checked against it.
//!
//! Amounts are integers in billionths of a dollar (HINCRBY is exact; floats would drift). A
//! request's cost is charged when it ends, to the model's field and to `*` (the total) of both
//! periods, in one transaction on the key's hash tag. A budget is checked before a request goes
//! upstream: the request that finds the period's total at or over the budget is refused. Requests
//! already in flight when the budget is reached still finish, so spend can pass a budget by at most
//! what the key's concurrent requests cost (bound it with `max_concurrency`).
//!
//! Budgets over any window ([`WindowBudget`]: a minute to a month, e.g. dollars per hour) count
//! the spend of the last window, sliding in sixtieths of it (`lua/spend_window.lua`), and set off
//! alerts at shares of the budget, once per window whichever replica charges.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};
use crate::scripts;

/// A budget's period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendPeriod {
    Day,
    Month,
}

impl SpendPeriod {
    pub fn name(self) -> &'static str {
        match self {
            SpendPeriod::Day => "daily",
            SpendPeriod::Month => "monthly",
        }
    }
}

/// A limit on spend over a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub period: SpendPeriod,
    /// Billionths of a dollar.
    pub limit_nanos: i64,
}

/// Spend over one period: in all and per model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spend {
    pub total_nanos: i64,
    pub models: BTreeMap<String, i64>,
}

/// A budget found spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub budget: Budget,
    pub spent_nanos: i64,
    /// Until the period ends.
    pub resets_in: Duration,
}

/// A budget over a sliding window: at most `limit_nanos` spent within any `window`; an alert
/// at each of `alert_at` (shares of the budget, at most once per window).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowBudget {
    pub window: Duration,
    /// Billionths of a dollar.
    pub limit_nanos: i64,
    pub alert_at: Vec<f64>,
}

/// A window budget's state after a read or a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpend {
    /// Spent within the window, billionths of a dollar.
    pub spent_nanos: i64,
    /// Until the oldest spend counted leaves the window.
    pub frees_in: Duration,
}

/// An alert a charge set off: `budget` (its index) crossed `share` of its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetAlert {
    pub budget: usize,
    pub share: f64,
    pub spent_nanos: i64,
}

/// Spend counters on one Redis.
#[derive(Debug, Clone)]
pub struct SpendLedger {
    redis: Redis,
    keys: Keys,
}

const TOTAL: &str = "*";

impl SpendLedger {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        SpendLedger { redis, keys }
    }

    fn key(&self, subject: &Id, period: SpendPeriod, now_ms: u64) -> String {
        let (y, m, d) = civil_date(now_ms);
        let suffix = match period {
            SpendPeriod::Day => format!("d:{y:04}{m:02}{d:02}"),
            SpendPeriod::Month => format!("m:{y:04}{m:02}"),
        };
        self.keys.spend(subject, &suffix)
    }

    /// Adds `nanos` to `subject`'s spend on `model`, today and this month (one transaction).
    pub async fn charge(&self, subject: &str, model: &str, nanos: i64, now_ms: u64) -> Result<()> {
        if nanos <= 0 {
            return Ok(());
        }
        let subject = Id::new(subject)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (period, keep) in [(SpendPeriod::Day, 3u64), (SpendPeriod::Month, 63)] {
            let key = self.key(&subject, period, now_ms);
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg(model)
                .arg(nanos)
                .ignore()
                .cmd("HINCRBY")
                .arg(&key)
                .arg(TOTAL)
                .arg(nanos)
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(keep * 24 * 3600)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.conn()).await?;
        Ok(())
    }

    /// `subject`'s spend in each of `budgets`' windows, and, with `nanos` > 0, that much charged
    /// to each first (one script call): the spend after, and the alerts the charge set off.
    pub async fn windows(
        &self,
        subject: &str,
        budgets: &[WindowBudget],
        nanos: i64,
    ) -> Result<(Vec<WindowSpend>, Vec<BudgetAlert>)> {
        if budgets.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let subject = Id::new(subject)?;
        let mut invocation = scripts::SPEND_WINDOW.prepare_invoke();
        invocation.arg(nanos.max(0)).arg(budgets.len());
        for b in budgets {
            let window = crate::millis(b.window).max(60_000);
            invocation
                .key(self.keys.spend(&subject, &format!("w:{}", window / 1000)))
                .arg(window)
                .arg(b.limit_nanos)
                .arg(b.alert_at.len());
            for share in &b.alert_at {
                invocation.arg(format!("{share}"));
            }
        }
        let reply: Vec<redis::Value> = invocation.invoke_async(&mut self.redis.conn()).await?;
        let int = |v: &redis::Value| -> Result<i64> {
            redis::from_redis_value_ref(v).map_err(|e| Error::reply("spend_window", e.to_string()))
        };
        if reply.len() < 2 * budgets.len() {
            return Err(Error::reply("spend_window", "a short reply"));
        }
        let spends = reply[..2 * budgets.len()]
            .chunks_exact(2)
            .map(|pair| {
                Ok(WindowSpend {
                    spent_nanos: int(&pair[0])?,
                    frees_in: Duration::from_millis(int(&pair[1])?.max(0) as u64),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut alerts = Vec::new();
        for pair in reply[2 * budgets.len()..].chunks_exact(2) {
            let budget = usize::try_from(int(&pair[0])? - 1).unwrap_or(0);
            let share: String = redis::from_redis_value_ref(&pair[1])
                .map_err(|e| Error::reply("spend_window", e.to_string()))?;
            alerts.push(BudgetAlert {
                budget,
                share: share.parse().unwrap_or(0.0),
                spent_nanos: spends.get(budget).map_or(0, |s| s.spent_nanos),
            });
        }
        Ok((spends, alerts))
    }

    /// `subject`'s spend in the period containing `now_ms`.
    pub async fn spend(&self, subject: &str, period: SpendPeriod, now_ms: u64) -> Result<Spend> {
        let key = self.key(&Id::new(subject)?, period, now_ms);
        let fields: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.redis.conn())
            .await?;
        let mut spend = Spend::default();
        for (field, nanos) in fields {
            if field == TOTAL {
                spend.total_nanos = nanos;
            } else {
                spend.models.insert(field, nanos);
            }
        }
        Ok(spend)
    }

    /// The first of `budgets` that `subject` has spent (one round trip), if any.
    pub async fn check(
        &self,
        subject: &str,
        budgets: &[Budget],
        now_ms: u64,
    ) -> Result<Option<Exhausted>> {
        if budgets.is_empty() {
            return Ok(None);
        }
        let subject = Id::new(subject)?;
        let mut pipe = redis::pipe();
        for b in budgets {
            pipe.cmd("HGET")
                .arg(self.key(&subject, b.period, now_ms))
                .arg(TOTAL);
        }
        let spent: Vec<Option<i64>> = pipe.query_async(&mut self.redis.conn()).await?;
        for (budget, spent) in budgets.iter().zip(spent) {
            let spent = spent.unwrap_or(0);
            if spent >= budget.limit_nanos {
                return Ok(Some(Exhausted {
                    budget: *budget,
                    spent_nanos: spent,
                    resets_in: until_period_end(budget.period, now_ms),
                }));
            }
        }
        Ok(None)
    }
}

/// The UTC date of `ms` since the epoch (Howard Hinnant's days-to-civil).
pub fn civil_date(ms: u64) -> (i64, u32, u32) {
    let z = (ms / 86_400_000) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since the epoch of a UTC date (the inverse of [`civil_date`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn until_period_end(period: SpendPeriod, now_ms: u64) -> Duration {
    let (y, m, _) = civil_date(now_ms);
    let end_day = match period {
        SpendPeriod::Day => (now_ms / 86_400_000) as i64 + 1,
        SpendPeriod::Month if m == 12 => days_from_civil(y + 1, 1, 1),
        SpendPeriod::Month => days_from_civil(y, m + 1, 1),
    };
    let end_ms = u64::try_from(end_day).unwrap_or(0) * 86_400_000;
    Duration::from_millis(end_ms.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_period_ends_are_utc() {
        // 2026-11-30T23:59:59Z
        let ms = 1_796_083_199_000;
        assert_eq!(civil_date(ms), (2026, 11, 30));
        assert_eq!(
            until_period_end(SpendPeriod::Day, ms),
            Duration::from_secs(1)
        );
        assert_eq!(
            until_period_end(SpendPeriod::Month, ms),
            Duration::from_secs(1)
        );
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400_000), (2000, 2, 29));
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
    }
}
