//! The route of a chat request: where its answer comes from, decided by the exact cache and,
//! after an exact miss, the semantic cache.
//!
//! One exact-cache lookup (one script) either hits, makes this request the leader of its
//! identical requests (single flight), or names the leader's token stream to follow. A leader
//! then asks the semantic cache: the question embedded (through the embedding cache), the
//! nearest stored question of the same partition (model, tenant, parameters, everything but the
//! last message), served when similar enough and its exact entry still exists.
//!
//! Redis unreachable: the cache is left out and the request goes upstream. The semantic
//! lookup itself is in [`super::semantic`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_core::{ChatRequest, request_hash};
use tollgate_redis::{CacheKey, Lead, PreparedChecks};

use super::generation::Caching;
use super::plan::{ChatOptions, Plan};
use super::replay::{Attached, Leader, attach};
use super::semantic::SemanticContext;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::limits::{Admission, Charge};
use crate::metrics::CacheResult;
use crate::state::Gateway;
use crate::task::AbortOnDrop;

/// Where a request's answer comes from.
pub(super) enum Route {
    /// The exact cache's answer, and its admission when the lookup's script charged it.
    Hit(Vec<u8>, Option<Admission>),
    /// A similar question's answer.
    Semantic { bytes: Vec<u8>, similarity: f32 },
    /// An identical request in flight, whose token stream this one reads.
    Follow {
        holder: String,
        attached: Box<Attached>,
    },
    /// The upstream, and how the cache takes part.
    Generate {
        caching: Caching,
        cache: CacheResult,
    },
}

impl Route {
    /// What the route costs the key: a request that goes upstream is charged in full (its
    /// tokens estimated only then), the others one request.
    pub(super) fn charge(&self, estimate: impl FnOnce() -> u64) -> Charge {
        match self {
            Route::Generate { .. } => Charge::Full {
                estimated_tokens: estimate(),
            },
            Route::Hit(..) | Route::Semantic { .. } | Route::Follow { .. } => Charge::RequestOnly,
        }
    }

    /// The admission already charged with the lookup (a hit on a single Redis), taken out.
    pub(super) fn admitted(&mut self) -> Option<Admission> {
        match self {
            Route::Hit(_, admission) => admission.take(),
            _ => None,
        }
    }

    /// Gives up the route after the limits refused the request: a leader's lease goes, so an
    /// identical request that is allowed may lead instead.
    pub(super) async fn abandon(&self, gw: &Gateway, stream_id: &str) {
        if let Route::Generate {
            caching: Caching::Lead { key, .. },
            ..
        } = self
        {
            let _ = gw.cache.abandon(key, stream_id).await;
        }
    }
}

/// What the cache needs of a request: its exact key and its semantic context, when it is
/// cacheable at all.
pub(super) struct Lookup {
    key: Option<CacheKey>,
    semantic: Option<SemanticContext>,
}

impl Lookup {
    /// The lookup of `req` for `principal`'s tenant; `arm` is an experiment's pinned arm, part
    /// of the key.
    pub(super) fn of(
        gw: &Gateway,
        principal: &Principal,
        req: &ChatRequest,
        arm: Option<&String>,
    ) -> Result<Lookup, ApiError> {
        let cacheable = gw.config.cache.enabled
            && (req.is_deterministic() || gw.config.cache.cache_non_deterministic);
        if !cacheable {
            return Ok(Lookup {
                key: None,
                semantic: None,
            });
        }
        let mut body = serde_json::to_value(req).map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(arm) = arm {
            body["tollgate_route"] = Value::String(arm.clone());
        }
        let hash = request_hash(&body, gw.config.cache.normalization)
            .map_err(|e| ApiError::bad(e.to_string(), None))?;
        let semantic = if gw.config.semantic_cache.enabled {
            SemanticContext::of(gw, &req.model, &principal.tenant, body)
        } else {
            None
        };
        let key = CacheKey::new(&req.model, &principal.tenant, &hash)
            .map_err(|e| ApiError::bad(e.to_string(), None))?;
        Ok(Lookup {
            key: Some(key),
            semantic,
        })
    }
}

/// Renews a single-flight lease every third of its length until dropped.
fn renew_lease(gw: &Arc<Gateway>, key: &CacheKey, token: &str) -> AbortOnDrop {
    let (gw, key, token) = (gw.clone(), key.clone(), token.to_owned());
    crate::task::every(gw.cache.config().lease / 3, move || {
        let (gw, key, token) = (gw.clone(), key.clone(), token.clone());
        async move {
            let _ = gw.cache.renew(&key, &token).await;
        }
    })
}

