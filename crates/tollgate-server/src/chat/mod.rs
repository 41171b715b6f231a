//! `POST /v1/chat/completions`: the request path, callable without HTTP.
//!
//! [`chat_completions`] reads as its stages, each in a file named for what it decides:
//! 1. prepare (here): validate, budget, session history ([`history`]), the token estimate, the
//!    cache key;
//! 2. route ([`cache`]): one exact-cache lookup either hits, makes this request the leader (then
//!    the semantic cache may still answer), or names the leader's token stream to follow;
//! 3. one admission ([`crate::limits`]): what the route costs, charged in one script (a hit's,
//!    on a single Redis, in its lookup's script);
//! 4. answer: a replay of what is already known ([`replay`]: hits, followers), or a
//!    generation ([`generation`]) written to a token stream ([`stream_writer`]).
//!
//! Every generation runs in a task of its own and is written to a token stream in Redis, so:
//! - identical concurrent requests on any instance share one upstream call: the leader's lease
//!   token *is* its stream id, and followers read that stream (streamed callers get the stream,
//!   the others the whole answer);
//! - a stream can be read again, or resumed, from any instance (`GET /v1/streams/{id}`);
//! - a client that goes away does not cut the generation short: it completes for the cache, the
//!   followers and the accounting.
//!
//! The leader's own client gets chunks straight from the task, not through Redis: with Redis
//! down, streaming still works (writes to Redis are best effort, batched off the hot path).

mod cache;
mod generation;
mod history;
pub mod pacer;
mod plan;
pub mod replay;
mod reply;
mod semantic;
mod stream_writer;

use std::sync::Arc;

use serde_json::Value;
use tollgate_core::ChatRequest;
use tracing::Instrument;

use crate::accounting::Payer;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::limits::{ASSUMED_OUTPUT_TOKENS, admit, admit_to_deployment};
use crate::state::Gateway;
use cache::Route;
pub use plan::ChatOptions;
use plan::Plan;
pub use reply::{Answer, ChatReply, ReplyBody, ReplyMeta, StreamItem, sse_response};

/// Answers a chat request, in a `chat MODEL` span (see [`crate::telemetry`]): the GenAI
/// attributes of the request, and once answered how it was (cache, similarity, route; the
/// tokens and finish reasons are recorded by the generation, which may outlive this call).
pub async fn chat_completions(
    gw: &Arc<Gateway>,
    principal: &Principal,
    req: ChatRequest,
    opts: ChatOptions,
) -> Result<ChatReply, ApiError> {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        target: "otel",
        "chat",
        "otel.name" = format!("chat {}", req.model),
        "gen_ai.operation.name" = "chat",
        "gen_ai.request.model" = %req.model,
        "gen_ai.request.max_tokens" = req.max_output_tokens(),
        "gen_ai.request.temperature" = req.temperature,
        "gen_ai.response.model" = Empty,
        "gen_ai.response.finish_reasons" = Empty,
        "gen_ai.usage.input_tokens" = Empty,
        "gen_ai.usage.output_tokens" = Empty,
        "tollgate.key_id" = %principal.subject,
        "tollgate.cache" = Empty,
        "tollgate.similarity" = Empty,
        "tollgate.route" = Empty,
        "tollgate.stream_id" = Empty,
        "error.type" = Empty,
        "otel.status_code" = Empty,
    );
    let reply = answer(gw, principal, req, opts)
        .instrument(span.clone())
        .await;
    if !span.is_disabled() {
        match &reply {
            Ok(r) => {
                span.record("tollgate.cache", r.meta.cache.name());
                if let Some(route) = &r.meta.route {
                    span.record("tollgate.route", route.as_str());
                }
                if let Some(id) = &r.meta.stream_id {
                    span.record("tollgate.stream_id", id.as_str());
                }
                if let Some((_, v)) = r
                    .meta
                    .headers
                    .iter()
                    .find(|(n, _)| n == "x-tollgate-cache-similarity")
                {
                    span.record("tollgate.similarity", v.to_str().unwrap_or(""));
                }
            }
            Err(e) => {
                span.record("error.type", e.code().unwrap_or("error"));
                span.record("otel.status_code", "ERROR");
            }
        }
    }
    reply
}

