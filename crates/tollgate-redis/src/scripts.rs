//! The Lua scripts, one file each in `lua/` with its KEYS/ARGV/reply contract in a header.
//! redis-rs `Script` runs them by EVALSHA and loads them again when the server answers NOSCRIPT
//! (after a restart or a SCRIPT FLUSH); in a cluster EVALSHA is routed by the first key.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("../lua/", $file))));
    };
}

script!(RATE_LIMIT, "rate_limit.lua");
script!(RATE_REFUND, "rate_refund.lua");
script!(SETTLE, "settle.lua");
script!(SPEND_WINDOW, "spend_window.lua");
script!(LEASE_RENEW, "lease_renew.lua");
script!(LEASE_TOKEN, "lease_token.lua");
script!(CACHE_LOOKUP, "cache_lookup.lua");
script!(CACHE_STORE, "cache_store.lua");
script!(CACHE_INVALIDATE, "cache_invalidate.lua");
script!(SESSION_WRITE, "session_write.lua");
script!(SESSION_DELETE, "session_delete.lua");
script!(DEAD_LETTER, "dead_letter.lua");
script!(FEATURES_PUT, "features_put.lua");
script!(REGISTRY_WRITE, "registry_write.lua");
script!(VECTOR_WRITE, "vector_write.lua");
script!(VECTOR_DROP, "vector_drop.lua");
script!(RESPONSE_REPLACE, "response_replace.lua");
script!(SESSION_RESTORE, "session_restore.lua");
script!(SESSION_SUMMARY, "session_summary.lua");
script!(EVENT_PUBLISH, "event_publish.lua");
script!(EVENT_DONE, "event_done.lua");
script!(STREAM_APPEND, "stream_append.lua");
script!(SEMANTIC_CHECK, "semantic_check.lua");

/// `cache_lookup.lua` and `rate_limit.lua` as functions of their own KEYS and ARGV, then
/// `cache_lookup_admit.lua`, which calls them.
pub(crate) static CACHE_LOOKUP_ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        "local function lookup(KEYS, ARGV)\n",
        include_str!("../lua/cache_lookup.lua"),
        "\nend\nlocal function admit(KEYS, ARGV)\n",
        include_str!("../lua/rate_limit.lua"),
        "\nend\n",
        include_str!("../lua/cache_lookup_admit.lua"),
    ))
});
