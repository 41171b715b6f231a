//! Spend per API key and model, per UTC day and month, and budgets checked against it.
//!
//! Amounts are integers in billionths of a dollar (HINCRBY is exact; floats would drift). A
//! request's cost is charged when it ends, to the model's field and to `*` (the total) of both
//! periods, in one transaction on the key's hash tag. A budget is checked before a request goes
//! upstream: the request that finds the period's total at or over the budget is refused. Requests
//! already in flight when the budget is reached still finish, so spend can pass a budget by at most
//! what the key's concurrent requests cost (bound it with `max_concurrency`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::conn::Redis;
use crate::error::Result;
use crate::keys::{Id, Keys};

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
