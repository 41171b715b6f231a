//! The model registry: models and their deployments (status, weight, version) and A/B
//! experiments, kept in Redis and changed at runtime. Every change bumps a version and is
//! announced on a channel, so every gateway instance can apply it within a second without a
//! restart (they also poll the version, so a missed message only delays a change).
//!
//! Experiments are sticky: a user's arm is decided by hashing (experiment, user), so the same
//! user gets the same arm on every instance, for as long as the split stays the same.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};
use crate::pubsub::{Channels, Subscription};
use crate::scripts;

/// Whether a deployment takes traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Takes traffic.
    #[default]
    Active,
    /// Takes none (kept for a quick switch back).
    Disabled,
}

/// One place a model is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentEntry {
    /// Name reported in `x-tollgate-route`.
    pub name: String,
    /// `provider/model`.
    pub model: String,
    /// Share of traffic outside experiments.
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub status: DeploymentStatus,
    /// A label of what is deployed (weights, prompt, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

fn one() -> u32 {
    1
}

/// One arm of an experiment: a deployment and its share of users, in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub deployment: String,
    pub percent: f64,
}

/// An A/B experiment (or a canary: a small arm next to the main one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Part of the hash, so two experiments split users independently.
    pub name: String,
    pub arms: Vec<Arm>,
}

/// A model of the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients ask for.
    pub name: String,
    pub deployments: Vec<DeploymentEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<Experiment>,
}

impl ModelEntry {
    /// Every problem of the entry (empty when usable).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.name.trim().is_empty() {
            p.push("a model needs a name".into());
        }
        if self.deployments.is_empty() {
            p.push("a model needs at least one deployment".into());
        }
        for d in &self.deployments {
            if d.name.is_empty() || !d.model.contains('/') {
                p.push(format!(
                    "deployment {:?} needs a name and a provider/model",
                    d.name
                ));
            }
        }
        if !self
            .deployments
            .iter()
            .any(|d| d.status == DeploymentStatus::Active && d.weight > 0)
            && self.experiment.is_none()
        {
            p.push("no active deployment with a weight above 0".into());
        }
        if let Some(e) = &self.experiment {
            let total: f64 = e.arms.iter().map(|a| a.percent).sum();
            if e.arms.is_empty()
                || (total - 100.0).abs() > 1e-6
                || e.arms.iter().any(|a| a.percent < 0.0)
            {
                p.push(format!("experiment {:?}: arms must have shares from 0 that add up to 100 (they add up to {total})", e.name));
            }
            for a in &e.arms {
                if !self.deployments.iter().any(|d| d.name == a.deployment) {
                    p.push(format!(
                        "experiment {:?}: no deployment named {:?}",
                        e.name, a.deployment
                    ));
                }
            }
        }
        p
    }

    /// The deployment a user is assigned to by the experiment (`None` without an experiment).
    pub fn arm_for(&self, user: &str) -> Option<&DeploymentEntry> {
        let e = self.experiment.as_ref()?;
        let arm = assign(e, user)?;
        self.deployments.iter().find(|d| d.name == arm.deployment)
    }
}

/// The arm of `experiment` for `user`: the user's hash picks a point in [0, 100), and the arms
/// cover that range in order. Stable across instances and restarts.
pub fn assign<'a>(experiment: &'a Experiment, user: &str) -> Option<&'a Arm> {
    let digest = Sha256::digest(format!("{}\u{0}{user}", experiment.name).as_bytes());
    let n = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    let point = (n % 1_000_000) as f64 / 10_000.0;
    let mut upto = 0.0;
    for arm in &experiment.arms {
        upto += arm.percent;
        if point < upto {
            return Some(arm);
        }
    }
    experiment.arms.last()
}

/// The registry on one Redis.
#[derive(Debug, Clone)]
pub struct Registry {
    redis: Redis,
    keys: Keys,
    channels: Channels,
}

const CHANNEL: &str = "registry";