/// The cache is asked before the limits, so that what a request is charged fits what it
/// costs: a hit or a coalesced follower is charged one request (no tokens, no concurrency slot:
/// it costs the upstream nothing); a request that goes upstream is charged in full before it
/// does.
async fn answer(
    gw: &Arc<Gateway>,
    principal: &Principal,
    mut req: ChatRequest,
    opts: ChatOptions,
) -> Result<ChatReply, ApiError> {
    // Prepare.
    req.validate()?;
    if !gw.router().knows(&req.model) {
        return Err(ApiError::UnknownModel(req.model));
    }
    crate::accounting::check_budget(gw, principal, &req.model).await?;
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let session = match &opts.session_id {
        Some(id) => Some(history::with_history(gw, principal, id, &mut req).await?),
        None => None,
    };
    // An experiment pins the user's arm; arms may answer differently, so the arm is in the key.
    let pinned = gw.pinned_route(&req.model, opts.user.as_deref());
    let lookup = cache::Lookup::of(gw, principal, &req, pinned.as_ref().map(|(arm, _)| arm))?;
    let mut plan = Plan {
        gw: gw.clone(),
        owner: principal.subject.clone(),
        payer: Payer::from(principal),
        req,
        include_usage,
        session,
        ttl: opts.ttl,
        route: pinned.map(|(_, route)| route),
        stream_id: format!("st_{}", uuid::Uuid::new_v4().simple()),
        resumable: opts.resumable,
        decoded: opts.decoded,
    };

    // Route.
    let mut route = cache::route(gw, principal, &plan, lookup, &opts)
        .instrument(tracing::info_span!(target: "otel", "cache lookup"))
        .await?;

    // One admission (a hit's may have come with its lookup).
    // Tokens are counted only for a request that goes upstream: a hit or a follower costs none.
    let estimate = || {
        gw.counter.count_prompt(&plan.req)
            + plan
                .req
                .max_output_tokens()
                .map_or(ASSUMED_OUTPUT_TOKENS, u64::from)
    };
    let admission = match route.admitted() {
        Some(admission) => admission,
        None => {
            let charge = route.charge(estimate);
            let model = plan.req.model.clone();
            let router = gw.router();
            // An alias routed by the router (no experiment pinned it): its deployments may
            // have capacities of their own, and the request goes to one with room.
            let admitted = match (&plan.route, router.alias_map().contains_key(&model)) {
                (None, true) => match router.resolve(&model) {
                    Ok(order) => {
                        admit_to_deployment(gw, principal, &model, charge, opts.queue_wait, order)
                            .instrument(tracing::info_span!(target: "otel", "limits"))
                            .await
                            .map(|(admission, route)| {
                                if route.is_some() {
                                    plan.route = route;
                                }
                                admission
                            })
                    }
                    Err(e) => Err(ApiError::Provider(e)),
                },
                _ => {
                    admit(gw, principal, &model, charge, opts.queue_wait)
                        .instrument(tracing::info_span!(target: "otel", "limits"))
                        .await
                }
            };
            match admitted {
                Ok(a) => a,
                Err(e) => {
                    route.abandon(gw, &plan.stream_id).await;
                    return Err(e);
                }
            }
        }
    };

    // Answer.
    match route {
        Route::Hit(bytes, _) => plan.hit(admission, bytes, None).await,
        Route::Semantic { bytes, similarity } => plan.hit(admission, bytes, Some(similarity)).await,
        Route::Follow { holder, attached } => plan.follow(admission, holder, *attached).await,
        Route::Generate { caching, cache } => plan.generate(admission, caching, cache).await,
    }
}