/// Decides the route (and counts the cache outcome).
pub(super) async fn route(
    gw: &Arc<Gateway>,
    principal: &Principal,
    plan: &Plan,
    lookup: Lookup,
    opts: &ChatOptions,
) -> Result<Route, ApiError> {
    let bypass = |result: CacheResult, caching: Caching| {
        gw.metrics.cache(result);
        Ok(Route::Generate {
            caching,
            cache: CacheResult::Bypass,
        })
    };
    let Some(key) = lookup.key else {
        return bypass(CacheResult::Bypass, Caching::Bypass);
    };
    if opts.no_cache {
        let caching = if opts.no_store {
            Caching::Bypass
        } else {
            Caching::StoreAfter(key)
        };
        return bypass(CacheResult::Bypass, caching);
    }
    let token = &plan.stream_id;
    let mut semantic = lookup.semantic;
    let deadline = Instant::now() + Duration::from_secs(gw.config.cache.coalesce_wait_seconds);
    let mut first = true;
    // A hit's limits (one request) are checked in the lookup's own script: one round trip.
    let mut hit_limits = Some(crate::limits::plan(
        gw,
        principal,
        &plan.req.model,
        Charge::RequestOnly,
    )?);
    let prepared = hit_limits
        .as_ref()
        .filter(|l| !l.checks.is_empty())
        .and_then(|l| PreparedChecks::of(&l.checks).ok());
    loop {
        let (mut lead, decided) = match &prepared {
            Some(limits) => match gw.cache.lead_admitting(&key, token, first, limits).await {
                Ok((lead, decided)) => (Ok(lead), decided),
                Err(e) => (Err(e), None),
            },
            None => (gw.cache.lead(&key, token, first).await, None),
        };
        if let Ok(Lead::Follower { holder }) = &lead {
            match attach(gw, holder).await? {
                Leader::Attached(attached) => {
                    gw.metrics.cache(CacheResult::Coalesced);
                    return Ok(Route::Follow {
                        holder: holder.clone(),
                        attached,
                    });
                }
                // Its gateway died mid-generation: take the work over now, not when its lease
                // expires (or let whoever took it over first lead).
                Leader::Dead => match gw.cache.take_over(&key, holder, token).await {
                    Ok(Some(generation)) => {
                        tracing::info!("took over an identical request whose gateway died");
                        lead = Ok(Lead::Leader { generation });
                    }
                    Ok(None) => {}
                    Err(e) => lead = Err(e),
                },
                Leader::Absent => {}
            }
        }
        match lead {
            Ok(Lead::Hit(bytes)) => {
                gw.metrics.cache(CacheResult::Hit);
                let admission = match (decided, hit_limits.take()) {
                    (Some(decision), Some(limits)) => {
                        Some(crate::limits::decide(gw, principal, limits, Ok(decision))?)
                    }
                    _ => None,
                };
                return Ok(Route::Hit(bytes, admission));
            }
            Ok(Lead::Leader { generation }) => {
                // Held from now on: kept while the semantic lookup, the limits and the
                // generation run, and freed within one lease if this gateway dies anywhere.
                let renewal = renew_lease(gw, &key, token);
                let mut probe = match semantic.take() {
                    Some(context) => Some(context.probe(gw).await),
                    None => None,
                };
                if let Some(probe) = &mut probe
                    && let Some((bytes, similarity)) =
                        probe.nearest(gw, principal, &plan.req.model).await
                {
                    gw.metrics.cache(CacheResult::Semantic);
                    let _ = gw.cache.abandon(&key, token).await;
                    return Ok(Route::Semantic { bytes, similarity });
                }
                gw.metrics.cache(CacheResult::Miss);
                return Ok(Route::Generate {
                    caching: Caching::Lead {
                        key,
                        generation,
                        store: !opts.no_store,
                        semantic: probe.map(Box::new),
                        _renewal: renewal,
                    },
                    cache: CacheResult::Miss,
                });
            }
            Ok(Lead::Follower { .. }) => {
                // The leader's stream is not there (not yet, or it died before writing): ask
                // again, to follow it or lead in turn.
                if Instant::now() > deadline {
                    return Err(ApiError::Unavailable(
                        "gave up waiting for an identical request in flight".into(),
                    ));
                }
                first = false;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Unreachable, full, read-only, failing over, or answering what this version does
            // not understand: the cache is optional, the answer is not.
            Err(e) => {
                tracing::warn!(error = %e, "response cache failed; answering without it");
                return bypass(CacheResult::Error, Caching::Bypass);
            }
        }
    }
}