impl Registry {
    /// The registry under `keys`' prefix.
    pub fn new(redis: Redis, keys: Keys) -> Self {
        Registry {
            channels: Channels::new(redis.clone(), keys.clone()),
            redis,
            keys,
        }
    }

    /// Adds or replaces a model; returns the new registry version.
    pub async fn put(&self, entry: &ModelEntry) -> Result<u64> {
        let problems = entry.problems();
        if !problems.is_empty() {
            return Err(Error::InvalidArgument(problems.join("; ")));
        }
        let json =
            serde_json::to_string(entry).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.write("put", &entry.name, &json).await
    }

    /// Removes a model; returns the new version, or [`Error::NotFound`].
    pub async fn delete(&self, name: &str) -> Result<u64> {
        match self.write("delete", name, "").await? {
            0 => Err(Error::NotFound),
            v => Ok(v),
        }
    }

    async fn write(&self, op: &str, name: &str, json: &str) -> Result<u64> {
        let version: u64 = scripts::REGISTRY_WRITE
            .key(self.keys.registry_models())
            .key(self.keys.registry_version())
            .arg(op)
            .arg(name)
            .arg(json)
            .arg(self.keys.channel(&Id::new(CHANNEL)?))
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(version)
    }

    /// The version and every model, in one round trip.
    pub async fn load(&self) -> Result<(u64, Vec<ModelEntry>)> {
        let (version, models): (Option<u64>, Vec<(String, String)>) = redis::pipe()
            .cmd("GET")
            .arg(self.keys.registry_version())
            .cmd("HGETALL")
            .arg(self.keys.registry_models())
            .query_async(&mut self.redis.conn())
            .await?;
        let mut entries: Vec<ModelEntry> = models
            .into_iter()
            .filter_map(|(_, json)| serde_json::from_str(&json).ok())
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((version.unwrap_or(0), entries))
    }

    /// The current version (cheap: one GET).
    pub async fn version(&self) -> Result<u64> {
        let v: Option<u64> = redis::cmd("GET")
            .arg(self.keys.registry_version())
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Change announcements (each message is the new version).
    pub async fn watch(&self) -> Result<Subscription> {
        self.channels.subscribe(CHANNEL).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(a: f64) -> Experiment {
        Experiment {
            name: "exp-1".into(),
            arms: vec![
                Arm {
                    deployment: "a".into(),
                    percent: a,
                },
                Arm {
                    deployment: "b".into(),
                    percent: 100.0 - a,
                },
            ],
        }
    }

    #[test]
    fn a_90_10_split_over_10000_users_lands_within_one_and_a_half_points_and_sticks() {
        let e = split(90.0);
        let a = (0..10_000)
            .filter(|u| assign(&e, &format!("user-{u}")).unwrap().deployment == "a")
            .count();
        let share = a as f64 / 100.0;
        assert!((88.5..=91.5).contains(&share), "arm a got {share}%");
        for u in 0..1000 {
            let user = format!("user-{u}");
            assert_eq!(assign(&e, &user), assign(&e, &user));
        }
    }

    #[test]
    fn experiments_split_users_independently() {
        let mut other = split(50.0);
        other.name = "exp-2".into();
        let first = split(50.0);
        let same = (0..10_000).filter(|u| {
            let user = format!("u{u}");
            assign(&first, &user).unwrap().deployment == assign(&other, &user).unwrap().deployment
        });
        let agreement = same.count() as f64 / 10_000.0;
        assert!((0.47..0.53).contains(&agreement), "{agreement}");
    }

    #[test]
    fn bad_entries_name_every_problem() {
        let entry = ModelEntry {
            name: "m".into(),
            deployments: vec![DeploymentEntry {
                name: "a".into(),
                model: "nope".into(),
                weight: 1,
                status: DeploymentStatus::Active,
                version: None,
            }],
            experiment: Some(Experiment {
                name: "e".into(),
                arms: vec![Arm {
                    deployment: "ghost".into(),
                    percent: 60.0,
                }],
            }),
        };
        assert_eq!(entry.problems().len(), 3, "{:?}", entry.problems());
    }
}
