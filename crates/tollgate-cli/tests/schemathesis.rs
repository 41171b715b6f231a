//! Bad input at scale: schemathesis (from PyPI) generates requests from tollgate's own OpenAPI
//! document (`GET /openapi.json`), valid and not, against a real `tollgate serve`, and checks that
//! none gets a 5xx and every answer matches the document (status, content type, schema).

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

mod common;

use std::process::Command;

use common::{Replica, config_file};
use tollgate_testkit::RedisServer;

#[test]
fn generated_requests_get_no_server_error_and_answers_match_the_openapi_document() {
    let redis = RedisServer::start();
    // Group reads wait at most 50 ms here: generated cases must not each block for seconds.
    let (_dir, path) = config_file("[events]\nmax_block_ms = 50\n");
    let replica = Replica::start(&redis.url(), &path, &[]);
    let output = Command::new(tollgate_testkit::python_tool("schemathesis"))
        .current_dir(tempfile::tempdir().unwrap().path())
        .args([
            "run",
            &replica.url("/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            // Bounded: about 1,200 requests, a fixed seed so a failure can be replayed.
            "--max-examples",
            "10",
            "--seed",
            "1",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs (scripts/install-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
